"""`python -m paddle_model.evaluate` and `python -m reference.evaluate` (timm beside it): counts,
known accuracies, two ranks, spawned workers, bad data.

The data is a tiny ImageNet-style tree of real photographs (scikit-image's, cropped and shrunk;
JPEG and PNG, colour, grey and with alpha). The accuracy is made known by rigging the
classifier: from the Paddle model's own features of each image, a head is solved whose logits
put a chosen class first, so each image is designed to be right, right only in the top 5, or
wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_model.classes import imagenet_wnids
from paddle_model.datasets import EvalImages, scan_folder
from paddle_model.evaluate import main
from paddle_model.transforms import eval_transform
from reference.evaluate import main as reference_main

from .conftest import ROOT, assert_refused, run_cli, sample_image_paths, timm_eval_batch

VARIANT = "coat_lite_tiny"
# tabby cat, coffee mug, space shuttle, motor scooter: ImageNet indices 281, 504, 812, 670
CLASSES = {"n02123045": 9, "n03063599": 9, "n04266014": 9, "n03791053": 8}
PHOTOS = [
    *sample_image_paths(),
    *(
        sample_image_paths()[0].parent / n
        for n in ("camera.png", "logo.png", "hubble_deep_field.jpg", "coins.png")
    ),
]
N = sum(CLASSES.values())  # 35: odd, so two ranks need DistributedBatchSampler's padding


def _photo(i: int) -> Image.Image:
    """The i-th test image: a crop of a photograph, shrunk, landscape or portrait."""
    image = Image.open(PHOTOS[i % len(PHOTOS)])
    w, h = image.size
    box = (i * w // 50, (i % 4) * h // 20, w - (i % 5) * w // 25, h - (i % 3) * h // 15)
    size = (96 + 7 * i, 80 + 3 * i) if i % 3 else (72 + 2 * i, 120 + 5 * i)
    return image.crop(box).resize(size, Image.BILINEAR)


def _write_tree(root, folders) -> None:
    i = 0
    for folder, count in zip(folders, CLASSES.values()):
        (root / folder).mkdir(parents=True)
        for j in range(count):
            image = _photo(i)
            if i % 2:  # PNG keeps grey and alpha modes; the loader converts to RGB
                image.save(root / folder / f"img_{j:02d}.png")
            else:
                image.convert("RGB").save(root / folder / f"img_{j:02d}.JPEG", quality=90)
            i += 1


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """ImageNet val layout: wnid folders, so labels are ImageNet indices."""
    root = tmp_path_factory.mktemp("imagenet") / "val"
    _write_tree(root, CLASSES)
    return root


@pytest.fixture(scope="module")
def val_list(tree):
    """The same images as a Paddle-style list file: '<relative path> <label>'."""
    data = scan_folder(tree, 1000, wnids=imagenet_wnids())
    lines = [f"{s.path[len(str(tree)) + 1 :]} {s.label}" for s in data.samples]
    path = tree.parent / "val_list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _design(labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Target logits: image i right (i % 3 == 0), right only in the top 5 (1), or wrong (2)."""
    targets = np.zeros((len(labels), 1000))
    for i, label in enumerate(labels):
        wrong = (label + 1 + i) % 1000
        if i % 3 == 0:
            targets[i, label] = 8.0
        elif i % 3 == 1:
            targets[i, wrong], targets[i, label] = 8.0, 6.0
        else:
            targets[i, wrong], targets[i, label] = 8.0, -8.0
    top1 = sum(1 for i in range(len(labels)) if i % 3 == 0)
    top5 = sum(1 for i in range(len(labels)) if i % 3 < 2)
    return targets, top1, top5


@dataclass(frozen=True)
class Rigged:
    source: Path  # official-layout .pth
    weights: Path  # what convert.py made of it
    top1: int  # designed counts
    top5: int
    natural: tuple[Path, Path]  # the same model before rigging: (.pth, .pdparams)


@pytest.fixture(scope="module")
def rigged(tree, tmp_path_factory):
    """A timm CoaT (its own seeded initialisation: features that depend on the image) whose
    head is solved to give the designed predictions on the tree, saved in the official layout
    and converted by convert.py."""
    import torch

    from reference.timm_model import build_timm

    data = scan_folder(tree, 1000, wnids=imagenet_wnids())
    folder = tmp_path_factory.mktemp("rigged")
    torch.manual_seed(0)
    model = build_timm(VARIANT)
    natural = _save_and_convert(model, folder / f"{VARIANT}_natural.pth")
    with torch.no_grad():
        x = torch.from_numpy(timm_eval_batch(VARIANT, [s.path for s in data.samples]))
        feats = model.forward_head(model.forward_features(x), pre_logits=True).double().numpy()
    targets, top1, top5 = _design(np.array([s.label for s in data.samples]))
    design = np.hstack([feats, np.ones((len(feats), 1))])
    solution = np.linalg.lstsq(design, targets, rcond=None)[0]
    assert np.abs(design @ solution - targets).max() < 1e-3, "the features cannot carry the design"
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(solution[:-1].T))
        model.head.bias.copy_(torch.from_numpy(solution[-1]))
    source, weights = _save_and_convert(model, folder / f"{VARIANT}_rigged.pth")
    return Rigged(source, weights, top1, top5, natural)


def _save_and_convert(model, source: Path) -> tuple[Path, Path]:
    """The official release layout, converted by the command line."""
    import torch

    from reference.checkpoints import official_state_dict

    torch.save({"model": official_state_dict(model)}, source)
    weights = source.with_suffix(".pdparams")
    done = run_cli(source, weights)
    assert done.returncode == 0, done.stderr
    return source, weights


def evaluate(capsys, *args, command=main) -> tuple[int, str, str]:
    code = command([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def evaluate_json(capsys, *args, command=main) -> dict:
    code, out, err = evaluate(capsys, *args, "--json", "--quiet", "--workers", "0", command=command)
    assert code == 0, err
    return json.loads(out)


def test_tree_is_listed_like_torchvision_imagefolder(tree, tmp_path):
    from torchvision.datasets import ImageFolder

    named = tmp_path / "named"
    _write_tree(named, ["tabby", "mug", "shuttle", "scooter"])
    ours = scan_folder(named, 4)  # a model of these 4 classes, labelled as ImageFolder labels them
    theirs = ImageFolder(str(named))
    assert ours.labelling == "sorted folders"
    assert [(s.path, s.label) for s in ours.samples] == theirs.samples
    assert len(ours.samples) == N


def test_wnid_folders_get_their_imagenet_index(tree):
    data = scan_folder(tree, 1000, wnids=imagenet_wnids())
    assert data.labelling == "ImageNet wnids"
    assert sorted({s.label for s in data.samples}) == [281, 504, 670, 812]
    assert [s.label for s in data.samples].count(670) == CLASSES["n03791053"]


def test_loaded_batches_equal_timms_preprocessing(tree):
    data = scan_folder(tree, 1000, wnids=imagenet_wnids())
    dataset = EvalImages(data.samples, eval_transform(VARIANT))
    ours = np.stack([dataset[i][0] for i in range(len(dataset))])
    theirs = timm_eval_batch(VARIANT, [s.path for s in data.samples])
    assert ours.shape == (N, 3, 224, 224)
    assert float(np.abs(ours - theirs).max()) <= 1e-6


def designed(picked) -> tuple[int, int]:
    """The designed (top-1, top-5) counts over the images at positions ``picked``."""
    return sum(i % 3 == 0 for i in picked), sum(i % 3 < 2 for i in picked)


def limited(n: int) -> list[int]:
    """The positions ``--limit n`` evaluates: spread evenly over the data."""
    return [i * N // n for i in range(n)]


def test_rigged_head_gives_the_designed_accuracy(tree, rigged, capsys):
    result = evaluate_json(
        capsys, tree, "--variant", VARIANT, "--weights", rigged.weights, "--batch-size", "8"
    )
    assert (result["images"], result["evaluated"], result["skipped"]["count"]) == (N, N, 0)
    assert (result["correct_top1"], result["correct_top5"]) == (rigged.top1, rigged.top5) == (12, 24)
    assert result["top1"] == pytest.approx(100 * 12 / 35)
    assert result["top5"] == pytest.approx(100 * 24 / 35)
    assert result["official"] == {"top1": 77.5, "top5": 93.8}
    assert result["labelling"] == "ImageNet wnids"
    assert result["images_per_s"] > 0


def test_list_file_gives_the_same_result(tree, val_list, rigged, capsys):
    result = evaluate_json(
        capsys, tree, "--list", val_list, "--variant", VARIANT, "--weights", rigged.weights, "--limit", "12"
    )
    assert result["labelling"] == "list file"
    assert result["evaluated"] == 12
    assert (result["correct_top1"], result["correct_top5"]) == designed(limited(12))


def test_limit_spreads_over_the_classes(tree):
    data = scan_folder(tree, 1000, wnids=imagenet_wnids())
    picked = data.limit(7).samples
    assert picked == [data.samples[i] for i in limited(7)]
    assert len({s.label for s in picked}) == len(CLASSES)


def test_expect_top1_sets_the_exit_code(tree, rigged, capsys):
    common = [
        tree,
        "--variant",
        VARIANT,
        "--weights",
        rigged.weights,
        "--workers",
        "0",
        "--quiet",
        "--limit",
        "9",
    ]
    top1 = 100 * designed(limited(9))[0] / 9
    code, out, _ = evaluate(capsys, *common, "--expect-top1", f"{top1 + 0.05:.2f}")
    assert code == 0 and f"top-1       {top1:.3f} %" in out
    code, _, err = evaluate(capsys, *common, "--expect-top1", f"{top1 + 0.6:.1f}", "--tolerance", "0.5")
    assert code == 1
    assert f"top-1 {top1:.3f} % is more than 0.5 points below the expected {top1 + 0.6:.1f}" in err


def test_reference_runs_timm_on_the_same_batches(tree, rigged, capsys):
    result = evaluate_json(
        capsys,
        tree,
        "--variant",
        VARIANT,
        "--weights",
        rigged.weights,
        "--limit",
        "12",
        command=reference_main,
    )
    ref = result["reference"]
    assert "reverse-converted" in ref["weights"]
    assert (ref["correct_top1"], ref["correct_top5"]) == designed(limited(12))
    assert ref["top1_agreement"] == 100.0 and ref["disagreements"] == []
    # the rigged head adds up large terms that cancel (about 40x the logits), so judge its
    # differences against the designed top-1 margin of 2; the natural head below gets 1e-5
    assert 0 < ref["max_abs_logit_diff"] < 1e-3


def test_reference_from_the_original_checkpoint(tree, rigged, capsys):
    source, weights = rigged.natural
    result = evaluate_json(
        capsys,
        tree,
        "--variant",
        VARIANT,
        "--weights",
        weights,
        "--reference-weights",
        source,
        "--limit",
        "12",
        command=reference_main,
    )
    ref = result["reference"]
    assert ref["weights"] == str(source)
    assert ref["top1_agreement"] == 100.0 and ref["disagreements"] == []
    assert 0 < ref["max_rel_logit_diff"] <= 1e-5
    assert (ref["correct_top1"], ref["correct_top5"]) == (result["correct_top1"], result["correct_top5"])


def test_paddle_side_points_to_the_reference_command(tree, rigged, capsys):
    for extra in (["--reference"], ["--reference-weights", str(rigged.source)]):
        with pytest.raises(SystemExit) as exit:
            main([str(tree), "--variant", VARIANT, "--weights", str(rigged.weights), *extra])
        out, err = capsys.readouterr()
        assert exit.value.code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("error: --reference runs timm beside the Paddle model")
        assert "python -m reference.evaluate" in err


def test_command_line_with_workers_and_result_file(tree, rigged, tmp_path):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "paddle_model.evaluate",
        str(tree),
        "--variant",
        VARIANT,
        "--weights",
        str(rigged.weights),
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--limit",
        "12",
        "--result",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    top1, top5 = designed(limited(12))
    assert f"top-1       {100 * top1 / 12:.3f} %  ({top1}/12; official 77.5)" in done.stdout
    assert "img/s" in done.stderr  # the progress bar
    assert json.loads(out.read_text())["correct_top5"] == top5
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {out}: already exists; pass --force to overwrite it"


def test_two_ranks_under_paddle_launch_equal_one_process(tree, rigged, tmp_path, capsys):
    # 13 images in batches of 4 on 2 ranks: DistributedBatchSampler pads the last shard
    common = ["--variant", VARIANT, "--weights", str(rigged.weights), "--batch-size", "4", "--limit", "13"]
    single = evaluate_json(capsys, tree, *common)
    out = tmp_path / "result.json"
    script = shutil.which("coat-evaluate", path=str(Path(sys.executable).parent))
    assert script is not None, "no coat-evaluate console script: install the project (pip install -e .)"
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(tmp_path / "log"),
        script,
        str(tree),
        *common,
        "--workers",
        "1",
        "--quiet",
        "--result",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    both = json.loads(out.read_text())
    assert both["processes"] == 2 and single["processes"] == 1
    keys = ["images", "evaluated", "correct_top1", "correct_top5", "top1", "top5", "skipped"]
    assert {k: both[k] for k in keys} == {k: single[k] for k in keys}
    assert (both["evaluated"], (both["correct_top1"], both["correct_top5"])) == (13, designed(limited(13)))
    assert "2 processes" in (tmp_path / "log" / "workerlog.0").read_text()
    for noise in ("Modified FLAGS detected", "tcp_store", "tcp_utils"):  # rank 0's rendezvous
        assert noise not in done.stdout + done.stderr


# ---- bad data: one clear line and exit 2, or with --skip-bad, counted and left out ----


@pytest.fixture
def small_tree(tree, tmp_path):
    """Two classes of three images each, copied from the tree, to break."""
    copy = tmp_path / "val"
    for folder in ("n02123045", "n03063599"):
        (copy / folder).mkdir(parents=True)
        for image in sorted((tree / folder).iterdir())[:3]:
            shutil.copy(image, copy / folder / image.name)
    return copy


def _check_refused(capsys, args, *needles) -> None:
    code, out, err = evaluate(capsys, *args, "--quiet", "--workers", "0", "--batch-size", "2")
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(small_tree, rigged, damage, capsys):
    bad = next(p for p in sorted((small_tree / "n03063599").iterdir()) if p.suffix == ".JPEG")
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 3])
    args = [small_tree, "--variant", VARIANT, "--weights", rigged.weights]
    _check_refused(capsys, args, str(bad), "not a readable image", "--skip-bad")
    result = evaluate_json(capsys, *args, "--skip-bad")
    assert (result["images"], result["evaluated"], result["skipped"]["count"]) == (6, 5, 1)
    assert result["skipped"]["items"][0]["item"] == str(bad)
    assert "not a readable image" in result["skipped"]["items"][0]["reason"]


def test_class_folder_without_images(small_tree, rigged, capsys):
    empty = small_tree / "n01440764"  # tench: sorts first
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    args = [small_tree, "--variant", VARIANT, "--weights", rigged.weights]
    _check_refused(capsys, args, str(empty), "class folder with no images")
    result = evaluate_json(capsys, *args, "--skip-bad")
    assert result["skipped"]["items"] == [{"item": str(empty), "reason": "class folder with no images"}]
    assert result["evaluated"] == 6


def test_empty_folder_keeps_the_other_labels_in_place(small_tree):
    names = small_tree.parent / "named"
    for k, folder in enumerate(["a", "c"]):
        shutil.copytree(small_tree / sorted(p.name for p in small_tree.iterdir())[k], names / folder)
    (names / "b").mkdir()
    data = scan_folder(names, 1000, skip_bad=True)
    assert data.labelling == "sorted folders"
    assert [s.label for s in data.samples] == [0, 0, 0, 2, 2, 2]
    assert data.skipped == [(str(names / "b"), "class folder with no images")]


@pytest.mark.parametrize(
    "line, reason",
    [
        ("n03063599/img_00.JPEG 1000", "label 1000 is outside 0..999"),
        ("n03063599/img_00.JPEG -1", "label -1 is outside 0..999"),
        ("n03063599/img_00.JPEG cat", "cannot parse"),
        ("just-a-path.JPEG", "cannot parse"),
    ],
)
def test_bad_list_line(tree, val_list, rigged, tmp_path, line, reason, capsys):
    bad_list = tmp_path / "val_list.txt"
    lines = val_list.read_text().splitlines()[:4]
    bad_list.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    args = [tree, "--list", bad_list, "--variant", VARIANT, "--weights", rigged.weights]
    _check_refused(capsys, args, f"{bad_list}:3", reason)
    result = evaluate_json(capsys, *args, "--skip-bad")
    assert (result["images"], result["evaluated"], result["skipped"]["count"]) == (4, 4, 1)
    assert result["skipped"]["items"][0]["item"] == f"{bad_list}:3"


def test_missing_file_in_list(tree, val_list, rigged, tmp_path, capsys):
    bad_list = tmp_path / "val_list.txt"
    lines = val_list.read_text().splitlines()[:3]
    bad_list.write_text("\n".join([*lines, "n03063599/gone.JPEG 504"]) + "\n")
    args = [tree, "--list", bad_list, "--variant", VARIANT, "--weights", rigged.weights]
    _check_refused(capsys, args, str(tree / "n03063599" / "gone.JPEG"), "no such image file")
    result = evaluate_json(capsys, *args, "--skip-bad")
    assert (result["images"], result["evaluated"], result["skipped"]["count"]) == (4, 3, 1)


@pytest.mark.parametrize("problem", ["no folder", "no class folders", "too many classes", "backbone"])
def test_unusable_data_or_weights(tmp_path, rigged, problem, capsys):
    weights = rigged.weights
    data = tmp_path / "val"
    if problem == "no class folders":
        data.mkdir()
        (data / "stray.JPEG").write_bytes(b"")
    elif problem == "too many classes":
        for k in range(1001):
            (data / f"c{k:04d}").mkdir(parents=True)
    elif problem == "backbone":
        data.mkdir()
        state = {k: v for k, v in paddle.load(str(weights)).items() if not k.startswith("head.")}
        weights = tmp_path / "backbone.pdparams"
        paddle.save(state, str(weights))
    needles = {
        "no folder": ["no such folder"],
        "no class folders": ["no class folders"],
        "too many classes": ["1001 class folders but the model has 1000 classes"],
        "backbone": ["no classifier"],
    }[problem]
    _check_refused(capsys, [data, "--variant", VARIANT, "--weights", weights], *needles)


# ---- data that is not what it looks like: bounded time, bounded memory, each file once ----


def _run_evaluate(*args) -> subprocess.CompletedProcess:
    """``python -m paddle_model.evaluate ARGS`` in a child, so that a hang is a timeout here
    (the DataLoader reads in a thread, which an alarm in the test process cannot stop)."""
    return subprocess.run(
        [sys.executable, "-m", "paddle_model.evaluate", *map(str, args), "--quiet", "--workers", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(small_tree, rigged, tmp_path, capsys):
    fifo = small_tree / "n03063599" / "x.JPEG"
    os.mkfifo(fifo)
    args = ["--variant", VARIANT, "--weights", rigged.weights]
    assert_refused(_run_evaluate(small_tree, *args), str(fifo), "a FIFO, not an image file", "--skip-bad")
    listed = tmp_path / "list.txt"  # named by a file list, it is opened: without blocking, and refused
    listed.write_text("n03063599/x.JPEG 504\n")
    assert_refused(
        _run_evaluate(small_tree, "--list", listed, *args),
        str(fifo),
        "a FIFO, not an image file; only regular files are read",
    )
    result = evaluate_json(capsys, small_tree, *args, "--skip-bad")
    assert (result["images"], result["evaluated"]) == (6, 6)
    assert result["skipped"]["items"] == [{"item": str(fifo), "reason": "a FIFO, not an image file"}]


def test_a_symlink_loop_counts_each_image_once(small_tree, rigged, capsys):
    (small_tree / "n03063599" / "loop").symlink_to(".")
    assert len(scan_folder(small_tree, 1000, wnids=imagenet_wnids()).samples) == 6
    (small_tree / "n03063599" / "up").symlink_to("..")  # to the root: would take the other class in
    data = scan_folder(small_tree, 1000, wnids=imagenet_wnids())
    assert len(data.samples) == 6
    assert len({os.path.realpath(s.path) for s in data.samples}) == 6
    assert [s.label for s in data.samples] == [281] * 3 + [504] * 3
    result = evaluate_json(capsys, small_tree, "--variant", VARIANT, "--weights", rigged.weights)
    assert (result["images"], result["evaluated"], result["skipped"]["count"]) == (6, 6, 0)


def test_a_thin_png_is_refused_before_it_takes_gigabytes(small_tree, rigged):
    """A 1x10000 PNG is 10,000 pixels, but resizing its shorter side to 248 would make 620
    million (1.8 GB as RGB). Run with 1 GB of address space beyond what the process holds
    once everything is imported: the refusal must come, as one line, within it."""
    thin = small_tree / "n03063599" / "thin.png"
    Image.new("RGB", (1, 10000), (200, 100, 50)).save(thin)
    assert thin.stat().st_size < 1000
    code = (
        "import resource, sys, warnings\n"
        "warnings.filterwarnings('ignore', message='No ccache found')\n"
        "import paddle, PIL.Image, tqdm\n"
        "from paddle_model.evaluate import main\n"
        "import paddle_model.factory\n"
        "status = open('/proc/self/status').read().splitlines()\n"
        "vm = next(int(l.split()[1]) for l in status if l.startswith('VmSize')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(small_tree),
            "--variant",
            VARIANT,
            "--weights",
            str(rigged.weights),
            "--workers",
            "0",
            "--quiet",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {thin}: the image is 1x10000 pixels"), done.stderr
    assert "248x2480000" in lines[0] and "--skip-bad" in lines[0]


def test_workers_started_with_spawn_get_the_dataset(tree, rigged):
    """macOS and Windows start DataLoader workers with spawn, which pickles the dataset."""
    code = (
        "import multiprocessing, sys\n"
        "multiprocessing.set_start_method('spawn')\n"
        "from paddle_model.evaluate import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tree),
            "--variant",
            VARIANT,
            "--weights",
            str(rigged.weights),
            "--workers",
            "2",
            "--batch-size",
            "3",
            "--limit",
            "6",
            "--json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["evaluated"] == 6
    assert (result["correct_top1"], result["correct_top5"]) == designed(limited(6))


# ---- labels that are not ImageNet's: refused or mapped, never compared with ImageNet's numbers ----


@pytest.fixture(scope="module")
def random_heads(tmp_path_factory) -> dict[int, Path]:
    """Seeded Paddle weights with a 1000-class and a 2-class classifier: {classes: .pdparams}."""
    from paddle_model import create_model

    folder = tmp_path_factory.mktemp("heads")
    made = {}
    for classes in (1000, 2):
        paddle.seed(0)
        made[classes] = folder / f"{classes}.pdparams"
        paddle.save(create_model(VARIANT, num_classes=classes).state_dict(), str(made[classes]))
    return made


@pytest.fixture
def named_tree(small_tree) -> Path:
    """small_tree's two classes (tabby cat, coffee mug) in folders named as a user names them."""
    named = small_tree.parent / "named"
    for wnid, name in (("n02123045", "cat"), ("n03063599", "coffee")):
        shutil.copytree(small_tree / wnid, named / name)
    return named


def test_folders_not_named_by_wnids_are_refused_for_an_imagenet_model(named_tree, random_heads, capsys):
    args = [named_tree, "--variant", VARIANT, "--weights", random_heads[1000]]
    _check_refused(capsys, args, "folders cat, coffee are", "not ImageNet wnids", "--class-map", "2 classes")


def test_a_class_map_labels_the_folders_as_their_wnids(small_tree, named_tree, rigged, tmp_path, capsys):
    wnids = imagenet_wnids()
    class_map = tmp_path / "classes.txt"
    class_map.write_text(f"cat {wnids.index('n02123045')}\ncoffee {wnids.index('n03063599')}\n")
    common = ["--variant", VARIANT, "--weights", rigged.weights]
    mapped = evaluate_json(capsys, named_tree, "--class-map", class_map, *common)
    by_wnid = evaluate_json(capsys, small_tree, *common)
    assert mapped["labelling"] == "class map" and by_wnid["labelling"] == "ImageNet wnids"
    keys = ["evaluated", "correct_top1", "correct_top5"]
    assert [mapped[k] for k in keys] == [by_wnid[k] for k in keys] and mapped["evaluated"] == 6


@pytest.mark.parametrize(
    "text, reason",
    [
        ("cat 281\n", "folders coffee are not in the class map"),
        ("cat 281\ncoffee 1000\n", "label 1000 is outside 0..999"),
        ("cat 281\ncat 282\ncoffee 504\n", "mapped twice"),
        ("cat\n", "cannot parse"),
    ],
)
def test_a_bad_class_map_is_refused(named_tree, random_heads, tmp_path, text, reason, capsys):
    class_map = tmp_path / "classes.txt"
    class_map.write_text(text)
    args = [named_tree, "--class-map", class_map, "--variant", VARIANT, "--weights", random_heads[1000]]
    _check_refused(capsys, args, reason)


def test_a_model_of_other_classes_shows_no_imagenet_numbers(named_tree, random_heads, capsys):
    args = [named_tree, "--variant", VARIANT, "--weights", random_heads[2], "--quiet", "--workers", "0"]
    result = evaluate_json(capsys, *args)
    assert result["labelling"] == "sorted folders" and result["evaluated"] == 6
    assert result["official"] is None
    code, out, err = evaluate(capsys, *args)
    assert code == 0, err
    assert "official" not in out and f"({result['correct_top1']}/6)" in out


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "too large", "long line", "not utf-8"])
def test_a_list_is_read_only_from_a_small_regular_text_file(tree, random_heads, tmp_path, kind):
    from paddle_model.datasets import MAX_LINE_CHARS, MAX_LIST_BYTES

    listed = tmp_path / "list.txt"
    if kind == "/dev/zero":
        listed = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(listed)
    elif kind == "too large":
        with open(listed, "wb") as f:
            f.truncate(MAX_LIST_BYTES + 1)  # sparse: no disk used
    elif kind == "long line":
        listed.write_text("n03063599/" + "x" * MAX_LINE_CHARS + ".JPEG 504\n")
    else:
        listed.write_bytes(b"n03063599/img_00.JPEG 504\n\xff\xfe 1\n")
    done = _run_evaluate(tree, "--list", listed, "--variant", VARIANT, "--weights", random_heads[1000])
    reason = {
        "/dev/zero": "not a regular file",
        "fifo": "not a regular file",
        "too large": f"larger than {MAX_LIST_BYTES} bytes",
        "long line": f"{listed}:1: a line longer than {MAX_LINE_CHARS} characters",
        "not utf-8": "not UTF-8 text",
    }[kind]
    assert_refused(done, reason)
