"""Weights by name: a release folder served over HTTP on 127.0.0.1 is a weights location.

``create_model(v, pretrained=True)`` downloads at parity with timm, loads from the cache with the
server gone, refuses tampered bytes (served or cached) and an unreachable server without
hanging; ``hf-hub:`` goes through huggingface_hub against a local server speaking the two
requests ``hf_hub_download`` makes (HEAD and GET of ``/<repo>/resolve/<revision>/<file>``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
from PIL import Image

import paddle_model
from converter.manifest import SCHEMA_VERSION, Manifest
from paddle_model import hub
from paddle_model.errors import WeightsError
from reference.parity import seeded_input
from reference.timm_model import timm_from_checkpoint

from .conftest import RELEASED_VARIANTS, ROOT, run_python, sample_image_paths
from .hub_server import HubFiles, serve_http

LOCATION_VARS = (hub.LOCATION_ENV, hub.OFFLINE_ENV, hub.TIMEOUT_ENV, "HF_HUB_OFFLINE", "HF_ENDPOINT")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path, handler=None):
    """A static HTTP server for ``folder`` on 127.0.0.1 in a thread: yields its base URL."""
    with serve_http(handler or functools.partial(_Quiet, directory=str(folder))) as url:
        yield url


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No location or offline variables from the caller; a fresh cache of this test's own."""
    for name in LOCATION_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COAT_PADDLE_CACHE", str(tmp_path / "cache"))
    return monkeypatch


def leftovers(root: Path) -> list[str]:
    """Temporary files a download left behind (none may stay)."""
    return sorted(p.name for p in root.rglob("*.part")) if root.exists() else []


def params(model) -> list[np.ndarray]:
    return [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("name", RELEASED_VARIANTS)
def test_pretrained_true_downloads_at_parity_with_timm_then_loads_with_the_server_gone(released, env, name):
    src, [(out, _), _] = released
    with serve(out) as url:
        env.setenv(hub.LOCATION_ENV, url)
        model = paddle_model.create_model(name, pretrained=True)
    model.eval()
    reference = timm_from_checkpoint(src / f"{name}_seeded.pth", name)
    x = seeded_input(2, paddle_model.get_variant(name).img_size)
    with paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - expected).max()) <= 1e-5 * float(np.abs(expected).max())

    cached = sorted(hub.cache_root().rglob(f"{name}.*"))
    manifest = json.loads((out / name / "manifest.json").read_text())
    assert [p.name for p in cached] == [f"{name}.safetensors"]
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest() == manifest["files"][f"{name}.safetensors"]
    assert leftovers(hub.cache_root()) == []

    # the server is stopped: the cached copy serves, checked again against the cached manifest
    again = paddle_model.create_model(name, pretrained=True)
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(again)))
    env.setenv(hub.OFFLINE_ENV, "1")
    offline = paddle_model.create_model(name, pretrained=True)
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(offline)))


def test_predict_with_weights_pretrained_from_a_warm_cache_in_a_fresh_process(released, tmp_path, converted):
    """As a user runs it: a fresh process, the location's server gone, only the cache."""
    _, [(out, _), _] = released
    cache = tmp_path / "cache"
    image = sample_image_paths()[0]
    base = {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}

    def predict_in_fresh_process(env: dict) -> subprocess.CompletedProcess:
        args = ["paddle_model.predict", image, "--variant", "coat_lite_tiny", "--weights", "pretrained"]
        return run_python("-m", *args, env=env)

    with serve(out) as url:
        env = {**base, "COAT_PADDLE_CACHE": str(cache), hub.LOCATION_ENV: url}
        first = predict_in_fresh_process(env)
    assert first.returncode == 0, first.stderr
    second = predict_in_fresh_process(env)  # the server is gone: from the cache
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout and len(first.stdout.splitlines()) == 6

    from paddle_model.predict import predict

    _, weights = converted("coat_lite_tiny")  # the same seeded checkpoint, converted by the CLI
    expected = predict(
        paddle_model.create_model("coat_lite_tiny", pretrained=weights), [Image.open(image)], "coat_lite_tiny"
    )[0]
    for line, (index, _, prob) in zip(first.stdout.splitlines()[1:], expected):
        assert line.split()[2] == str(index) and f"{prob:.2%}" in line


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_download_is_refused_and_nothing_stays_in_the_cache(released, env, tmp_path):
    _, [(out, _), _] = released
    served = tmp_path / "served"
    shutil.copytree(out / "coat_lite_tiny", served / "coat_lite_tiny")
    weights = served / "coat_lite_tiny" / "coat_lite_tiny.safetensors"
    expected = json.loads((served / "coat_lite_tiny" / "manifest.json").read_text())["files"][weights.name]
    _flip_a_byte(weights)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    with serve(served) as url:
        env.setenv(hub.LOCATION_ENV, url)
        with pytest.raises(WeightsError) as error:
            paddle_model.create_model("coat_lite_tiny", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{url}/coat_lite_tiny/coat_lite_tiny.safetensors: sha256 is {actual}")
    assert f"the manifest says {expected}" in message
    assert list(hub.cache_root().rglob("coat_lite_tiny.*")) == [] and leftovers(hub.cache_root()) == []


def test_tampered_cached_file_is_refused_and_removed(released, env):
    _, [(out, _), _] = released
    with serve(out) as url:
        env.setenv(hub.LOCATION_ENV, url)
        path = hub.fetch("coat_lite_tiny", progress=False)
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        _flip_a_byte(path)
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(WeightsError) as error:
            paddle_model.create_model("coat_lite_tiny", pretrained=True)
        assert str(error.value).startswith(f"{path}: sha256 is {actual}, the manifest says {expected}")
        assert not path.exists()
        assert hub.fetch("coat_lite_tiny", progress=False) == path  # the next run downloads it anew
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def test_unreachable_location_without_cache_fails_fast_in_one_line(env):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.setenv(hub.LOCATION_ENV, f"http://127.0.0.1:{port}/released")
    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        paddle_model.create_model("coat_tiny", pretrained=True)
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "\n" not in message and not hub.cache_root().exists()  # nothing was created in the cache
    manifest_url = f"http://127.0.0.1:{port}/released/coat_tiny/manifest.json"
    assert message.startswith(f"coat_tiny: cannot reach {manifest_url}")
    assert "and the cache has no copy: download" in message and str(hub.cache_root()) in message


def test_a_server_that_never_answers_times_out(env):
    with socket.socket() as listening:  # accepts connections (the kernel's backlog), never replies
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        env.setenv(hub.LOCATION_ENV, f"http://127.0.0.1:{listening.getsockname()[1]}")
        env.setenv(hub.TIMEOUT_ENV, "1")
        start = time.perf_counter()
        with pytest.raises(WeightsError, match=r"^coat_lite_tiny: cannot reach .*timed out"):
            hub.fetch("coat_lite_tiny", progress=False)
        assert time.perf_counter() - start < 5


def test_offline_without_cache_says_what_to_download_and_where(released, env):
    """The message is enough: files placed by hand where it says load offline."""
    _, [(out, _), _] = released
    env.setenv(hub.LOCATION_ENV, "https://weights.example.org/coat")
    env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        paddle_model.create_model("coat_lite_tiny", pretrained=True)
    assert not hub.cache_root().exists()  # offline touches nothing
    message = str(error.value)
    assert message.startswith(
        "coat_lite_tiny: COAT_PADDLE_OFFLINE/HF_HUB_OFFLINE is set, and the cache has no copy: download "
        "https://weights.example.org/coat/coat_lite_tiny/manifest.json and the coat_lite_tiny.safetensors "
        f"it lists into {hub.cache_root()}/weights.example.org_coat-"
    )
    folder = Path(re.search(r" into (\S+)/, or pass", message).group(1))
    folder.mkdir(parents=True)
    for name in ("manifest.json", "coat_lite_tiny.pdparams"):  # the .pdparams will do as well
        shutil.copy(out / "coat_lite_tiny" / name, folder / name)
    model = paddle_model.create_model("coat_lite_tiny", pretrained=True)
    direct = paddle_model.create_model(
        "coat_lite_tiny", pretrained=out / "coat_lite_tiny" / "coat_lite_tiny.pdparams"
    )
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(direct)))


def test_no_location_set_says_so_in_one_line(env):
    assert hub.PUBLISHED_LOCATION is None  # nothing is published yet: the message must say so
    with pytest.raises(WeightsError) as error:
        paddle_model.create_model("coat_lite_small", pretrained=True)
    assert str(error.value).startswith(
        "coat_lite_small: no published weights location is set in this "
        "version of coat-paddle; set COAT_PADDLE_WEIGHTS_URL to a folder"
    )


def test_a_location_without_the_variant_says_so(released, env):
    _, [(out, _), _] = released
    with (
        serve(out) as url,
        pytest.raises(WeightsError, match=rf"^{url}/coat_small/manifest.json: not found \(HTTP 404\)"),
    ):
        paddle_model.create_model("coat_small", pretrained=True, weights_url=url)
    with pytest.raises(WeightsError, match=r"coat_small/manifest.json: no such file"):
        paddle_model.create_model("coat_small", pretrained=True, weights_url=out)


def test_a_folder_path_is_a_weights_location(released, env, converted):
    _, [(out, _), _] = released
    model = paddle_model.create_model("coat_lite_tiny", pretrained=True, weights_url=out)
    _, weights = converted("coat_lite_tiny")
    direct = paddle_model.create_model("coat_lite_tiny", pretrained=weights)
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(direct)))


def _hub_handler(repos: dict[str, Path]):
    """The Hub's file endpoint (:class:`tests.hub_server.HubFiles`) serving each repo's folder."""

    class Hub(HubFiles):
        def data(self) -> bytes | None:
            for repo_id, folder in repos.items():
                prefix = f"/{repo_id}/resolve/"
                if self.path.startswith(prefix):
                    _, _, name = self.path[len(prefix) :].partition("/")
                    path = folder / name
                    return path.read_bytes() if path.is_file() else None
            return None

    return Hub


HF_LOAD = (
    "import sys, numpy as np, paddle_model\n"
    "m = paddle_model.create_model(sys.argv[1], pretrained=sys.argv[2])\n"
    "np.save(sys.argv[3], np.concatenate([p.numpy().ravel() for p in m.parameters()]))\n"
)


def _load_in_fresh_process(env: dict, name: str, pretrained: str, out: Path) -> subprocess.CompletedProcess:
    return run_python("-c", HF_LOAD, name, pretrained, out, env=env)


def test_hf_hub_through_huggingface_hub_with_hf_endpoint_then_offline(released, tmp_path, converted):
    """HF_ENDPOINT points huggingface_hub at a local server holding the release folder as a repo;
    then HF_HUB_OFFLINE=1 with the server gone loads from the warm cache, and a cold cache
    offline is one line. Not tested: the real Hub's LFS/xet redirects and authentication."""
    _, [(out, _), _] = released
    base = {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}
    base["COAT_PADDLE_CACHE"] = str(tmp_path / "cache")
    repo = "coat-paddle-test/coat_lite_tiny"
    with serve(out, _hub_handler({repo: out / "coat_lite_tiny"})) as url:
        online = _load_in_fresh_process(
            {**base, "HF_ENDPOINT": url}, "coat_lite_tiny", f"hf-hub:{repo}", tmp_path / "online.npy"
        )
        assert online.returncode == 0, online.stderr
        wrong = _load_in_fresh_process(
            {**base, "HF_ENDPOINT": url}, "coat_tiny", f"hf-hub:{repo}", tmp_path / "wrong.npy"
        )
    assert wrong.returncode != 0
    assert f"hf-hub:{repo}/manifest.json: holds weights of 'coat_lite_tiny', not 'coat_tiny'" in wrong.stderr
    offline = _load_in_fresh_process(
        {**base, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "1"},
        "coat_lite_tiny",
        f"hf-hub:{repo}",
        tmp_path / "offline.npy",
    )
    assert offline.returncode == 0, offline.stderr
    _, weights = converted("coat_lite_tiny")
    by_file = _load_in_fresh_process(base, "coat_lite_tiny", str(weights), tmp_path / "file.npy")
    assert by_file.returncode == 0, by_file.stderr
    expected = np.load(tmp_path / "file.npy")
    assert np.array_equal(np.load(tmp_path / "online.npy"), expected)
    assert np.array_equal(np.load(tmp_path / "offline.npy"), expected)

    cold_env = {**base, "COAT_PADDLE_CACHE": str(tmp_path / "cold"), "HF_HUB_OFFLINE": "1"}
    cold = _load_in_fresh_process(cold_env, "coat_lite_tiny", f"hf-hub:{repo}", tmp_path / "cold.npy")
    assert cold.returncode != 0
    last = cold.stderr.strip().splitlines()[-1]
    assert f"WeightsError: hf-hub:{repo}: cannot get manifest.json" in last
    assert last.endswith("it is not in the cache: go online, or unset HF_HUB_OFFLINE")


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_the_commands_take_weights_pretrained(env, tmp_path, command):
    """--weights pretrained goes through the same resolution: without a location, one line, exit 2."""
    base = {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}
    base["COAT_PADDLE_CACHE"] = str(tmp_path / "cache")
    first = {
        "predict": [str(sample_image_paths()[0])],
        "evaluate": [str(tmp_path)],
        "export": [str(tmp_path / "model")],
    }[command]
    args = [*first, "--variant", "coat_lite_tiny"] if command != "export" else ["coat_lite_tiny", *first]
    result = run_python("-m", f"paddle_model.{command}", *args, "--weights", "pretrained", env=base)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: coat_lite_tiny: no published weights location is set")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_paddle_hub_entry_points_take_pretrained_true(released, env):
    _, [(out, _), _] = released
    with serve(out) as url:
        env.setenv(hub.LOCATION_ENV, url)
        model = paddle.hub.load(str(ROOT), "coat_lite_tiny", source="local", pretrained=True)
    direct = paddle_model.create_model("coat_lite_tiny", pretrained=True)  # from the cache now
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(direct)))


def test_the_release_writes_the_manifest_schema_the_hub_reads(released):
    """One definition: what the release wrote reads back equal, every file listed with its size."""
    _, [(out, _), _] = released
    for name in RELEASED_VARIANTS:
        raw = (out / name / "manifest.json").read_bytes()
        manifest = Manifest.from_json(raw, "manifest.json")
        assert manifest.schema_version == SCHEMA_VERSION and manifest.variant == name
        assert manifest.to_json() == raw
        on_disk = {p.name: p for p in (out / name).iterdir() if p.name != "manifest.json"}
        assert manifest.files.keys() == on_disk.keys()
        for file, listed in manifest.files.items():
            assert listed.size == on_disk[file].stat().st_size
            assert listed.sha256 == hashlib.sha256(on_disk[file].read_bytes()).hexdigest()


def test_a_version_1_manifest_without_sizes_still_serves(released, env, tmp_path, converted):
    """The manifests released before the schema had a version (no sizes) are read as they are."""
    _, [(out, _), _] = released
    served = tmp_path / "served"
    shutil.copytree(out / "coat_lite_tiny", served / "coat_lite_tiny")
    manifest = json.loads((served / "coat_lite_tiny" / "manifest.json").read_text())
    del manifest["schema_version"], manifest["sizes"]
    (served / "coat_lite_tiny" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    read = Manifest.from_json((served / "coat_lite_tiny" / "manifest.json").read_bytes(), "v1")
    assert read.schema_version == 1 and {f.size for f in read.files.values()} == {None}
    with serve(served) as url:
        model = paddle_model.create_model("coat_lite_tiny", pretrained=True, weights_url=url)
    _, weights = converted("coat_lite_tiny")
    direct = paddle_model.create_model("coat_lite_tiny", pretrained=weights)
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(direct)))
