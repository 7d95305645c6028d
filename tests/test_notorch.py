"""The installed wheel, beside the oldest supported Paddle and without torch: run by ``make test``.

``make test`` builds the project's wheel, installs it into a virtual environment that already
has Paddle (as a GPU user's has paddlepaddle-gpu) and runs these tests from another directory,
so that the package, its data (the kernels' C++ source, the class names) and its commands are
those of the wheel, not of the checkout. The checkpoints and timm's logits come from the full
environment (``$COAT_NOTORCH_DIR``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import converter
import paddle_model
import reference
from paddle_model import kernels
from reference.parity import compare, run_paddle, seeded_input

pytestmark = pytest.mark.notorch
COMMANDS = ("coat-convert", "coat-release", "coat-evaluate", "coat-predict", "coat-export")


@pytest.fixture(scope="module")
def fixtures() -> Path:
    folder = os.environ.get("COAT_NOTORCH_DIR")
    assert folder, "COAT_NOTORCH_DIR is not set: run these tests through `make test`"
    return Path(folder)


def command(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run an installed command (from this environment's bin/) as a user would."""
    exe = Path(sys.executable).parent / name
    assert exe.is_file(), f"{name} is not installed in {exe.parent}"
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def weights(fixtures, tmp_path_factory) -> Path:
    """coat_lite_tiny converted by the installed coat-convert."""
    out = tmp_path_factory.mktemp("weights")
    done = command("coat-convert", fixtures / "coat_lite_tiny.pth", "coat_lite_tiny.pdparams", cwd=out)
    assert done.returncode == 0, done.stderr
    return out / "coat_lite_tiny.pdparams"


def test_torch_is_not_installed():
    assert importlib.util.find_spec("torch") is None


def test_the_package_is_the_installed_wheel_beside_the_users_paddle():
    site = Path(sysconfig.get_paths()["purelib"]).resolve()  # the venv may sit inside ROOT
    for package in (paddle_model, converter, reference):
        assert Path(package.__file__).resolve().parents[1] == site, package.__file__
    assert metadata.version("paddlepaddle") == os.environ["COAT_EXPECT_PADDLE"]
    paddle_requirements = [r for r in metadata.requires("coat-paddle") if r.startswith("paddlepaddle")]
    assert paddle_requirements and all("extra ==" in r for r in paddle_requirements), paddle_requirements


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_on_path_with_help_and_version(tmp_path, name):
    helped = command(name, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: ")
    version = command(name, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().endswith(f" {metadata.version('coat-paddle')}")


@pytest.mark.parametrize(
    "variant, source", [("coat_lite_tiny", "coat_lite_tiny.pth"), ("coat_tiny", "coat_tiny.safetensors")]
)
def test_converts_without_torch_at_parity_with_the_compiled_kernels(fixtures, tmp_path, variant, source):
    dst = tmp_path / f"{variant}.pdparams"
    result = command("coat-convert", fixtures / source, dst, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"variant      {variant} " in result.stdout
    model = paddle_model.create_model(variant, pretrained=dst)
    expected = np.load(fixtures / f"{variant}.logits.npy")
    x = seeded_input(2, paddle_model.get_variant(variant).img_size, seed=0)
    parity = compare("logits", expected, run_paddle(model, x)[0], top1=True)
    assert parity.ok, parity.line()
    assert kernels.has_op("coat_linear"), "the kernels did not build from the installed source"


def test_verify_without_torch_is_refused_before_writing(fixtures, tmp_path):
    dst = tmp_path / "out.pdparams"
    result = command("coat-convert", fixtures / "coat_lite_tiny.pth", dst, "--verify", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --verify needs torch and timm")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not dst.exists()


def test_predict_names_the_classes_and_export_writes_a_model_that_loads(weights, tmp_path):
    import paddle
    from PIL import Image

    from paddle_model.predict import imagenet_classes

    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    predicted = command(
        "coat-predict", image, "--variant", "coat_lite_tiny", "--weights", weights, cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    classes = imagenet_classes()
    assert len(classes) == 1000
    named = [line for line in predicted.stdout.splitlines() if any(c in line for c in classes)]
    assert len(named) >= 5, predicted.stdout
    exported = command("coat-export", "coat_lite_tiny", "deploy", "--weights", weights, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    graph = paddle.jit.load(str(tmp_path / "deploy"))
    x = seeded_input(1, 224, seed=1)
    model = paddle_model.create_model("coat_lite_tiny", pretrained=weights)
    parity = compare("logits", run_paddle(model, x)[0], graph(paddle.to_tensor(x)).numpy())
    assert parity.ok, parity.line()


def test_evaluate_runs_without_torch(weights, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, folder in enumerate(["n01440764", "n01443537"]):  # ImageNet wnids: the model has 1000 classes
        (tmp_path / "val" / folder).mkdir(parents=True)
        for j in range(2):
            pixels = rng.integers(0, 256, (60 + 10 * j, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / folder / f"{k}{j}.png")
    args = ["val", "--variant", "coat_lite_tiny", "--weights", weights, "--workers", "0", "--quiet", "--json"]
    done = command("coat-evaluate", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"evaluated": 4' in done.stdout
    refused = command("coat-evaluate", *args, "--reference", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --reference runs timm beside the Paddle model")
    assert "python -m reference.evaluate" in refused.stderr


def test_release_without_torch_says_what_to_install_and_writes_nothing(fixtures, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "coat_lite_tiny.pth").symlink_to(fixtures / "coat_lite_tiny.pth")
    done = command("coat-release", "src", "out", "--allow-unofficial", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: the release needs torch, torchvision, timm")  # and maybe more
    wanted = "(not installed) for the parity check and the model card: pip install torch==2.14.1 "
    assert wanted in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", COMMANDS)
def test_the_commands_without_paddle_say_in_one_line_what_to_install(tmp_path, name):
    """The installed console script as pip wrote it, in a process where Paddle cannot be
    found (``sys.modules['paddle'] = None``): coat-convert needs none and coat-release's --help
    none (its run without Paddle is one line: tests/test_hostile_release.py); the others stop
    with one line, no import traceback."""
    exe = Path(sys.executable).parent / name
    hide_paddle = (
        "import sys; sys.modules['paddle'] = None; sys.argv = [sys.argv[1], '--help']; "
        "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_paddle, str(exe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    if name in ("coat-convert", "coat-release"):  # the release needs Paddle only once it runs
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: ")
        return
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: paddle_model needs PaddlePaddle >= 3.0, which is not installed: "
        "pip install 'paddlepaddle>=3.0' for the CPU build"
    ), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
