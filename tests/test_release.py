"""Publishing: the release pipeline, hub loading, inference export, predict, and the way back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import paddle
import pytest
import timm
import torch
from PIL import Image

import paddle_model
from paddle_model import export as export_module
from paddle_model.classes import imagenet_classes
from paddle_model.variants import get_variant
from reference import release as release_module
from reference.checkpoints import seeded_model
from reference.parity import verify_conversion

from .conftest import RELEASED_VARIANTS as VARIANTS_UNDER_TEST
from .conftest import ROOT, assert_refused, run_cli, run_module, run_python, sample_image_paths


def test_release_writes_weights_manifest_and_card_per_variant(released):
    _, [(out, stdout), _] = released
    assert sorted(p.name for p in out.iterdir()) == sorted(VARIANTS_UNDER_TEST)
    for name in VARIANTS_UNDER_TEST:
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["README.md", "config.json", "manifest.json", f"{name}.pdparams", f"{name}.safetensors"]
        )
        assert f"{name}_seeded.pth" in stdout and "released" in stdout
        card = (folder / "README.md").read_text()
        assert f'create_model("{name}", pretrained="{name}.pdparams")' in card
        assert "Apache-2.0" in card


def test_manifest_hashes_and_contents(released):
    src, [(out, _), _] = released
    for name in VARIANTS_UNDER_TEST:
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert set(manifest["files"]) == {p.name for p in (out / name).iterdir()} - {"manifest.json"}
        for file, digest in manifest["files"].items():
            assert hashlib.sha256((out / name / file).read_bytes()).hexdigest() == digest
        source = src / manifest["source"]["file"]
        assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert manifest["source"]["official"] is False and manifest["source"]["official_match"] is None
        v = paddle_model.get_variant(name)
        assert (manifest["accuracy"]["top1"], manifest["accuracy"]["top5"]) == (v.top1, v.top5)
        assert manifest["params"] == sum(p.numel() for p in timm.create_model(name).parameters())
        assert manifest["parity"]["ok"] and manifest["preprocessing"]["resize"] == 248
        assert set(manifest["versions"]) >= {"paddlepaddle", "torch", "timm", "numpy"}


def test_two_releases_give_byte_identical_folders(released):
    _, [(out1, _), (out2, _)] = released
    for name in VARIANTS_UNDER_TEST:
        files = sorted(p.name for p in (out1 / name).iterdir())
        assert files == sorted(p.name for p in (out2 / name).iterdir()) and len(files) == 5
        for file in files:  # weights, config, card and manifest
            assert (out1 / name / file).read_bytes() == (out2 / name / file).read_bytes(), file


def test_release_folders_are_hub_ready(released):
    """config.json agrees with timm's pretrained config; the card's front matter is what
    huggingface_hub reads back. The seeded sources are not official: no base_model, and without
    --eval-results no model-index."""
    from huggingface_hub import ModelCard

    _, [(out, _), _] = released
    for name in VARIANTS_UNDER_TEST:
        config = json.loads((out / name / "config.json").read_text())
        cfg = timm.create_model(name).pretrained_cfg
        assert config["variant"] == name and config["architecture"] == "CoaT"
        assert config["num_classes"] == cfg["num_classes"] == 1000
        assert tuple(config["input_size"]) == tuple(cfg["input_size"])
        assert (config["crop_pct"], config["interpolation"]) == (cfg["crop_pct"], cfg["interpolation"])
        assert config["mean"] == pytest.approx(cfg["mean"]) and config["std"] == pytest.approx(cfg["std"])
        assert config["class_names"]["dataset"] == "imagenet-1k"
        assert config["label_names"] == imagenet_classes()  # what a loader reads beside the weights
        card = ModelCard.load(out / name / "README.md")
        assert card.data.to_dict() == {
            "license": "apache-2.0",
            "library_name": "paddlepaddle",
            "tags": ["image-classification", "paddlepaddle", "coat"],
            "datasets": ["imagenet-1k"],
            "pipeline_tag": "image-classification",
        }
        assert f'create_model("{name}", pretrained="{name}.pdparams")' in card.text


def test_model_card_of_an_official_source_with_measured_results(released, tmp_path):
    """base_model is timm's Hub copy for an official source; an evaluate --result file of the
    released weights becomes the model-index, its measured numbers exactly."""
    from huggingface_hub import ModelCard

    from paddle_model import evaluate

    _, [(out, _), _] = released
    folder = out / "coat_lite_tiny"
    data = tmp_path / "val"
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
    for wnid, image in zip(wnids, sample_image_paths()):
        (data / wnid).mkdir(parents=True)
        Image.open(image).convert("RGB").save(data / wnid / "image.png")
    result_file = tmp_path / "coat_lite_tiny.json"
    assert (
        evaluate.main(
            [
                str(data),
                "--variant",
                "coat_lite_tiny",
                "--weights",
                str(folder / "coat_lite_tiny.safetensors"),
                "--result",
                str(result_file),
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    results = release_module.read_eval_results([result_file])
    measured = results["coat_lite_tiny"]
    manifest = json.loads((folder / "manifest.json").read_text())
    release_module.check_eval_result(measured, manifest["files"], paddle_model.get_variant("coat_lite_tiny"))
    manifest["source"]["official"] = True
    card = ModelCard(release_module.model_card(manifest, measured))
    cfg = timm.create_model("coat_lite_tiny").pretrained_cfg
    assert card.data.base_model == cfg["hf_hub_id"] == "timm/coat_lite_tiny.in1k"
    [entry] = card.data.to_dict()["model-index"]
    [found] = entry["results"]
    assert entry["name"] == "coat_lite_tiny" and found["dataset"]["type"] == "imagenet-1k"
    assert found["dataset"]["name"] == "ImageNet-1k validation (5 images)"
    assert [(m["name"], m["value"]) for m in found["metrics"]] == [
        ("top-1 accuracy", measured.top1),
        ("top-5 accuracy", measured.top5),
    ]
    assert "as published by the authors: top-1 77.5%" in card.text

    with pytest.raises(release_module.ConversionError, match="is not the file being released"):
        release_module.check_eval_result(
            dataclasses.replace(measured, weights=str(result_file)),
            manifest["files"],
            paddle_model.get_variant("coat_lite_tiny"),
        )
    result_file.write_text('{"variant": "coat_lite_tiny", "top1": 1.0}')
    with pytest.raises(
        release_module.ConversionError, match=r"not an evaluate --result file \(no top5, evaluated\)"
    ):
        release_module.read_eval_results([result_file])


@pytest.mark.parametrize("name", VARIANTS_UNDER_TEST)
def test_released_files_load_at_parity_through_hub_and_create_model(released, name):
    src, [(out, _), _] = released
    for suffix in (".pdparams", ".safetensors"):
        weights = out / name / f"{name}{suffix}"
        report = verify_conversion(src / f"{name}_seeded.pth", weights, name)
        assert report.ok, report.table()
        model = paddle.hub.load(str(ROOT), name, source="local", pretrained=str(weights))
        direct = paddle_model.create_model(name, pretrained=weights)
        assert all(
            np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.parameters(), direct.parameters())
        )


def test_hub_lists_all_eight_variants():
    assert sorted(paddle.hub.list(str(ROOT), source="local")) == sorted(paddle_model.VARIANTS)


def test_official_release_files_are_recognised_by_hash():
    for v in paddle_model.VARIANTS.values():
        assert release_module.official_variant(v.release_sha256 + "0" * 56) is v
    assert release_module.official_variant("0" * 64) is None


@pytest.mark.parametrize("force", [False, True])
def test_two_checkpoints_of_one_variant_are_refused_before_anything_is_written(checkpoints, tmp_path, force):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ("a_coat_lite_tiny.pth", "b_copy.pth"):
        (src / name).write_bytes(checkpoints("coat_lite_tiny").read_bytes())
    result = run_module("reference.release", src, out, "--allow-unofficial", *(["--force"] if force else []))
    assert_refused(
        result,
        "a_coat_lite_tiny.pth and b_copy.pth are all coat_lite_tiny",
        "one checkpoint per variant",
        "nothing was written",
    )
    assert result.stdout == ""
    assert not out.exists()


def test_official_provenance_says_it_rests_on_the_published_hash_prefix(checkpoints, tmp_path):
    source = checkpoints("coat_lite_tiny")
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    v = paddle_model.VARIANTS["coat_lite_tiny"]
    planned = release_module.plan_source(source, sha256, known=v)  # as if it were the official file
    entry = release_module.release_one(planned, tmp_path)
    assert entry.status is release_module.Status.RELEASED, entry.detail
    manifest = json.loads((tmp_path / "coat_lite_tiny" / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == sha256  # the full hash of what was converted
    assert manifest["source"]["official"] is True
    match = manifest["source"]["official_match"]
    assert match.startswith("the first 8 hex digits of its sha256 equal those published")
    assert v.release_sha256 in match and "the full hash is not published" in match
    assert f"official release: yes: {match}" in (tmp_path / "coat_lite_tiny" / "README.md").read_text()


def test_a_variant_failing_parity_leaves_nothing_behind(checkpoints, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.pth").write_bytes(checkpoints("coat_lite_tiny").read_bytes())
    monkeypatch.setattr(
        "paddle_model.factory.get_variant",  # a Paddle model built wrong
        lambda n: dataclasses.replace(paddle_model.VARIANTS[n], norm_eps=1e-3),
    )
    entries = release_module.release(src, tmp_path / "out", allow_unofficial=True, progress=False)
    assert [e.status for e in entries] == [release_module.Status.PARITY_FAILED]
    assert list((tmp_path / "out").iterdir()) == []
    assert release_module.main([str(src), str(tmp_path / "out"), "--allow-unofficial"]) == 1


@pytest.mark.parametrize("name", VARIANTS_UNDER_TEST)
def test_exported_model_matches_eager_at_two_sizes_and_batches(name, converted, tmp_path):
    _, weights = converted(name)
    result = run_module("paddle_model.export", name, tmp_path / "model", "--weights", weights)
    assert result.returncode == 0, result.stderr
    exported = paddle.jit.load(str(tmp_path / "model"))
    eager = paddle_model.create_model(name, pretrained=weights)
    eager.eval()
    for batch, size in [(1, 224), (3, 160), (2, (230, 200))]:
        h, w = (size, size) if isinstance(size, int) else size
        x = np.random.default_rng(batch).standard_normal((batch, 3, h, w)).astype(np.float32)
        x = paddle.to_tensor(x)
        with paddle.no_grad():
            a, b = eager(x).numpy(), exported(x).numpy()
        assert a.shape == b.shape == (batch, 1000)
        assert float(np.abs(a - b).max()) <= 1e-5 * float(np.abs(a).max())
    assert not export_module.uses_kernels(tmp_path / "model")  # portable: Paddle's ops only


@pytest.mark.parametrize("name", VARIANTS_UNDER_TEST)
def test_export_with_kernels_runs_them_in_paddle_inference(name, converted, tmp_path):
    """--kernels puts the compiled ops into the graph; create_predictor registers them and the
    predictor (oneDNN) gives the eager model's numbers."""
    _, weights = converted(name)
    result = run_module(
        "paddle_model.export", name, tmp_path / "model", "--weights", weights, "--kernels", "--size", 96
    )
    assert result.returncode == 0, result.stderr
    assert "[N, 3, 96, 96]" in result.stdout
    assert export_module.uses_kernels(tmp_path / "model")
    expected_ops = [
        "coat_factor_attn",
        "coat_conv_pos_enc",
        "coat_layer_norm",
        "coat_linear",
        "coat_linear_add",
        "coat_mlp",
        "coat_patches",
        "coat_token_patches",
        "coat_patch_linear",
    ]
    if get_variant(name).parallel_depth:  # the parallel blocks' exchange between scales
        expected_ops.append("coat_resample")
    assert sorted(export_module.kernel_ops(tmp_path / "model")) == sorted(expected_ops)  # no more, no fewer
    predictor = export_module.create_predictor(tmp_path / "model", threads=2)
    eager = paddle_model.create_model(name, pretrained=weights)
    eager.eval()
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 96, 96)).astype(np.float32)
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(x)
        predictor.run()
        got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        with paddle.no_grad():
            expected = eager(paddle.to_tensor(x)).numpy()
        assert got.shape == expected.shape == (batch, 1000)
        assert float(np.abs(got - expected).max()) <= 1e-5 * float(np.abs(expected).max())


def test_kernel_exports_say_what_they_need(converted, tmp_path):
    """Without the compiled kernels: export --kernels and loading such a model give one error
    line each, not Paddle's unknown-operator trace; --size alone is refused."""
    _, weights = converted("coat_lite_tiny")
    result = run_module("paddle_model.export", "coat_lite_tiny", tmp_path / "model", "--size", 96)
    assert result.returncode == 2 and "--size fixes the input size of a --kernels export" in result.stderr
    result = run_module(
        "paddle_model.export",
        "coat_lite_tiny",
        tmp_path / "model",
        "--weights",
        weights,
        "--kernels",
        "--size",
        64,
    )
    assert result.returncode == 0, result.stderr
    without = {**os.environ, "COAT_PADDLE_KERNELS": "0"}
    code = (
        "import sys\nfrom paddle_model.errors import CoatError\n"
        "from paddle_model.export import create_predictor\n"
        "try:\n    create_predictor(sys.argv[1])\nexcept CoatError as e:\n    print(e)\n"
    )
    done = run_python("-c", code, tmp_path / "model", env=without)
    assert "was exported with --kernels, and the compiled kernels are not available here" in done.stdout
    export = ["paddle_model.export", "coat_lite_tiny", tmp_path / "other", "--kernels"]
    done = run_python("-m", *export, env=without)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: the compiled kernels are not available")
    assert not (tmp_path / "other.json").exists()


def test_predict_prints_top5_with_names(converted):
    _, weights = converted("coat_lite_tiny")
    image = sample_image_paths()[0]
    result = run_module("paddle_model.predict", image, "--variant", "coat_lite_tiny", "--weights", weights)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 6

    from paddle_model.predict import imagenet_classes, predict

    model = paddle_model.create_model("coat_lite_tiny", pretrained=weights)
    expected = predict(model, [Image.open(image)], "coat_lite_tiny")[0]
    for line, (index, name, prob) in zip(lines[1:], expected):
        assert line.split()[2] == str(index) and line.endswith(name)
        assert f"{prob:.2%}" in line
    assert len(imagenet_classes()) == 1000 and imagenet_classes()[281] == "tabby, tabby cat"


def test_predict_refuses_a_non_image(tmp_path, checkpoints):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    result = run_module("paddle_model.predict", bad, "--variant", "coat_lite_tiny", "--weights", "x.pdparams")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "not a readable image" in result.stderr


@pytest.mark.parametrize("name", VARIANTS_UNDER_TEST)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_torch_paddle_torch_is_bit_exact(name, suffix, tmp_path):
    model = seeded_model(name)
    src = tmp_path / "timm.pth"
    torch.save(model.state_dict(), src)
    there, back = tmp_path / "w.pdparams", tmp_path / f"back{suffix}"
    assert run_cli(src, there).returncode == 0
    result = run_cli(there, back, "--to", "torch")
    assert result.returncode == 0, result.stderr
    if suffix == ".pth":
        state = torch.load(back, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(back)
    original = model.state_dict()
    fresh = timm.create_model(name)
    if suffix == ".pth":
        fresh.load_state_dict(state, strict=True)
    else:
        from safetensors.torch import load_model

        load_model(fresh, str(back), strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value.view(torch.int32), original[key].view(torch.int32)), key


def test_round_trip_keeps_bfloat16_bits(tmp_path):
    model = seeded_model("coat_lite_tiny").to(torch.bfloat16)
    src, there, back = tmp_path / "bf16.pth", tmp_path / "w.safetensors", tmp_path / "back.pth"
    torch.save(model.state_dict(), src)
    assert run_cli(src, there).returncode == 0
    assert run_cli(there, back).returncode == 0
    state = torch.load(back, weights_only=True)
    for key, value in model.state_dict().items():
        assert state[key].dtype == torch.bfloat16
        assert torch.equal(state[key].view(torch.int16), value.view(torch.int16)), key
