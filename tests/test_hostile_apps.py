"""Hostile files where the applications read names and labels: the ``config.json`` beside the
weights, a ``.safetensors`` file's ``label_names``, an evaluate ``--class-map``. Each is refused
with one line naming the file, in bounded time, without reading more than the limit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import paddle
import pytest

from converter.layout import coat_layout
from converter.writers import write_state_dict
from paddle_model import WeightsError, create_model, get_variant
from paddle_model.evaluate import main as evaluate_main

VARIANT = "coat_lite_tiny"


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> dict:
    paddle.seed(0)
    return {k: v.numpy() for k, v in create_model(VARIANT, num_classes=2).state_dict().items()}


@pytest.fixture
def weights(state, tmp_path) -> Path:
    path = tmp_path / "ft.pdparams"
    write_state_dict(state, path, {}, {})
    return path


def _config(folder: Path, kind: str) -> None:
    config = folder / "config.json"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "symlink to /dev/zero":
        config.symlink_to("/dev/zero")
    elif kind == "directory":
        config.mkdir()
    elif kind == "huge":
        with open(config, "wb") as f:
            f.truncate(1 << 30)  # sparse
    elif kind == "deep nesting":
        config.write_text("[" * 200_000 + "]" * 200_000)
    elif kind == "6000-digit number":
        config.write_text('{"label_names": ' + "9" * 6000 + "}")
    elif kind == "not utf-8":
        config.write_bytes(b'{"label_names": ["\xff\xfe"]}')


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("fifo", "not a regular file"),
        ("symlink to /dev/zero", "not a regular file"),
        ("directory", "is a directory"),
        ("huge", "larger than"),
        ("deep nesting", "not valid JSON"),
        ("6000-digit number", "not valid JSON"),
        ("not utf-8", "not valid JSON"),
    ],
)
def test_a_hostile_config_beside_the_weights_is_refused(weights, kind, reason):
    _config(weights.parent, kind)
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=reason) as e:
        create_model(VARIANT, pretrained=weights)
    assert time.perf_counter() - start < 30
    assert str(weights.parent / "config.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "recorded, reason",
    [
        ("not json [", "not valid JSON"),
        ('["a"]', "1 label_names for a classifier of 2 classes"),
        ('"ab"', "a list"),
    ],
)
def test_hostile_label_names_in_safetensors_metadata_are_refused(state, tmp_path, recorded, reason):
    path = tmp_path / "ft.safetensors"
    aliases = coat_layout(get_variant(VARIANT), num_classes=2).aliases
    write_state_dict(state, path, aliases, {"label_names": recorded})
    with pytest.raises(WeightsError, match=reason) as e:
        create_model(VARIANT, pretrained=path)
    assert f"{path} (metadata)" in str(e.value)


def test_a_config_without_label_names_is_not_a_problem(weights):
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "CoaT", "num_classes": 2}))
    assert create_model(VARIANT, pretrained=weights).label_names is None


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "huge"])
def test_a_hostile_class_map_is_refused(weights, tmp_path, kind, capsys):
    data = tmp_path / "val" / "cat"
    data.mkdir(parents=True)
    class_map = tmp_path / "classes.txt"
    if kind == "/dev/zero":
        class_map = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(class_map)
    else:
        with open(class_map, "wb") as f:
            f.truncate(1 << 30)
    start = time.perf_counter()
    args = [data.parent, "--class-map", class_map, "--variant", VARIANT, "--weights", weights, "--quiet"]
    assert evaluate_main([str(a) for a in args]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert err.startswith(f"error: {class_map}: ") and len(err.strip().splitlines()) == 1
