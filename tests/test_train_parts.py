"""Each part of paddle_model.train against timm's or torch's own component, on small inputs."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import timm
import torch
from timm.data import Mixup as TimmMixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay as timm_param_groups
from timm.scheduler import CosineLRScheduler as TimmCosine
from timm.utils import ModelEmaV3

import paddle_model
from converter.layout import coat_layout
from converter.variants import get_variant
from paddle_model import train

UPDATES_PER_EPOCH = 1251  # ImageNet-1k at a global batch of 1024


def _timm_lrs(epochs: int, per_update: bool, **kw) -> list[float]:
    """timm's lr at every update of a run, as timm's train.py steps the scheduler."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=kw.pop("base_lr"))
    sched = TimmCosine(opt, t_in_epochs=not per_update, **kw)
    return _run_schedule(opt.param_groups, sched, epochs)


def _ours_lrs(epochs: int, per_update: bool, **kw) -> list[float]:
    base = kw.pop("base_lr")
    opt = train.AdamW([{"names": ["p"], "params": [paddle.zeros([1])]}], lr=base)
    sched = train.CosineLRScheduler(opt, t_in_epochs=not per_update, **kw)
    return _run_schedule(opt.param_groups, sched, epochs)


def _run_schedule(groups, sched, epochs: int) -> list[float]:
    lrs, updates = [], 0
    for epoch in range(epochs):
        for _ in range(UPDATES_PER_EPOCH):
            lrs.append(groups[0]["lr"])
            updates += 1
            sched.step_update(num_updates=updates)
        sched.step(epoch + 1)
    return lrs


@pytest.mark.parametrize("per_update", [False, True], ids=["per-epoch", "per-update"])
def test_official_300_epoch_schedule_equals_timms_at_every_update(per_update):
    scale = UPDATES_PER_EPOCH if per_update else 1
    kw = dict(
        base_lr=5e-4 * 1024 / 512, t_initial=300 * scale, lr_min=1e-5, warmup_t=5 * scale, warmup_lr_init=1e-6
    )
    ours, theirs = _ours_lrs(300, per_update, **kw), _timm_lrs(300, per_update, **kw)
    assert len(ours) == 300 * UPDATES_PER_EPOCH
    assert ours == theirs  # exact, float64
    assert ours[0] == 1e-6
    assert len(set(ours)) > 300 * 1000 if per_update else len(set(ours)) == 300


def test_finetune_384_schedule_is_timms_constant_lr():
    kw = dict(base_lr=5e-6, t_initial=30, lr_min=5e-6, warmup_t=0, warmup_lr_init=0.0)
    ours, theirs = _ours_lrs(30, False, **kw), _timm_lrs(30, False, **kw)
    assert ours == theirs and set(ours) == {5e-6}


def test_warmup_prefix_and_cycles_follow_timm():
    kw = dict(base_lr=1e-3, t_initial=7, lr_min=1e-5, warmup_t=3, warmup_lr_init=1e-6, warmup_prefix=True)
    kw.update(cycle_mul=2.0, cycle_decay=0.5, cycle_limit=3)
    ours, theirs = _ours_lrs(40, False, **kw), _timm_lrs(40, False, **kw)
    assert ours == theirs


def test_a_groups_lr_scale_multiplies_the_scheduled_lr_as_in_timm():
    """Layer-wise lr decay's hook: a group's ``lr_scale`` (timm's) scales the absolute lr."""
    topt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.3}], lr=1e-3)
    popt = train.AdamW([{"names": ["p"], "params": [paddle.zeros([1])], "lr_scale": 0.3}], lr=1e-3)
    kw = dict(t_initial=10, lr_min=1e-5, warmup_t=2, warmup_lr_init=1e-6, t_in_epochs=False)
    theirs, ours = TimmCosine(topt, **kw), train.CosineLRScheduler(popt, **kw)
    for t in range(12):
        theirs.step_update(t)
        ours.step_update(t)
        assert popt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
    assert popt.param_groups[0]["lr"] == pytest.approx(0.3 * 1e-5)


@pytest.fixture(scope="module")
def lite():
    """(Paddle coat_lite_tiny, timm coat_lite_tiny), untrained, built once."""
    return paddle_model.create_model("coat_lite_tiny"), timm.create_model("coat_lite_tiny", img_size=32)


def test_decayed_parameters_are_timms_by_structured_name(lite):
    model, reference = lite
    groups = timm_param_groups(reference, 0.05, no_weight_decay_list=reference.no_weight_decay())
    by_id = {id(p): n for n, p in reference.named_parameters()}
    theirs = [by_id[id(p)] for g in groups if g["weight_decay"] for p in g["params"]]
    ours = train.decayed_parameters(model)
    assert ours == theirs
    assert not any(n.startswith("cls_token") or n.endswith(".bias") or "norm" in n for n in ours)


def test_groups_keep_every_parameter_once(lite):
    model, _ = lite
    groups = train.param_groups_weight_decay(model, 0.05)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]


def _pairs(seed: int, shapes, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def test_adamw_equals_torch_adamw_over_steps_float64():
    shapes = [(5, 3), (3,), (1, 1, 4)]
    values = _pairs(0, shapes)
    tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    pparams = [paddle.create_parameter(list(v.shape), "float64") for v in values]
    for p, v in zip(pparams, values):
        p.set_value(v)
    topt = torch.optim.AdamW(
        [{"params": tparams[:1], "weight_decay": 0.05}, {"params": tparams[1:], "weight_decay": 0.0}],
        lr=1e-2,
        eps=1e-8,
    )
    popt = train.AdamW(
        [
            {"names": ["a"], "params": pparams[:1], "weight_decay": 0.05},
            {"names": ["b", "c"], "params": pparams[1:], "weight_decay": 0.0},
        ],
        lr=1e-2,
        eps=1e-8,
    )
    for step in range(5):
        grads = _pairs(10 + step, shapes)
        grads[1][0] = 1e-12  # a near-zero gradient, where eps matters
        for tp, pp, g in zip(tparams, pparams, grads):
            tp.grad = torch.from_numpy(g.copy())
            pp.grad = paddle.to_tensor(g)
        topt.step()
        popt.step()
    for tp, pp in zip(tparams, pparams):
        np.testing.assert_allclose(pp.numpy(), tp.detach().numpy(), rtol=1e-14, atol=0)
    state = popt.state_dict()["state"]["a"]
    np.testing.assert_allclose(state["exp_avg_sq"], topt.state[tparams[0]]["exp_avg_sq"].numpy(), rtol=1e-14)
    assert state["step"] == 5


def _grads(shapes, seed, scale):
    values = [v * scale for v in _pairs(seed, shapes)]
    tparams = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    pparams = [paddle.create_parameter(list(s), "float64") for s in shapes]
    for tp, pp, v in zip(tparams, pparams, values):
        tp.grad = torch.from_numpy(v.copy())
        pp.grad = paddle.to_tensor(v)
    return tparams, pparams


@pytest.mark.parametrize("scale", [10.0, 0.01], ids=["clipped", "below-the-norm"])
def test_clip_grad_norm_is_torchs(scale):
    shapes = [(4, 3), (7,)]
    tparams, pparams = _grads(shapes, 1, scale)
    theirs = float(torch.nn.utils.clip_grad_norm_(tparams, 5.0))
    ours = train.clip_grad_norm_(pparams, 5.0)
    assert ours == pytest.approx(theirs, rel=1e-15)
    for tp, pp in zip(tparams, pparams):
        np.testing.assert_allclose(pp.grad.numpy(), tp.grad.numpy(), rtol=1e-15, atol=0)


def test_paddles_own_clip_rule_differs_from_torchs():
    tparams, pparams = _grads([(4, 3)], 1, 10.0)
    torch.nn.utils.clip_grad_norm_(tparams, 5.0)
    train.clip.paddle_clip_grad_norm_(pparams, 5.0)
    rel = (
        np.abs(pparams[0].grad.numpy() - tparams[0].grad.numpy()).max()
        / np.abs(tparams[0].grad.numpy()).max()
    )
    assert 1e-9 < rel < 1e-6  # 1e-6 / norm: small, and visible in float64


def test_clip_mode_value_is_torchs():
    tparams, pparams = _grads([(4, 3)], 2, 1.0)
    torch.nn.utils.clip_grad_value_(tparams, 0.5)
    assert train.dispatch_clip_grad(pparams, 0.5, "value") is None
    np.testing.assert_array_equal(pparams[0].grad.numpy(), tparams[0].grad.numpy())


def test_clip_mode_other_than_norm_or_value_is_refused():
    _, pparams = _grads([(2,)], 3, 1.0)
    with pytest.raises(ValueError, match="'norm' or 'value'"):
        train.dispatch_clip_grad(pparams, 1.0, "agc")


def _logits_and_labels(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((6, 10)), rng.integers(0, 10, 6)


def test_label_smoothing_cross_entropy_is_timms():
    logits, labels = _logits_and_labels()
    theirs = LabelSmoothingCrossEntropy(0.1)(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    ours = float(train.label_smoothing_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels), 0.1))
    assert ours == pytest.approx(theirs, rel=1e-14)


def test_soft_target_cross_entropy_is_timms():
    logits, _ = _logits_and_labels(1)
    target = np.random.default_rng(2).dirichlet(np.ones(10), 6)
    theirs = SoftTargetCrossEntropy()(torch.from_numpy(logits), torch.from_numpy(target)).item()
    ours = float(train.soft_target_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(target)))
    assert ours == pytest.approx(theirs, rel=1e-14)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_and_cutmix_draw_and_mix_as_timm_does(seed):
    """The same numpy seed gives timm's lambda, box, images and targets, bit for bit."""
    x = np.random.default_rng(seed).standard_normal((4, 3, 16, 12)).astype(np.float32)
    y = np.array([1, 4, 2, 9])
    kw = dict(
        mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, switch_prob=0.5, label_smoothing=0.1, num_classes=10
    )
    np.random.seed(seed)
    tx, ty = TimmMixup(mode="batch", **kw)(torch.from_numpy(x.copy()), torch.from_numpy(y))
    mixup = train.Mixup(kw["mixup_alpha"], kw["cutmix_alpha"], kw["prob"], kw["switch_prob"], True, 0.1, 10)
    params = mixup.draw(np.random.RandomState(seed), x.shape)
    px, py = mixup.apply(paddle.to_tensor(x), paddle.to_tensor(y), params)
    np.testing.assert_array_equal(px.numpy(), tx.numpy())
    np.testing.assert_array_equal(py.numpy(), ty.numpy())


def test_mixup_draws_cover_mixup_cutmix_and_no_mix():
    mixup = train.Mixup(0.8, 1.0, prob=0.9, switch_prob=0.5)
    draws = [mixup.draw(np.random.RandomState(s), (2, 3, 32, 32)) for s in range(40)]
    assert {d.box is not None for d in draws if d.lam != 1.0} == {True, False}
    assert any(d.lam == 1.0 for d in draws)


def test_a_supplied_cutmix_box_is_pasted_from_the_flipped_batch():
    x = paddle.arange(2 * 1 * 4 * 4, dtype="float32").reshape([2, 1, 4, 4])
    mixed, target = train.Mixup(cutmix_alpha=1.0, mixup_alpha=0.0, num_classes=3, label_smoothing=0.0).apply(
        x, paddle.to_tensor([0, 2]), train.MixParams(0.75, (1, 3, 0, 2))
    )
    expected = x.numpy().copy()
    expected[:, :, 1:3, 0:2] = x.numpy()[::-1, :, 1:3, 0:2]
    np.testing.assert_array_equal(mixed.numpy(), expected)
    np.testing.assert_allclose(target.numpy(), [[0.75, 0, 0.25], [0.25, 0, 0.75]])


def test_ema_is_timms_model_ema_v3_including_the_shared_mlp():
    """coat_tiny's one MLP under three names moves three times per update, as in timm."""
    torch.manual_seed(0)
    reference = timm.create_model("coat_tiny", img_size=32).double()
    model = paddle_model.create_model("coat_tiny")
    model.to(dtype="float64")
    transposed = {k: s.transposed for k, s in coat_layout(get_variant("coat_tiny")).tensors.items()}
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    for name, p in model.named_parameters():
        p.set_value(state[name].T if transposed[name] else state[name])
    theirs, ours = ModelEmaV3(reference, decay=0.9), train.ModelEma(model, decay=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, p in model.named_parameters():
            v = dict(reference.named_parameters())[name].detach().numpy()
            p.set_value(v.T if transposed[name] else v)
        theirs.update(reference, step=step)
        ours.update(model, step=step)
    got, want = ours.state_dict(), theirs.module.state_dict()
    for key in ("parallel_blocks.0.mlp3.fc1.bias", "cls_token2", "patch_embed1.norm.weight"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-14, atol=1e-15)


def test_ema_warmup_decay_is_timms():
    ours = train.ModelEma(paddle.nn.Linear(2, 2), decay=0.9999, use_warmup=True, update_after_step=3)
    theirs = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.9999, use_warmup=True, update_after_step=3)
    assert [ours.get_decay(s) for s in range(60)] == [theirs.get_decay(s) for s in range(60)]


def test_injected_drop_path_masks_drop_exactly_the_given_samples():
    model = paddle_model.create_model("coat_lite_tiny", drop_path_rate=0.5)
    calls = []

    def source(layer, call, batch, keep):
        calls.append((layer, call))
        return np.array([1.0, 0.0])

    names = train.install_drop_path(model, source)
    assert names[0] == "serial_blocks1.0.drop_path" and len(names) == 8
    layer = model.serial_blocks1[0].drop_path
    layer.train()
    out = layer(paddle.ones([2, 3, 4]))
    np.testing.assert_array_equal(out.numpy()[:, 0, 0], [2.0, 0.0])  # kept samples scaled by 1 / keep
    model.train()
    train.reset_calls(model)
    model(paddle.zeros([2, 3, 32, 32]))
    assert ("serial_blocks1.0.drop_path", 1) in calls and len(calls) == 1 + 2 * 8


def test_seeded_masks_depend_on_step_layer_and_call_only():
    masks = train.SeededMasks(7)
    a = masks("serial_blocks1.0.drop_path", 0, 64, 0.9)
    assert np.array_equal(a, train.SeededMasks(7)("serial_blocks1.0.drop_path", 0, 64, 0.9))
    assert not np.array_equal(a, masks("serial_blocks1.0.drop_path", 1, 64, 0.9))
    masks.next_step()
    assert not np.array_equal(a, masks("serial_blocks1.0.drop_path", 0, 64, 0.9))


def _amp_step(amp: str) -> float:
    """One forward and backward of coat_lite_tiny under ``amp``; the loss."""
    model = paddle_model.create_model("coat_lite_tiny", num_classes=4)
    model.train()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32"))
    scaler = train.grad_scaler(amp)
    with train.autocast(amp):
        logits = model(x)
    loss = train.label_smoothing_cross_entropy(logits.astype("float32"), paddle.to_tensor([0, 3]))
    (scaler.scale(loss) if scaler is not None else loss).backward()
    assert all(p.grad is None or np.isfinite(p.grad.numpy()).all() for p in model.parameters())
    return float(loss)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_is_refused_in_one_line_not_silently_float32(amp):
    if paddle.device.get_device() != "cpu":
        pytest.fail("this test is for the CPU; the GPU path is test_amp_trains_a_step_on_gpu")
    with pytest.raises(train.amp.CoatError, match=f"--amp {amp} needs a GPU"):
        _amp_step(amp)


def test_amp_mode_other_than_bf16_or_fp16_is_refused():
    assert train.grad_scaler("bf16") is None and train.grad_scaler(None) is None
    with pytest.raises(ValueError, match="amp must be one of"):
        train.autocast("fp8")
