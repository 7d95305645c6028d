"""A kernel cache that others could have written is never loaded: its code would run in this
process. Each case runs in a fresh process (the kernels load once per process) with its own
COAT_PADDLE_CACHE, prepared from this machine's build."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import paddle
import pytest

from paddle_model import cache, kernels

from .conftest import run_python

LOAD = "import paddle_model.kernels as k; print(k.available())"
NOBODY = 65534


def _built() -> Path:
    """This machine's stamped build of the kernels in the default cache (built if missing)."""
    assert kernels.available(), "the kernels did not build"
    digest = kernels._cache_key(*kernels._flags(), paddle.__version__)
    return kernels._cache_root() / digest[:16]


@pytest.fixture
def prepared(tmp_path):
    """(cache root, build folder): a copy of this machine's build in a private temporary cache,
    which a fresh process loads as it is."""
    root = tmp_path / "cache"
    build = root / _built().relative_to(kernels.cache_root())
    shutil.copytree(_built(), build, symlinks=True)
    for folder in [root, *build.relative_to(root).parents]:
        os.chmod(root / folder, 0o700)
    return root, build


def _load(root: Path) -> tuple[str, list[str]]:
    """Load the kernels from ``root`` in a fresh process: (what available() said, the stderr
    lines that mention coat_paddle)."""
    done = run_python("-c", LOAD, env={**os.environ, "COAT_PADDLE_CACHE": str(root)}, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout.strip(), [line for line in done.stderr.splitlines() if "coat_paddle" in line]


def test_a_private_copy_of_the_build_loads(prepared):
    """The control: the prepared cache itself is trusted and loaded, without a rebuild."""
    root, _ = prepared
    assert _load(root) == ("True", [])


def test_a_group_writable_cache_folder_is_refused(prepared):
    root, build = prepared
    os.chmod(build.parent, 0o770)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1, lines
    assert f"{build.parent} can be written by its group" in lines[0] and "Paddle's own ops" in lines[0]


def test_a_world_writable_library_is_refused(prepared):
    root, build = prepared
    library = build / "coat_kernels" / "coat_kernels.so"
    os.chmod(library, os.stat(library).st_mode | stat.S_IWOTH)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1 and f"{library} can be written by others" in lines[0]


def test_a_cache_entry_owned_by_another_user_is_refused(prepared):
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it gives a cache entry to user 'nobody' (chown)")
    root, build = prepared
    os.chown(build / "coat_kernels.sha256", NOBODY, NOBODY)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1
    assert f"belongs to user id {NOBODY}, not to this user (0)" in lines[0]


def test_a_symlinked_lock_is_refused_and_its_target_left_alone(prepared, tmp_path):
    """The lock used to be opened with "w": a link planted there truncated its target."""
    root, build = prepared
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (build / "build.lock").unlink(missing_ok=True)
    (build / "build.lock").symlink_to(victim)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1 and "build.lock is a symbolic link" in lines[0]
    assert victim.read_text() == "precious"


def test_a_symlinked_library_is_refused(prepared, tmp_path):
    """A link in place of the built library (to a library elsewhere) is not loaded."""
    root, build = prepared
    library = build / "coat_kernels" / "coat_kernels.so"
    elsewhere = tmp_path / "elsewhere.so"
    shutil.copy(library, elsewhere)
    library.unlink()
    library.symlink_to(elsewhere)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1 and f"{library} is a symbolic link" in lines[0]


def test_a_symlinked_folder_in_the_cache_is_refused(prepared, tmp_path):
    root, build = prepared
    moved = tmp_path / "moved"
    build.parent.rename(moved)
    build.parent.symlink_to(moved)
    said, lines = _load(root)
    assert said == "False" and len(lines) == 1 and f"{build.parent} is a symbolic link" in lines[0]


def test_private_folder_creates_each_folder_0700_and_follows_no_link(tmp_path):
    root = tmp_path / "root"
    assert cache.private_folder(root, root / "a" / "b") is None
    assert stat.S_IMODE(os.stat(root / "a" / "b").st_mode) == 0o700
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)
    assert cache.private_folder(root, root / "link" / "c") == f"{root / 'link'} is a symbolic link"
    assert list(outside.iterdir()) == []  # nothing made through the link


def test_open_private_never_truncates_or_follows(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(OSError, match="is a symbolic link; refused"):
        cache.open_private(tmp_path / "lock")
    existing = tmp_path / "existing"
    existing.write_text("data")
    os.chmod(existing, 0o600)
    os.close(cache.open_private(existing))
    assert existing.read_text() == "data" and target.read_text() == "keep"
