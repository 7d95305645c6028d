"""Training in Paddle at parity with timm: the gates of reference.train_parity, its mutations and
its control. Small inputs (32 px, batch 2): timm's float64 depthwise convolutions are slow."""

from __future__ import annotations

import pytest

from reference.train_parity import (
    MUTATIONS,
    Mutation,
    Setup,
    TimmSide,
    compare_step,
    first_failure,
    prepare_weights,
    resume_paddle_side,
    run,
    save_torch_training_checkpoint,
)

STEPS = 10


@pytest.fixture(scope="module")
def lite_float64():
    """coat_lite_tiny, float64, official recipe: one timm run against the faithful Paddle side
    and every mutation, in lock step, each mutation stopped where it fails.
    -> {side name: [StepReport per step]}"""
    setup = Setup("coat_lite_tiny", STEPS, "float64", size=32, batch=2)
    names = ["faithful", *MUTATIONS]
    # a mutated side stops at its failure: only the faithful one trains all the steps
    reports = run(setup, [Mutation(), *MUTATIONS.values()], stop_at_failure=True)
    return dict(zip(names, reports))


def _assert_at_gate(reports, steps=STEPS):
    assert len(reports) == steps
    failed = first_failure(reports)
    assert failed is None, reports[failed - 1].line()
    assert max(r.weights_rel for r in reports) > 0  # two runs really were compared
    print("\n".join(r.line() for r in reports))  # the growth per step, shown with -s or on failure


def test_coat_lite_tiny_float64_official_recipe_holds_the_gates(lite_float64):
    reports = lite_float64["faithful"]
    _assert_at_gate(reports)
    assert all(r.lr[0] == r.lr[1] for r in reports)
    assert any(r.cutmix for r in reports) and not all(r.cutmix for r in reports)  # both kinds drawn
    assert all(r.grad_norm[0] > 5.0 for r in reports[:1])  # clipping at 5.0 was active


def test_coat_tiny_float64_official_recipe_holds_the_gates():
    (reports,) = run(Setup("coat_tiny", STEPS, "float64", size=32, batch=2))
    _assert_at_gate(reports)


@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_float32_official_recipe_holds_the_float32_gates(variant):
    (reports,) = run(Setup(variant, STEPS, "float32", size=32, batch=2))
    _assert_at_gate(reports)


def _bites(lite_float64, name: str, step: int) -> None:
    reports = lite_float64[name]
    assert first_failure(reports) == step, "\n".join(r.line() for r in reports[:step])


def test_decaying_cls_token1_fails_at_the_first_update(lite_float64):
    _bites(lite_float64, "cls_token1 decayed", 1)


def test_warmup_shifted_by_one_update_fails_when_the_lr_first_differs(lite_float64):
    _bites(lite_float64, "warmup shifted by one update", 2)


def test_adamw_eps_1e_6_fails_at_the_first_update(lite_float64):
    _bites(lite_float64, "AdamW eps 1e-6", 1)


def test_paddles_own_clip_rule_fails_at_the_first_clipped_update(lite_float64):
    _bites(lite_float64, "Paddle's own clip semantics", 1)


def test_no_label_smoothing_fails_at_the_first_loss(lite_float64):
    _bites(lite_float64, "smoothing 0 vs 0.1", 1)


def test_ema_decay_off_by_1e_5_fails_at_the_first_averaging_update(lite_float64):
    # the first update copies the weights (decay 0, as ModelEmaV3); the second averages
    _bites(lite_float64, "EMA decay off by 1e-5", 2)


def test_an_unshared_drop_path_mask_fails_at_the_first_step(lite_float64):
    _bites(lite_float64, "a drop-path mask not shared", 1)


def test_a_cutmix_box_off_by_one_pixel_fails_at_the_first_cutmix_step(lite_float64):
    first_cutmix = next(r.step for r in lite_float64["faithful"] if r.cutmix)
    _bites(lite_float64, "a Mixup box off by one pixel", first_cutmix)


def test_control_two_paddle_sides_one_ulp_apart_are_seen_to_diverge():
    """The harness compares two independent runs: a one-ulp start is visible and grows."""
    (reports,) = run(Setup("coat_lite_tiny", 5, "float64", size=32, batch=2), [Mutation(ulp=True)], "paddle")
    growth = [r.weights_rel for r in reports]
    assert all(g > 0 for g in growth), growth
    assert growth[-1] > 2 * growth[0], growth


def test_resuming_a_torch_training_checkpoint_in_paddle_continues_at_the_float64_gate(tmp_path):
    """K steps in timm, torch.save, read without pickle, M steps in Paddle = K + M steps in timm."""
    k, m = 3, 3
    setup = Setup("coat_lite_tiny", k + m, "float64", size=32, batch=2)
    src, _ = prepare_weights(setup, tmp_path)
    timm_side = TimmSide(setup, src)
    for step in range(1, k + 1):
        timm_side.step(step)
    checkpoint = save_torch_training_checkpoint(timm_side, tmp_path / "checkpoint.pth")
    paddle_side = resume_paddle_side(setup, checkpoint, tmp_path)
    assert paddle_side.updates == k
    reports = [
        compare_step(s, timm_side.step(s), paddle_side.step(s), "float64") for s in range(k + 1, k + m + 1)
    ]
    assert first_failure(reports) is None, "\n".join(r.line() for r in reports)
    assert all(r.lr[0] == r.lr[1] for r in reports) and reports[0].lr[0] != setup.recipe.warmup_lr
    assert max(r.weights_rel for r in reports) > 0


def test_an_optimizer_not_grouped_as_timm_groups_is_refused_in_one_sentence(tmp_path):
    import torch

    from converter.errors import ConversionError
    from converter.train_state import read_training_state
    from reference.checkpoints import seeded_model

    model = seeded_model("coat_lite_tiny")
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params[:5]}, {"params": params[5:9]}, {"params": params[9:]}])
    path = tmp_path / "three_groups.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    with pytest.raises(ConversionError, match=r"groups hold \[5, 4, \d+\] parameters.*timm's grouping"):
        read_training_state(path)


def test_the_command_prints_json_and_exits_0_within_the_gates(tmp_path):
    import json

    from tests.conftest import run_module

    result = run_module(
        "reference.train_parity",
        "coat_lite_tiny",
        "--steps",
        "2",
        "--dtype",
        "float32",
        "--batch",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] and out["first_failure"] is None and len(out["steps"]) == 2
    assert out["steps"][1]["lr"][0] == out["steps"][1]["lr"][1]


PLOT_ARGS = ("coat_lite_tiny", "--steps", "1", "--dtype", "float32", "--batch", "2", "--plot")


def test_plot_writes_a_png(tmp_path):
    from tests.conftest import run_module

    png = tmp_path / "curves.png"
    result = run_module("reference.train_parity", *PLOT_ARGS, png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(tmp_path):
    from tests.conftest import assert_refused, run_python

    png = tmp_path / "curves.png"
    hide = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        "sys.argv = ['train_parity', *sys.argv[1:]]; "
        "runpy.run_module('reference.train_parity', run_name='__main__', alter_sys=True)"
    )
    result = run_python("-c", hide, *PLOT_ARGS, png, timeout=900)
    assert_refused(result, "pip install matplotlib")
    assert not png.exists()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_nan_weight_or_loss_fails_the_gate(dtype):
    import numpy as np

    from reference.train_parity import StepState

    def state(loss, w):
        t = {"a": np.array([1.0, -2.0]), "b": np.array(w)}
        return StepState(loss, 1e-3, None, False, t, t, t, t)

    ref = state(1.0, [0.5, 0.25])
    assert compare_step(1, ref, state(1.0, [0.5, 0.25]), dtype).ok
    assert not compare_step(1, ref, state(1.0, [0.5, np.nan]), dtype).ok
    assert not compare_step(1, ref, state(float("nan"), [0.5, 0.25]), dtype).ok
