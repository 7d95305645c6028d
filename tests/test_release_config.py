"""A release's config.json names its classes under ``label_names``, the key a loader reads beside
the weights file (:func:`converter.paddle_weights.read_label_names`, as coat-train writes it)."""

from __future__ import annotations

import json

import numpy as np

from converter.paddle_weights import read_label_names
from converter.variants import VARIANTS
from paddle_model.classes import imagenet_classes
from reference.release import hub_config


def _config_beside_weights(tmp_path, num_classes: int):
    """config.json as the release writes it for a ``num_classes`` head, beside a weights file."""
    state = {"head.weight": np.zeros((8, num_classes), np.float32)}  # Paddle's [in, out]
    config = hub_config(VARIANTS["coat_lite_tiny"], state)
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config, tmp_path / "coat_lite_tiny.pdparams"


def test_a_1000_class_release_config_gives_a_loader_imagenets_names(tmp_path):
    config, weights = _config_beside_weights(tmp_path, 1000)
    assert config["class_names"]["dataset"] == "imagenet-1k"  # the Hub card's key is kept
    assert read_label_names(weights, 1000) == imagenet_classes()
    assert read_label_names(weights, 1000)[281] == "tabby, tabby cat"


def test_a_release_of_another_head_size_names_no_classes(tmp_path):
    config, weights = _config_beside_weights(tmp_path, 10)
    assert "label_names" not in config and config["class_names"] is None
    assert read_label_names(weights, 10) is None
