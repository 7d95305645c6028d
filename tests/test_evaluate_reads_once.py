"""``python -m paddle_model.evaluate`` reads the weights file once: the classifier check and the
model both come from that one read (a second read costs a large file's time and memory, and could
see another file than the first)."""

from __future__ import annotations

import json

import paddle
from PIL import Image

import paddle_model
from paddle_model import factory, weights
from paddle_model.evaluate import main

from .conftest import sample_image_paths

VARIANT = "coat_lite_tiny"


def test_evaluate_reads_the_weights_file_once(tmp_path, monkeypatch, capsys):
    path = tmp_path / f"{VARIANT}.pdparams"
    paddle.seed(5)
    paddle.save(paddle_model.create_model(VARIANT).state_dict(), str(path))
    folder = tmp_path / "val" / "n02123045"  # an ImageNet wnid: label 281
    folder.mkdir(parents=True)
    Image.open(sample_image_paths()[0]).convert("RGB").resize((40, 40)).save(folder / "a.png")

    reads = []
    read = weights.read_weights

    def counted(p):
        reads.append(p)
        return read(p)

    monkeypatch.setattr(weights, "read_weights", counted)
    monkeypatch.setattr(factory, "read_weights", counted)
    code = main([str(tmp_path / "val"), "--variant", VARIANT, "--weights", str(path), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["evaluated"] == 1
    assert reads == [path]
