"""The weights cache keeps the project's cache root private under a permissive umask, so that the
compiled kernels, which refuse a root their group can write, still load after a download."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from converter.manifest import ListedFile, Manifest, Source

from .conftest import run_python

# In a fresh process with umask 002: download by name from a folder location, then report the
# cache root's mode and whether the kernels would accept their folder below it.
DOWNLOAD_UNDER_UMASK_002 = (
    "import os, sys\n"
    "os.umask(0o002)\n"
    "from paddle_model import cache, hub, kernels\n"
    "path = hub.fetch('coat_lite_tiny', sys.argv[1], progress=False)\n"
    "root = cache.cache_root()\n"
    "print(oct(os.stat(root).st_mode & 0o777), oct(os.stat(path.parent).st_mode & 0o777))\n"
    "print(cache.private_folder(root, kernels._cache_root() / 'probe'))\n"
)


def _location(folder: Path) -> Path:
    """A folder location holding a coat_lite_tiny release (a manifest and a small weights file)."""
    release = folder / "coat_lite_tiny"
    release.mkdir(parents=True)
    data = b"weights bytes of the test"
    (release / "coat_lite_tiny.safetensors").write_bytes(data)
    manifest = Manifest(
        variant="coat_lite_tiny",
        files={"coat_lite_tiny.safetensors": ListedFile(hashlib.sha256(data).hexdigest(), len(data))},
        source=Source(file="coat_lite_tiny.pth", sha256="0" * 64, official=False, official_match=None),
        params=1,
        parity={},
        preprocessing={},
        input_size=(3, 224, 224),
        accuracy={},
        license="apache-2.0",
        versions={},
    )
    (release / "manifest.json").write_bytes(manifest.to_json())
    return folder


def test_a_download_under_umask_002_leaves_the_kernel_cache_usable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COAT_PADDLE_", "HF_HUB"))}
    env["COAT_PADDLE_CACHE"] = str(tmp_path / "fresh" / "cache")
    result = run_python("-c", DOWNLOAD_UNDER_UMASK_002, _location(tmp_path / "location"), env=env)
    assert result.returncode == 0, result.stderr
    modes, problem = result.stdout.split("\n")[:2]
    assert modes == "0o700 0o700"
    assert problem == "None"  # the kernels' own check of their folder passes
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) & 0o020  # the umask did apply above the root
