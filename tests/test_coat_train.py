"""``coat-train``: a fine-tune end to end, kill-and-resume, parity with timm, and bad input.

Tiny settings throughout: coat_lite_tiny at 32 px, 2 classes of seeded 40x48 PNGs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converter.paddle_weights import read_weights
from paddle_model.train import checkpoint
from paddle_model.train.cli import main

from .conftest import ROOT, run_cli

VARIANT = "coat_lite_tiny"
TINY = ["--variant", VARIANT, "--img-size", "32", "--quiet"]


def make_folder(root: Path, per_class: int, classes=("cat", "dog"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return make_folder(tmp_path / "train", 4), make_folder(tmp_path / "val", 2, seed=1)


def train_process(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "paddle_model.train", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(proc: subprocess.Popen, log: Path, n: int, timeout: float = 240) -> int:
    """Block until ``log`` has ``n`` step rows (the run still going); returns the count seen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if log.exists():
            steps = sum('"kind": "step"' in line for line in log.read_text().splitlines())
            if steps >= n:
                return steps
        time.sleep(0.05)
    raise AssertionError("the run logged too few steps in time")


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


# --- kill and resume -----------------------------------------------------------------------

RESUMABLE = [*TINY, "--epochs", "2", "--batch-size", "2", "--checkpoint-every", "1", "--seed", "3"]
RESUMABLE += ["--drop-path", "0.1", "--model-ema", "--model-ema-decay", "0.9", "--lr", "1e-3"]


def test_resume_after_sigkill_mid_epoch_gives_the_uninterrupted_weights_bit_for_bit(data, tmp_path):
    train, _ = data
    assert main([str(train), *RESUMABLE, "--output", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = train_process(train, *RESUMABLE, "--output", killed)
    wait_for_steps(proc, killed / "log.jsonl", 2)  # 4 updates per epoch: mid first epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = checkpoint.load(killed / "last.safetensors").state
    assert at["epoch"] == 0 and 0 < at["batch"] < 4
    assert main(["--resume", str(killed), "--workers", "1"]) == 0  # workers only read files
    for name in ("model.pdparams", "model_ema.pdparams"):
        whole, resumed = read_weights(tmp_path / "whole" / name), read_weights(killed / name)
        assert whole.keys() == resumed.keys()
        for key in whole:
            assert np.array_equal(whole[key], resumed[key]), (name, key)
    steps = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, 9))


def test_ctrl_c_exits_130_with_a_checkpoint_of_the_last_step_and_resumes(data, tmp_path):
    train, _ = data
    out = tmp_path / "run"
    proc = train_process(train, *RESUMABLE, "--output", out, "--checkpoint-every", "0")
    wait_for_steps(proc, out / "log.jsonl", 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    last_step = max(r["step"] for r in logged if r["kind"] == "step")
    assert checkpoint.load(out / "last.safetensors").state["step"] == last_step
    assert main(["--resume", str(out)]) == 0
    assert (out / "model.pdparams").is_file()


# --- the end-to-end fine-tune --------------------------------------------------------------


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, converted) -> tuple[Path, Path, str]:
    """A two-epoch fine-tune from converted seeded weights: (run folder, start weights, stderr+stdout)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("fine_tune")
    train, val = make_folder(root / "train", 4), make_folder(root / "val", 2, seed=1)
    _, weights = converted(VARIANT)
    out = root / "run"
    argv = [str(train), "--val", str(val), *TINY, "--weights", str(weights), "--epochs", "2"]
    argv += ["--batch-size", "4", "--recipe", "finetune", "--model-ema", "--json", "--output", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(argv) == 0, stderr.getvalue()
    return out, weights, stdout.getvalue() + "\n" + stderr.getvalue()


def test_a_fine_tune_writes_weights_create_model_loads_with_class_names_and_curves(fine_tuned):
    from paddle_model.factory import create_model

    out, weights, printed = fine_tuned
    result = json.loads(printed.splitlines()[0])
    assert "--recipe finetune set lr=5e-06, sched=constant, warmup_epochs=0, weight_decay=1e-08" in printed
    assert result["steps"] == 4 and {"top1", "top5", "ema_top1", "ema_top5"} <= set(result["last_epoch"])
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == ["cat", "dog"] and config["num_classes"] == 2
    model = create_model(VARIANT, pretrained=out / "model.pdparams", num_classes=2)
    trained = read_weights(out / "model.pdparams")
    start = read_weights(weights)
    body = [k for k in trained if not k.startswith("head.")]
    assert any(not np.array_equal(trained[k], start[k]) for k in body)  # it did train
    assert np.array_equal(model.state_dict()["head.weight"].numpy(), trained["head.weight"])
    create_model(VARIANT, pretrained=out / "model_ema.pdparams", num_classes=2)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]
    assert all(r["lr"] == 5e-6 for r in rows if r["kind"] == "step")  # constant, no warmup
    assert (out / "best.safetensors").is_file()


def test_the_fine_tuned_weights_convert_back_to_timm_with_equal_logits(fine_tuned, tmp_path):
    import paddle
    import torch

    from paddle_model.factory import create_model
    from reference.timm_model import timm_from_checkpoint

    out, _, _ = fine_tuned
    back = tmp_path / "back.pth"
    done = run_cli(out / "model.pdparams", back, "--to", "torch")
    assert done.returncode == 0, done.stderr
    timm_model = timm_from_checkpoint(back, VARIANT, img_size=32)
    model = create_model(VARIANT, pretrained=out / "model.pdparams", num_classes=2)
    model.eval()
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with paddle.no_grad():
        ours = model(paddle.to_tensor(x)).numpy()
    with torch.no_grad():
        ref = timm_model(torch.from_numpy(x)).numpy()
    assert ref.shape == (3, 2)
    assert np.abs(ours - ref).max() <= 1e-5


# --- parity with timm ----------------------------------------------------------------------


def test_full_batch_epochs_without_mixup_equal_timm_trained_by_torch_adamw(data, tmp_path, converted):
    import paddle
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import param_groups_weight_decay
    from timm.scheduler import CosineLRScheduler

    from converter.layout import coat_layout
    from converter.reverse import to_torch_layout
    from converter.variants import get_variant
    from paddle_model.factory import create_model
    from paddle_model.train.data import TrainImages, epoch_batches, load_batch, read_split
    from paddle_model.train.loop import TrainConfig, eval_transform
    from reference.timm_model import build_timm, load_timm_state

    train, _ = data
    _, weights = converted(VARIANT)
    epochs, lr, warmup, min_lr, wd = 3, 1e-3, 1, 1e-5, 0.05
    out = tmp_path / "run"
    argv = [str(train), *TINY, "--weights", str(weights), "--epochs", str(epochs), "--batch-size", "8"]
    argv += ["--mixup", "0", "--cutmix", "0", "--lr", str(lr), "--warmup-epochs", str(warmup)]
    argv += ["--min-lr", str(min_lr), "--weight-decay", str(wd), "--aug", "none", "--output", str(out)]
    assert main(argv) == 0

    layout = coat_layout(get_variant(VARIANT))
    paddle.seed(0)  # the run's fresh two-class head, drawn as the run drew it
    start = {
        k: v.numpy() for k, v in create_model(VARIANT, pretrained=weights, num_classes=2).state_dict().items()
    }
    model = build_timm(VARIANT, img_size=32, num_classes=2)
    load_timm_state(model, to_torch_layout(start, layout, "start"))
    model.train()
    groups = param_groups_weight_decay(model, wd, model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=epochs, lr_min=min_lr, warmup_t=warmup, warmup_lr_init=1e-6
    )
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    split = read_split(train, None, False, "training")
    images = TrainImages(split.samples, eval_transform(TrainConfig(VARIANT, str(train), img_size=32)))
    updates = 0
    for epoch in range(epochs):
        for indices in epoch_batches(len(images), 8, 0, epoch):
            x, y, _, _ = load_batch(images, indices)
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
        scheduler.step(epoch + 1)

    got = to_torch_layout(read_weights(out / "model.pdparams"), layout, "trained")
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items() if k in got}
    assert ref.keys() == got.keys()
    moved = max(
        float(np.abs(ref[k] - start_k).max()) for k, start_k in to_torch_layout(start, layout, "s").items()
    )
    assert moved > 1e-3  # the weights did move: the comparison below is of a real run
    diff = max(float(np.abs(got[k].astype(np.float64) - ref[k]).max()) for k in ref)
    scale = max(float(np.abs(ref[k]).max()) for k in ref)
    assert diff / scale <= 1e-4, diff / scale


# --- bad input and bad runs ----------------------------------------------------------------


def test_val_class_folders_that_differ_are_refused(data, tmp_path, capsys):
    train, _ = data
    val = make_folder(tmp_path / "val2", 1, classes=("cat", "cow"))
    assert main([str(train), "--val", str(val), *TINY, "--output", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "differ" in line and "only in training: dog" in line and "only in val: cow" in line
    assert not (tmp_path / "o").exists()


def test_num_classes_contradicting_the_folders_is_refused(data, tmp_path, capsys):
    train, _ = data
    assert main([str(train), *TINY, "--num-classes", "5", "--output", str(tmp_path / "o")]) == 2
    assert "--num-classes 5 contradicts" in error_line(capsys)


def test_an_existing_output_is_refused_without_resume_or_force(data, tmp_path, capsys):
    train, _ = data
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    assert main([str(train), *TINY, "--output", str(tmp_path / "o")]) == 2
    assert "already exists; pass --resume" in error_line(capsys)
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"


def test_a_corrupt_image_stops_the_run_naming_it_and_skip_bad_logs_it(data, tmp_path, capsys):
    train, _ = data
    bad = train / "dog" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = [str(train), *TINY, "--epochs", "1", "--batch-size", "3", "--mixup", "0", "--cutmix", "0"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 2
    line = error_line(capsys)
    assert str(bad) in line and "not a readable image" in line and "--skip-bad" in line
    assert main([*args, "--skip-bad", "--output", str(tmp_path / "b")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows if r["kind"] == "skipped"] == [str(bad)]


def test_a_non_finite_loss_stops_with_exit_1_naming_step_and_files_keeping_the_last_checkpoint(
    data, tmp_path, capsys
):
    train, _ = data
    out = tmp_path / "o"
    argv = [str(train), *TINY, "--epochs", "1", "--batch-size", "2", "--lr", "1e30", "--warmup-epochs", "0"]
    argv += ["--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--checkpoint-every", "1"]
    assert main([*argv, "--output", str(out)]) == 1
    line = error_line(capsys)
    step = checkpoint.load(out / "last.safetensors").state["step"]
    assert f"at step {step + 1} " in line and str(out / "last.safetensors") in line
    assert str(train) in line and ".png" in line
    assert not (out / "model.pdparams").exists()


def test_resume_with_other_settings_is_refused(data, tmp_path, capsys):
    train, _ = data
    out = tmp_path / "o"
    assert main([str(train), *TINY, "--epochs", "1", "--batch-size", "4", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["--resume", str(out), "--lr", "0.1"]) == 2
    assert "started with other lr" in error_line(capsys)


def test_help_and_version_work_without_data(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "coat-train" in capsys.readouterr().out


# --- distributed ---------------------------------------------------------------------------


def test_two_cpu_ranks_with_batch_2_train_as_one_process_with_batch_4(data, tmp_path):
    """Losses to 2e-5 relative, weights to 1e-3 of the model's scale: the ranks' all-reduce sums
    the gradients in another order, and AdamW's first updates turn such float32 differences in
    near-zero gradients into lr-sized steps (lr 1e-3 here) of single elements."""
    train, _ = data
    args = [*TINY, "--epochs", "2", "--batch-size", "4", "--mixup", "0", "--cutmix", "0", "--lr", "1e-3"]
    args += ["--warmup-epochs", "0", "--aug", "none"]
    assert main([str(train), *args, "--output", str(tmp_path / "one")]) == 0
    script = tmp_path / "coat_train.py"
    script.write_text("import sys\nfrom paddle_model.train.cli import main\nsys.exit(main())\n")
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    launch += ["--log_dir", str(tmp_path / "logs"), str(script), str(train), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*launch, "--output", str(tmp_path / "two")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def losses(out: Path) -> list[float]:
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [r["world"] for r in rows if r["kind"] == "start"] == [1 if out.name == "one" else 2]
        return [r["loss"] for r in rows if r["kind"] == "step"]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert np.allclose(two, one, rtol=2e-5, atol=0), (one, two)
    a, b = (
        read_weights(tmp_path / "one" / "model.pdparams"),
        read_weights(tmp_path / "two" / "model.pdparams"),
    )
    diff = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert diff / max(float(np.abs(a[k]).max()) for k in a) <= 1e-3


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint_whole(
    data, tmp_path, capsys, monkeypatch
):
    import errno

    from converter import writers

    train, _ = data
    real, calls = writers.atomic_write, []

    def fills_up(path, write, force=False):
        calls.append(path)
        if len(calls) < 3:
            return real(path, write, force)

        class Full:  # takes a little, then the disk is full
            def write(self, chunk):
                raise OSError(errno.ENOSPC, "No space left on device")

        def partial(f):
            f.write(b"x" * 100)
            write(Full())

        return real(path, partial, force)

    monkeypatch.setattr(writers, "atomic_write", fills_up)
    out = tmp_path / "o"
    argv = [
        str(train),
        *TINY,
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv) == 2
    line = error_line(capsys)
    assert str(out / "last.safetensors") in line and "ENOSPC" in line
    assert checkpoint.load(out / "last.safetensors").state["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["last.safetensors", "log.jsonl"]


def test_amp_on_the_cpu_is_refused_rather_than_silently_float32(data, tmp_path, capsys):
    train, _ = data
    assert (
        main([str(train), *TINY, "--batch-size", "2", "--amp", "bf16", "--output", str(tmp_path / "o")]) == 2
    )
    assert "--amp bf16 needs a GPU" in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_file_lists_train_and_validate_like_folders(data, tmp_path):
    train, val = data
    lines = [f"{p.relative_to(train)} {int(p.parent.name == 'dog')}" for p in sorted(train.rglob("*.png"))]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    vlines = [f"{p.relative_to(val)} {int(p.parent.name == 'dog')}" for p in sorted(val.rglob("*.png"))]
    (tmp_path / "val.txt").write_text("\n".join(vlines) + "\n")
    out = tmp_path / "o"
    argv = [str(train), "--list", str(tmp_path / "train.txt"), "--val", str(val), "--val-list"]
    argv += [str(tmp_path / "val.txt"), *TINY, "--epochs", "1", "--batch-size", "4", "--output", str(out)]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "step"]) == 2
    assert [r["top5"] for r in rows if r["kind"] == "epoch"] == [100.0]  # two classes: always in the top 5
    assert json.loads((out / "config.json").read_text())["label_names"] == ["0", "1"]


# --- review fixes: resume, validation, --force, the log, damaged checkpoints ------------------

QUICK = [*TINY, "--epochs", "1", "--batch-size", "4"]


def test_resume_from_another_folder_reads_neither_the_start_weights_nor_relative_paths(
    data, tmp_path, monkeypatch
):
    train, _ = data
    assert main([str(train), *QUICK, "--output", str(tmp_path / "a")]) == 0
    monkeypatch.chdir(tmp_path)  # relative DATA and --weights, as typed
    assert main(["train", *QUICK, "--weights", "a/model.pdparams", "--output", "b"]) == 0
    saved = checkpoint.load(tmp_path / "b" / "last.safetensors").state["config"]
    assert saved["data"] == str(train.resolve())
    assert saved["weights"] == str((tmp_path / "a" / "model.pdparams").resolve())
    (tmp_path / "a" / "model.pdparams").unlink()  # the checkpoint holds every tensor
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["--resume", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--batch-size", "3"], "must be even"),  # Mixup/CutMix on by default
        (["--min-lr", "-1"], "--min-lr -1.0: must be at least 0"),
        (["--lr", "-0.1"], "--lr -0.1: must be at least 0"),
        (["--img-size", "16"], "--img-size 16: coat_lite_tiny takes images of at least 32"),
        (["--img-size", "0"], "--img-size 0:"),
        (["--checkpoint-every", "-1"], "--checkpoint-every -1: must be at least 0"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1: must be at least 0"),
        (["--smoothing", "1"], "--smoothing 1.0: must be in [0, 1)"),
        (["--drop-path", "1.5"], "--drop-path 1.5: must be in [0, 1)"),
        (["--model-ema-decay", "-0.1"], "--model-ema-decay -0.1: must be in [0, 1)"),
    ],
)
def test_a_setting_out_of_range_is_refused_before_the_output_is_made(data, tmp_path, capsys, option, said):
    train, _ = data
    assert main([str(train), *QUICK, *option, "--output", str(tmp_path / "o")]) == 2
    assert said in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_refused_setting_with_force_keeps_the_previous_run(data, tmp_path, capsys):
    train, _ = data
    out = tmp_path / "o"
    assert main([str(train), *QUICK, "--output", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert main([str(train), *QUICK, "--img-size", "16", "--force", "--output", str(out)]) == 2
    assert "at least 32" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before


def test_force_removes_every_file_of_the_previous_run_and_only_those(data, tmp_path, capsys):
    train, val = data
    out = tmp_path / "o"
    assert main([str(train), "--val", str(val), *QUICK, "--model-ema", "--output", str(out)]) == 0
    written = {p.name for p in out.iterdir()}
    assert {
        "model.pdparams",
        "model_ema.pdparams",
        "config.json",
        "curves.png",
        "best.safetensors",
    } <= written
    (out / "mine.txt").write_text("keep")
    diverging = ["--lr", "1e30", "--warmup-epochs", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0"]
    assert main([str(train), *QUICK, *diverging, "--force", "--output", str(out)]) == 1  # stops at step 1
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "mine.txt"]


def test_an_epoch_row_is_logged_before_the_checkpoint_that_passes_its_epoch(data, tmp_path, monkeypatch):
    from paddle_model.train import loop

    train, _ = data
    out = tmp_path / "o"
    save = loop.save_checkpoint

    def killed_after_the_first_epoch_end(r, name=loop.LAST):
        save(r, name)
        if r.state["epoch"] == 1 and r.state["batch"] == 0:
            raise KeyboardInterrupt  # as a kill right after the epoch's checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", killed_after_the_first_epoch_end)
    assert main([str(train), *TINY, "--epochs", "2", "--batch-size", "4", "--output", str(out)]) == 130
    monkeypatch.setattr(loop, "save_checkpoint", save)
    assert main(["--resume", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]


def _state(**change) -> dict:
    from dataclasses import asdict

    from paddle_model.train.loop import TrainConfig

    state = {"format": checkpoint.FORMAT, "config": asdict(TrainConfig(variant=VARIANT, data="d"))}
    state |= {"epoch": 0, "batch": 0, "step": 0, "optimizer": {"steps": {}, "groups": []}, "scheduler": {}}
    return state | change


@pytest.mark.parametrize(
    ("meta", "said"),
    [
        ("[]", "not a coat-train checkpoint"),
        (json.dumps({k: v for k, v in _state().items() if k != "config"}), "'config' missing"),
        (json.dumps(_state(config={**_state()["config"], "bogus": 1})), "settings unknown: bogus"),
        (
            json.dumps(_state(config={k: v for k, v in _state()["config"].items() if k != "seed"})),
            "missing: seed",
        ),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, capsys, meta, said):
    from converter.writers import write_safetensors

    path = tmp_path / "o" / "last.safetensors"
    path.parent.mkdir()
    write_safetensors({"model/w": np.zeros(2, np.float32)}, path, {}, {checkpoint.KEY: meta}, force=True)
    assert main(["--resume", str(path.parent)]) == 2
    line = error_line(capsys)
    assert str(path) in line and said in line


def test_resume_refuses_optimizer_groups_of_other_parameters(data, tmp_path, capsys):
    from converter.safetensors_io import read_file
    from converter.writers import write_safetensors

    train, _ = data
    out = tmp_path / "o"
    assert main([str(train), *QUICK, "--output", str(out)]) == 0
    tensors, meta = read_file(out / "last.safetensors")
    state = json.loads(meta[checkpoint.KEY])
    groups = state["optimizer"]["groups"]
    assert len(groups) == 2 and all(g["names"] for g in groups)
    groups[0]["names"], groups[1]["names"] = groups[1]["names"], groups[0]["names"]
    meta[checkpoint.KEY] = json.dumps(state)
    write_safetensors(tensors, out / "last.safetensors", {}, meta, force=True)
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 2
    assert "parameter groups differ" in error_line(capsys)


def test_a_class_folder_name_the_weights_cannot_record_is_refused(data, tmp_path, capsys):
    train, _ = data
    make_folder(train, 4, classes=("x" * 201,))
    assert main([str(train), *QUICK, "--output", str(tmp_path / "o")]) == 2
    assert "1 to 200 printable characters" in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_resume_with_output_naming_another_folder_is_refused(tmp_path, capsys):
    assert main(["--resume", str(tmp_path / "a"), "--output", str(tmp_path / "b")]) == 2
    assert "give one of them" in error_line(capsys)


def test_resume_takes_the_default_size_and_an_equal_path_spelt_otherwise(data, tmp_path, capsys, monkeypatch):
    train, _ = data
    monkeypatch.chdir(tmp_path)
    run = ["--variant", VARIANT, "--quiet", "--epochs", "1", "--batch-size", "4", "--aug", "none"]
    assert main(["train", *run, "--mixup", "0", "--cutmix", "0", "--output", "o"]) == 0
    assert main(["train/", "--resume", "o", "--img-size", "224"]) == 0
