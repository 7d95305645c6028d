"""A user's own classifier is kept: create_model, coat-predict and coat-export size the head from
the weights (coat-evaluate builds through create_model: tests/test_evaluate.py), classes are named
only where the names are known, and a new classifier asked for is said once."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from converter.layout import coat_layout, num_classes_in
from converter.paddle_weights import label_names_metadata
from converter.writers import write_state_dict
from paddle_model import WeightsError, create_model, get_variant
from paddle_model.classes import imagenet_classes
from paddle_model.predict import main as predict_main

from .conftest import run_module, sample_image_paths

VARIANT = "coat_lite_tiny"
CLASSES = 2


@pytest.fixture(scope="module")
def two_class(tmp_path_factory) -> dict[str, Path]:
    """A seeded 2-class model (no fine-tuning: a random head) saved as a user would: with
    paddle.save (.pdparams) and as .safetensors; and the same .safetensors naming its classes."""
    folder = tmp_path_factory.mktemp("two_class")
    paddle.seed(0)
    model = create_model(VARIANT, num_classes=CLASSES)
    paddle.save(model.state_dict(), str(folder / "ft.pdparams"))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    aliases = coat_layout(get_variant(VARIANT), num_classes=CLASSES).aliases
    write_state_dict(state, folder / "ft.safetensors", aliases, {"format": "paddle"})
    named = folder / "named"
    named.mkdir()
    metadata = {"format": "paddle", **label_names_metadata(["tabby cat", "coffee mug"])}
    write_state_dict(state, named / "ft.safetensors", aliases, metadata)
    return {
        "pdparams": folder / "ft.pdparams",
        "safetensors": folder / "ft.safetensors",
        "named": named / "ft.safetensors",
        "head": state["head.weight"],
    }


@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
def test_create_model_keeps_the_classifier_of_the_weights(two_class, fmt, caplog):
    with caplog.at_level(logging.WARNING, logger="paddle_model.factory"):
        model = create_model(VARIANT, pretrained=two_class[fmt])
    assert model.num_classes == CLASSES
    assert np.array_equal(model.head.weight.numpy(), two_class["head"])
    assert model.label_names is None  # neither ImageNet's nor recorded
    assert not [r for r in caplog.records if r.name == "paddle_model.factory"]
    model.eval()
    with paddle.no_grad():
        assert model(paddle.rand([3, 3, 64, 64])).shape == [3, CLASSES]


def test_another_num_classes_gets_a_new_head_and_one_log_line(two_class, caplog):
    with caplog.at_level(logging.WARNING, logger="paddle_model.factory"):
        model = create_model(VARIANT, pretrained=two_class["pdparams"], num_classes=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "paddle_model.factory"]
    assert len(lines) == 1
    assert lines[0].startswith("head: 2 classes in the weights, 5 asked: a new classifier")
    assert model.num_classes == 5 and model.label_names is None


def test_a_backbone_ignores_the_head(two_class, caplog):
    with caplog.at_level(logging.WARNING, logger="paddle_model.factory"):
        model = create_model(VARIANT, pretrained=two_class["pdparams"], return_interm_layers=True)
    assert model.return_interm_layers
    assert not [r for r in caplog.records if r.name == "paddle_model.factory"]


def _predict(capsys, weights, *args) -> tuple[int, str, str]:
    image = sample_image_paths()[1]
    code = predict_main([str(image), "--variant", VARIANT, "--weights", str(weights), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _ranked(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def test_predict_prints_class_indices_without_imagenet_names(two_class, capsys):
    code, out, err = _predict(capsys, two_class["pdparams"])  # --top 5 by default: capped at 2
    assert code == 0, err
    ranked = _ranked(out)
    assert len(ranked) == CLASSES
    assert sorted(line.split()[-1] for line in ranked) == ["0", "1"]  # the index ends the line
    names = set(imagenet_classes())
    assert not [line for line in ranked if any(word in names for word in line.split())]
    probabilities = [float(line.split()[1].rstrip("%")) for line in ranked]
    assert abs(sum(probabilities) - 100) < 0.02


def test_predict_prints_the_names_recorded_in_the_safetensors(two_class, capsys):
    code, out, err = _predict(capsys, two_class["named"])
    assert code == 0, err
    ranked = _ranked(out)
    assert {line.split("  ")[-1].strip() for line in ranked} == {"tabby cat", "coffee mug"}


def test_names_in_a_config_json_beside_the_weights(two_class, tmp_path):
    weights = tmp_path / "ft.pdparams"
    shutil.copy(two_class["pdparams"], weights)
    (tmp_path / "config.json").write_text(json.dumps({"num_classes": 2, "label_names": ["no", "yes"]}))
    assert create_model(VARIANT, pretrained=weights).label_names == ["no", "yes"]


@pytest.mark.parametrize(
    "names, reason",
    [
        (["only one"], "1 label_names for a classifier of 2 classes"),
        ({"a": 0}, "must be a list of strings"),
        (["ok", "bad\x1b[2J"], "printable"),
    ],
)
def test_label_names_that_do_not_fit_are_refused(two_class, tmp_path, names, reason):
    weights = tmp_path / "ft.pdparams"
    shutil.copy(two_class["pdparams"], weights)
    (tmp_path / "config.json").write_text(json.dumps({"label_names": names}))
    with pytest.raises(WeightsError, match=reason) as e:
        create_model(VARIANT, pretrained=weights)
    assert str(tmp_path / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_a_1000_class_head_is_named_by_imagenet(tmp_path):
    paddle.seed(1)
    weights = tmp_path / "in1k.pdparams"
    paddle.save(create_model(VARIANT).state_dict(), str(weights))
    model = create_model(VARIANT, pretrained=weights)
    assert model.num_classes == 1000 and model.label_names == imagenet_classes()


@pytest.mark.parametrize("top", ["0", "-1"])
def test_predict_refuses_a_top_below_one(two_class, capsys, top):
    with pytest.raises(SystemExit) as e:
        _predict(capsys, two_class["pdparams"], "--top", top)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --top {top}: give at least 1") and "\n" not in err


def test_export_writes_the_weights_classes(two_class, tmp_path):
    prefix = tmp_path / "deploy" / "ft"
    prefix.parent.mkdir()
    done = run_module("paddle_model.export", VARIANT, prefix, "--weights", two_class["safetensors"])
    assert done.returncode == 0, done.stderr[-3000:]
    layer = paddle.jit.load(str(prefix))
    layer.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits = layer(paddle.to_tensor(x)).numpy()
    assert logits.shape == (2, CLASSES)
    eager = create_model(VARIANT, pretrained=two_class["safetensors"])
    eager.eval()
    with paddle.no_grad():
        expected = eager(paddle.to_tensor(x)).numpy()
    # the exported graph runs Paddle's ops, the eager model the compiled kernels: export's 1e-5
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()


def test_num_classes_is_read_from_either_layout():
    paddle_shapes = {"head.weight": (320, 7)}
    torch_shapes = {"head.weight": (7, 320)}
    assert num_classes_in(paddle_shapes) == 7 == num_classes_in(torch_shapes, torch_layout=True)
    assert num_classes_in({"norm4.weight": (320,)}) == 0
