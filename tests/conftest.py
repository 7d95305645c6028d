"""Shared fixtures: seeded checkpoints built once per session, and a way to run the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python convert.py ARGS`` as a user would; text output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=600,
    )


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """``checkpoints(variant, layout="official")`` -> path of a seeded checkpoint, made once."""
    from reference.checkpoints import write_official_checkpoint, write_timm_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple[str, str], Path] = {}

    def get(variant: str, layout: str = "official") -> Path:
        key = (variant, layout)
        if key not in made:
            path = root / f"{variant}_{layout}.pth"
            write = write_official_checkpoint if layout == "official" else write_timm_checkpoint
            made[key] = write(variant, path, seed=0)
        return made[key]

    return get


def run_python(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (``-c CODE ...``, ``-m MODULE ...``) in a fresh process from the
    repository root, in ``env`` (default: this process's); text output captured."""
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_module(module: str, *args) -> subprocess.CompletedProcess:
    """Run ``python -m module ARGS`` from the repository root; text output captured."""
    return run_python("-m", module, *args, timeout=900)


RELEASED_VARIANTS = ("coat_tiny", "coat_lite_tiny")  # a CoaT and a CoaT-Lite


@pytest.fixture(scope="session")
def released(checkpoints, tmp_path_factory):
    """Seeded checkpoints of RELEASED_VARIANTS released twice into separate folders by
    ``python -m reference.release``: (source folder, [(out folder, stdout), (out folder, stdout)]).
    Made once: the release runs the full parity check."""
    root = tmp_path_factory.mktemp("release")
    src = root / "src"
    src.mkdir()
    for name in RELEASED_VARIANTS:
        (src / f"{name}_seeded.pth").write_bytes(checkpoints(name).read_bytes())
    runs = []
    for out in (root / "out1", root / "out2"):
        result = run_module("reference.release", src, out, "--allow-unofficial")
        assert result.returncode == 0, result.stderr
        runs.append((out, result.stdout))
    return src, runs


@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory):
    """``converted(variant)`` -> (source .pth, .pdparams written by the CLI), made once each."""
    out = tmp_path_factory.mktemp("converted")
    done: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in done:
            src, dst = checkpoints(name), out / f"{name}.pdparams"
            result = run_cli(src, dst)
            assert result.returncode == 0, result.stderr
            assert f"variant      {name} " in result.stdout
            done[name] = (src, dst)
        return done[name]

    return get


SAMPLE_IMAGES = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


def sample_image_paths() -> list[Path]:
    """Freely licensed photographs shipped inside scikit-image's wheel (not downloaded)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    assert spec is not None, "scikit-image is missing: install the dev extra (pip install -e '.[dev]')"
    data = Path(spec.submodule_search_locations[0]) / "data"
    return [data / name for name in SAMPLE_IMAGES]


def timm_eval_batch(name: str, paths) -> np.ndarray:
    """timm's own eval preprocessing of the images at ``paths``, as one NCHW batch."""
    import timm
    import torch
    from PIL import Image

    model = timm.create_model(name, pretrained=False, num_classes=0)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]).numpy()


def assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """A command refused its input as the project promises: exit 2, one ``error:`` line on
    stderr holding every phrase, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
