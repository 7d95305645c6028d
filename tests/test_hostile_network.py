"""Hostile servers and planted cache entries against the weights download (issue 24, class 5).

Each server is a raw socket server on 127.0.0.1 in a thread, so that it can send what no HTTP
server library would: a trickle, an endless body, a reply that is not HTTP, a chunked body cut
short, a bad ``Content-Length``, a 70 kB header line, manifests nested deep or with a 6000-digit
number. Each case must end in one :class:`WeightsError` line within a bound, with nothing of the
transfer left in the cache. The release served is a small fake one: a manifest written by
:class:`converter.manifest.Manifest` and a few kB of seeded bytes as the weights (the hub checks
sizes and hashes; it does not load the file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from converter.manifest import ListedFile, Manifest, Source
from paddle_model import hub
from paddle_model.errors import WeightsError

from .conftest import run_python
from .hub_server import HubFiles, serve_http

VARIANT = "coat_lite_tiny"
WEIGHTS = f"{VARIANT}.safetensors"
ENV_VARS = (hub.LOCATION_ENV, hub.OFFLINE_ENV, hub.TIMEOUT_ENV, "HF_HUB_OFFLINE", "HF_ENDPOINT")


def fake_release(size: int = 4096) -> tuple[bytes, bytes]:
    """(manifest.json bytes, weights bytes) of a fake release of VARIANT, ``size`` seeded bytes."""
    weights = random.Random(size).randbytes(size)
    manifest = Manifest(
        variant=VARIANT,
        files={WEIGHTS: ListedFile(hashlib.sha256(weights).hexdigest(), size)},
        source=Source(file="seeded.pth", sha256="0" * 64, official=False, official_match=None),
        params=1,
        parity={"ok": True},
        preprocessing={},
        input_size=(3, 224, 224),
        accuracy={},
        license="Apache-2.0",
        versions={},
    )
    return manifest.to_json(), weights


def reply(body: bytes, headers: bytes | None = None) -> bytes:
    """A whole HTTP/1.1 200 reply; ``headers`` replaces the Content-Length line."""
    if headers is None:
        headers = b"Content-Length: %d\r\n" % len(body)
    return b"HTTP/1.1 200 OK\r\n" + headers + b"Connection: close\r\n\r\n" + body


Respond = Callable[[str, socket.socket, threading.Event], None]


@contextlib.contextmanager
def raw_server(respond: Respond) -> Iterator[str]:
    """A raw TCP server on 127.0.0.1: reads each request's head and calls
    ``respond(path, connection, stopping)``; yields the base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stopping = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                respond(head.split(b" ")[1].decode(), conn, stopping)
            except OSError:  # the client hung up: what the hostile cases expect
                pass

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join()
        listener.close()


def release_server(manifest: bytes, weights: bytes, hostile: Respond | None = None, on: str = WEIGHTS):
    """Serves the fake release; the request for ``on`` gets ``hostile`` instead."""

    def respond(path: str, conn: socket.socket, stopping: threading.Event) -> None:
        name = path.rsplit("/", 1)[-1]
        if hostile is not None and name == on:
            hostile(path, conn, stopping)
        elif name == "manifest.json":
            conn.sendall(reply(manifest))
        elif name == WEIGHTS:
            conn.sendall(reply(weights))
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return raw_server(respond)


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COAT_PADDLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.TIMEOUT_ENV, "1")
    return monkeypatch


def litter(root: Path) -> list[str]:
    """Files a transfer may leave in the cache: temporary ones (hidden) and the weights."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".") or p.name == WEIGHTS)


def refused(base: str, bound: float, **kwargs) -> str:
    """fetch's one-line WeightsError from ``base``, raised within ``bound`` seconds."""
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        hub.fetch(VARIANT, base, progress=False, **kwargs)
    assert time.monotonic() - start < bound
    message = str(error.value)
    assert "\n" not in message
    return message


# Time: the whole transfer has a deadline, not each read.


def trickle(data: bytes, head: int) -> Respond:
    """Sends ``data[:head]`` at once, then the rest a byte every 0.2 s (each read succeeds)."""

    def respond(path, conn, stopping) -> None:
        conn.sendall(data[:head])
        for i in range(head, len(data)):
            if stopping.wait(0.2):
                return
            conn.sendall(data[i : i + 1])

    return respond


@pytest.mark.parametrize("where", ["headers", "manifest body"])
def test_a_trickled_manifest_times_out_as_a_whole(env, where):
    manifest, weights = fake_release()
    data = reply(manifest)
    head = 10 if where == "headers" else len(data) - len(manifest) + 5
    with release_server(manifest, weights, trickle(data, head), on="manifest.json") as url:
        message = refused(url, bound=4)
    assert message.startswith(f"{VARIANT}: cannot reach {url}/{VARIANT}/manifest.json (timed out: ")
    assert "not complete within 1 s; raise COAT_PADDLE_TIMEOUT on a slow link" in message
    assert litter(hub.cache_root()) == []


def test_trickled_weights_time_out_as_a_whole_and_nothing_is_kept(env):
    manifest, weights = fake_release()
    data = reply(weights)
    with release_server(manifest, weights, trickle(data, len(data) - len(weights) + 5)) as url:
        message = refused(url, bound=4)
    assert message.startswith(f"{url}/{VARIANT}/{WEIGHTS}: timed out: not complete within 1 s; raise")
    assert message.endswith("nothing was kept, run again")
    assert litter(hub.cache_root()) == []


# Bytes: the weights stop at the size the manifest lists, a manifest at 1 MiB.


def endless(headers: bytes) -> Respond:
    def respond(path, conn, stopping) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n")
        block = b"\0" * 65536
        while not stopping.is_set():
            conn.sendall(block)

    return respond


def test_an_endless_body_stops_at_the_listed_size(env):
    manifest, weights = fake_release()
    with release_server(manifest, weights, endless(b"Connection: close\r\n")) as url:
        message = refused(url, bound=5)
    assert message == (
        f"{url}/{VARIANT}/{WEIGHTS}: the server sent more than the 4096 bytes its manifest lists; "
        "nothing was kept"
    )
    assert litter(hub.cache_root()) == []


def test_a_body_announced_larger_than_listed_is_refused_before_it_is_read(env):
    manifest, weights = fake_release()
    with release_server(manifest, weights, endless(b"Content-Length: 4000000000\r\n")) as url:
        message = refused(url, bound=5)
    assert message == (
        f"{url}/{VARIANT}/{WEIGHTS}: the server announces 4000000000 bytes, more than the 4096 bytes "
        "its manifest lists"
    )
    assert litter(hub.cache_root()) == []


def test_an_endless_manifest_stops_at_one_mib(env):
    manifest, weights = fake_release()
    with release_server(manifest, weights, endless(b"Connection: close\r\n"), on="manifest.json") as url:
        message = refused(url, bound=5)
    assert message == (
        f"{url}/{VARIANT}/manifest.json: the server sent more than the 1024 kB a manifest may have; "
        "nothing was kept"
    )
    assert litter(hub.cache_root()) == []


# Malformed HTTP.


def sends(data: bytes) -> Respond:
    def respond(path, conn, stopping) -> None:
        conn.sendall(data)

    return respond


@pytest.mark.parametrize(
    "case, data, why",
    [
        ("not HTTP", b"SSH-2.0-OpenSSH_9.6\r\n", "BadStatusLine"),
        ("70 kB header line", b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n", "LineTooLong"),
        ("no reply", b"", "RemoteDisconnected"),
    ],
)
def test_a_reply_that_is_not_http_is_one_line(env, case, data, why):
    manifest, weights = fake_release()
    with release_server(manifest, weights, sends(data), on="manifest.json") as url:
        message = refused(url, bound=5)
    assert message.startswith(f"{url}/{VARIANT}/manifest.json: the server's reply is not valid HTTP ({why}")
    assert message.endswith("check the location")
    assert litter(hub.cache_root()) == []


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_weights_cut_short_say_so_rather_than_blame_the_publisher(env, framing):
    manifest, weights = fake_release()
    if framing == "chunked":
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + weights[:1000]
    else:
        data = reply(weights)[: -len(weights) + 1000]
    with release_server(manifest, weights, sends(data)) as url:
        message = refused(url, bound=5)
    assert message.startswith(f"{url}/{VARIANT}/{WEIGHTS}: the transfer was cut short after ")
    assert message.endswith("nothing was kept, run again") and "publisher" not in message
    assert litter(hub.cache_root()) == []


def test_a_body_without_a_length_cut_short_is_not_blamed_on_the_publisher(env):
    manifest, weights = fake_release()
    data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + weights[:1000]
    with release_server(manifest, weights, sends(data)) as url:
        message = refused(url, bound=5)
    assert message == (
        f"{url}/{VARIANT}/{WEIGHTS}: the transfer was cut short after 1000 of 4096 bytes; "
        "nothing was kept, run again"
    )


def test_a_malformed_content_length_is_ignored_and_the_listed_size_and_sha256_decide(env):
    """http.client reads a body with ``Content-Length: 12abc`` to the end of the connection."""
    manifest, weights = fake_release()
    with release_server(manifest, weights, sends(reply(weights, b"Content-Length: 12abc\r\n"))) as url:
        path = hub.fetch(VARIANT, url, progress=False)
    assert path.read_bytes() == weights
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


# Malformed manifests.


@pytest.mark.parametrize(
    "body, why",
    [
        (b"[" * 100_000, "nested too deep"),
        (b"[" * 500 + b"]" * 500, "nested more than 16 deep"),
        (b'{"schema_version": 2, "params": ' + b"7" * 6000 + b"}", "a number of 6000 characters"),
        (b'{"schema_version": 2, "params": NaN}', "NaN (JSON has no such number)"),
        (b'{"schema_version": 9}', "schema_version 9; this coat-paddle reads versions 1, 2: upgrade"),
        (b"\xff\xfe", "invalid JSON"),
    ],
)
def test_a_malformed_manifest_is_one_line(env, body, why):
    manifest, weights = fake_release()
    with release_server(manifest, weights, sends(reply(body)), on="manifest.json") as url:
        message = refused(url, bound=5)
    assert message.startswith(f"{url}/{VARIANT}/manifest.json: not a readable release manifest ({why}")
    assert litter(hub.cache_root()) == []


def test_a_fifo_manifest_in_a_folder_location_is_refused_without_blocking(env, tmp_path):
    folder = tmp_path / "location" / VARIANT
    folder.mkdir(parents=True)
    os.mkfifo(folder / "manifest.json")
    message = refused(str(tmp_path / "location"), bound=3)
    assert message.startswith(f"{folder / 'manifest.json'}: is not a regular file (a pipe, a device")


def test_an_oversized_manifest_in_a_folder_location_is_refused_unread(env, tmp_path):
    folder = tmp_path / "location" / VARIANT
    folder.mkdir(parents=True)
    with open(folder / "manifest.json", "wb") as f:
        f.truncate(8 << 30)  # sparse: reading it would take 8 GiB of memory
    message = refused(str(tmp_path / "location"), bound=3)
    assert message == f"{folder / 'manifest.json'}: {8 << 30} bytes, more than the 1048576 allowed for it"


def _fields(**change) -> bytes:
    manifest = json.loads(fake_release()[0])
    for key, value in change.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    return json.dumps(manifest).encode()


@pytest.mark.parametrize(
    "change, why",
    [
        ({"sizes": {}}, "'sizes' is not a size for each file of 'files'"),
        ({"sizes": {WEIGHTS: -1}}, f"'sizes.{WEIGHTS}' is not a whole number in 1..4294967296"),
        ({"sizes": {WEIGHTS: True}}, f"'sizes.{WEIGHTS}' is not a whole number"),
        ({"files": {WEIGHTS: "ab"}}, f"'files.{WEIGHTS}' is not a sha256"),
        ({"files": {"../x": "0" * 64}, "sizes": {"../x": 1}}, "'files.../x' is not a plain file name"),
        ({"variant": ["coat_tiny"]}, "'variant' is not a variant name"),
        ({"input_size": [3, 224]}, "'input_size' is not a list of 3 sizes"),
        ({"source": None}, "'source' is not an object"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_or_range_is_named(change, why):
    with pytest.raises(WeightsError) as error:
        Manifest.from_json(_fields(**change), "m.json")
    assert str(error.value).startswith(f"m.json: not a readable release manifest ({why}")


def test_a_manifest_reads_back_equal_to_what_was_written():
    raw = fake_release()[0]
    manifest = Manifest.from_json(raw, "m.json")
    assert manifest.to_json() == raw and manifest.files[WEIGHTS].size == 4096


# Planted cache entries.


@pytest.fixture
def cached(env):
    """A warm cache of the fake release, served from a server still running: (base URL, path)."""
    manifest, weights = fake_release()
    with release_server(manifest, weights) as url:
        yield url, hub.fetch(VARIANT, url, progress=False)


def test_a_cached_file_linked_to_dev_zero_is_refused_and_not_read(cached):
    url, path = cached
    path.unlink()
    path.symlink_to("/dev/zero")
    message = refused(url, bound=3)
    assert message.startswith(f"{path}: is not a regular file (a pipe, a device or a folder)")
    assert os.readlink(path) == "/dev/zero"  # refused, nothing deleted through the link


def test_a_huge_cached_file_is_removed_without_being_hashed(cached):
    url, path = cached
    with open(path, "r+b") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB that would take minutes to hash
    message = refused(url, bound=3)
    assert message == (
        f"{path}: {64 << 30} bytes, the manifest lists 4096; the damaged copy was removed from the "
        "cache, run again to download it"
    )
    assert not path.exists()


def test_a_cached_link_to_an_outside_file_is_removed_and_the_outside_file_survives(cached, tmp_path):
    url, path = cached
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"x" * 4096)  # the listed size, another sha256
    path.unlink()
    path.symlink_to(outside)
    message = refused(url, bound=3)
    assert message.startswith(f"{path}: sha256 is {hashlib.sha256(outside.read_bytes()).hexdigest()}")
    assert not path.is_symlink() and outside.read_bytes() == b"x" * 4096
    assert hub.fetch(VARIANT, url, progress=False) == path  # downloaded anew


# The full disk.


@pytest.fixture
def small_cache(env, tmp_path):
    """A 1 MiB tmpfs as the cache, private as the cache must be (a tmpfs is 1777 by default); the
    test fails (no skip) when it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"mounting a 1 MiB tmpfs needs root: {result.stderr.strip()}")
    env.setenv("COAT_PADDLE_CACHE", str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_cache_names_the_file_the_folder_and_what_to_do(small_cache):
    manifest, weights = fake_release(2 << 20)
    with release_server(manifest, weights) as url:
        message = refused(url, bound=10)
    target = next(p for p in hub.cache_root().rglob(VARIANT) if p.is_dir()) / WEIGHTS
    assert message == (
        f"{target}: cannot be written into the weights cache {hub.cache_root()} (No space left on "
        "device); free space there or set COAT_PADDLE_CACHE to a folder with room, then run again "
        "(nothing was kept)"
    )
    assert litter(small_cache) == []
    assert os.statvfs(small_cache).f_bfree == os.statvfs(small_cache).f_blocks  # all space given back


# hf-hub: huggingface_hub downloads (HF_ENDPOINT at a local server), the hub checks.


class _HubRepo(HubFiles):
    """The Hub's file endpoint serving ``files`` by file name, whatever the repo and revision."""

    files: dict[str, bytes] = {}

    def data(self) -> bytes | None:
        return self.files.get(self.path.rsplit("/", 1)[-1])


@contextlib.contextmanager
def hub_server(files: dict[str, bytes]) -> Iterator[str]:
    with serve_http(type("Repo", (_HubRepo,), {"files": files})) as url:
        yield url


FETCH_HF = (
    "import sys\n"
    "from paddle_model import hub\n"
    "from paddle_model.errors import WeightsError\n"
    "try:\n"
    "    print(hub.fetch_hf('org/repo', sys.argv[1]))\n"
    "except WeightsError as e:\n"
    "    print('WeightsError:', e)\n"
)


def fetch_hf_in_fresh_process(env: dict) -> str:
    """The last line of fetch_hf in a fresh process (huggingface_hub reads HF_ENDPOINT at import)."""
    start = time.monotonic()
    result = run_python("-c", FETCH_HF, VARIANT, env=env, timeout=120)
    assert time.monotonic() - start < 60 and result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def hf_env(tmp_path) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return {**base, "COAT_PADDLE_CACHE": str(tmp_path / "cache")}


def test_hf_hub_manifest_over_one_mib_is_refused_before_it_is_downloaded(hf_env, tmp_path):
    manifest, weights = fake_release()
    size = len(manifest) + (2 << 20)
    with hub_server({"manifest.json": manifest + b" " * (2 << 20), WEIGHTS: weights}) as url:
        line = fetch_hf_in_fresh_process({**hf_env, "HF_ENDPOINT": url})
    assert line == (
        f"WeightsError: hf-hub:org/repo/manifest.json: the Hub lists {size} bytes, more than the 1024 kB "
        "a manifest may have; nothing was downloaded"
    )
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.stat().st_size >= size] == []


def test_hf_hub_weights_larger_than_listed_are_refused_before_they_are_downloaded(hf_env, tmp_path):
    manifest, weights = fake_release()
    with hub_server({"manifest.json": manifest, WEIGHTS: weights + bytes(1 << 20)}) as url:
        line = fetch_hf_in_fresh_process({**hf_env, "HF_ENDPOINT": url})
    assert line == (
        f"WeightsError: hf-hub:org/repo/{WEIGHTS}: the Hub lists {4096 + (1 << 20)} bytes, more than the "
        "4096 bytes its manifest lists; nothing was downloaded"
    )
    assert list((tmp_path / "cache").rglob(WEIGHTS)) == []


def test_hf_hub_bad_sha_deletes_the_snapshot_link_not_the_outside_file_it_points_to(hf_env, tmp_path):
    manifest, weights = fake_release()
    with hub_server({"manifest.json": manifest, WEIGHTS: weights}) as url:
        env = {**hf_env, "HF_ENDPOINT": url}
        path = Path(fetch_hf_in_fresh_process(env))
        assert path.name == WEIGHTS and path.read_bytes() == weights and path.is_symlink()
        blob = path.resolve()
        outside = tmp_path / "precious.bin"
        outside.write_bytes(b"y" * len(weights))  # the listed size, another sha256
        path.unlink()
        path.symlink_to(outside)
        line = fetch_hf_in_fresh_process({**env, "HF_HUB_OFFLINE": "1"})
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    assert line.startswith(f"WeightsError: {path}: sha256 is {digest}")
    assert outside.read_bytes() == b"y" * len(weights)  # outside the cache: untouched
    assert not path.is_symlink() and blob.exists()  # the link went; the cache's own blob stays
