"""Published weights by name: ``create_model(v, pretrained=True)`` and ``pretrained="hf-hub:<repo>"``.

A *weights location* is a base URL laid out exactly as ``python -m reference.release`` writes
its output folder: ``<base>/<variant>/manifest.json`` and the files that manifest lists with
their sha256. So a release folder served as it is (any static HTTP server, a bucket, a
``file://`` path or a plain folder path) is a weights location. The location comes from the
``location`` argument, else ``$COAT_PADDLE_WEIGHTS_URL``, else :data:`PUBLISHED_LOCATION`.

Files are downloaded into ``$COAT_PADDLE_CACHE/weights/`` (default ``~/.cache/coat_paddle``;
the kernels' build cache lives beside it in ``py3XX/``) through a temporary file renamed into
place only once its sha256 matches the manifest; a cached file is hashed again every time it is
used. ``$COAT_PADDLE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) uses the cache only, as does an
unreachable location when the cache holds the variant.

Every transfer is bounded in time and bytes: a manifest must arrive whole within
``$COAT_PADDLE_TIMEOUT`` seconds (default 30) and be at most 1 MiB; a weights file within that
time plus as much again per MiB of the size its manifest lists (an average of 1 MiB per
``$COAT_PADDLE_TIMEOUT`` seconds), and not one byte over that size. A reply that is not HTTP, is
cut short, trickles or streams on is refused in one line, and nothing of it stays in the cache.
Only regular files are read, from a folder location or the cache, with the same size bounds.

The HTTP client is the standard library's ``urllib.request``: a location is a plain static
folder (no API to speak), urllib reads ``http(s)://`` and ``file://`` alike, honours the proxy
variables and takes a timeout, so no extra dependency is needed; ``paddle.utils.download`` checks
md5 only and has no timeout. ``hf-hub:`` goes through ``huggingface_hub`` (the ``hub`` extra),
which honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the Hub's redirects and authentication.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import inspect
import os
import re
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from converter.errors import WeightsError
from converter.extras import install_hint
from converter.files import open_checked, sha256_file
from converter.manifest import FILE_SIZE_LIMIT, MANIFEST_LIMIT, ListedFile, Manifest
from converter.variants import VARIANTS
from converter.writers import atomic_write

from .cache import cache_root as project_cache_root
from .cache import private_folder

# The project's own published weights location, set here and nowhere else. Nothing has been
# published yet, so it is None and pretrained=True needs COAT_PADDLE_WEIGHTS_URL (or hf-hub:).
PUBLISHED_LOCATION: str | None = None

LOCATION_ENV = "COAT_PADDLE_WEIGHTS_URL"
OFFLINE_ENV = "COAT_PADDLE_OFFLINE"
TIMEOUT_ENV = "COAT_PADDLE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
HF_PREFIX = "hf-hub:"
CLI_PRETRAINED = "pretrained"  # --weights pretrained: the variant's published weights
# the --weights option's help, the same in every command that takes it
WEIGHTS_HELP = (
    ".pdparams or .safetensors file; 'pretrained' for the variant's published weights, "
    "'hf-hub:<repo_id>' for a release folder on the Hugging Face Hub"
)
WEIGHT_SUFFIXES = (".safetensors", ".pdparams")  # which listed file to fetch, in this order
_CHUNK = 1 << 20
_MANIFEST_ALLOWED = f"the {MANIFEST_LIMIT >> 10} kB a manifest may have"
_SCHEMES = ("http", "https", "file")


def cache_root() -> Path:
    """Where downloaded weights are kept: ``$COAT_PADDLE_CACHE/weights``."""
    return project_cache_root() / "weights"


def is_offline() -> bool:
    """Whether ``COAT_PADDLE_OFFLINE`` or ``HF_HUB_OFFLINE`` asks for the cache only."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in (OFFLINE_ENV, "HF_HUB_OFFLINE")
    )


def weights_location(variant: str, location: str | os.PathLike | None = None) -> str:
    """The base URL to fetch ``variant`` from: the argument, the environment, or the published one."""
    base = location if location is not None else os.environ.get(LOCATION_ENV) or PUBLISHED_LOCATION
    if base is None:
        raise WeightsError(
            f"{variant}: no published weights location is set in this version of coat-paddle; set "
            f"{LOCATION_ENV} to a folder written by `python -m reference.release` (http(s)://, file:// "
            "or a path), or give 'hf-hub:<repo_id>' or the path of a weights file instead"
        )
    base = str(base)
    if "://" not in base:  # a folder on this machine
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/")


def resolve_weights(variant: str, pretrained, location: str | os.PathLike | None = None) -> Path | None:
    """The local weights file that ``pretrained`` names for ``variant``, fetched if needed.

    None or False: no weights. True: the variant's published weights (:func:`fetch`).
    ``"hf-hub:<repo_id>[@revision]"``: a release folder pushed to the Hugging Face Hub
    (:func:`fetch_hf`). Anything else is the path of a ``.pdparams`` or ``.safetensors`` file.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return fetch(variant, location)
    if isinstance(pretrained, str) and pretrained.startswith(HF_PREFIX):
        repo_id, _, revision = pretrained[len(HF_PREFIX) :].partition("@")
        return fetch_hf(repo_id, variant, revision=revision or None)
    if isinstance(pretrained, (str, os.PathLike)):
        return Path(pretrained)
    raise WeightsError(
        f"pretrained={pretrained!r}: expected True, 'hf-hub:<repo_id>' or the path "
        "of a .pdparams or .safetensors file"
    )


def resolve_cli_weights(variant: str, value: str | None) -> Path | None:
    """``--weights`` of the commands: a file, ``pretrained`` or ``hf-hub:<repo_id>``."""
    return resolve_weights(variant, True if value == CLI_PRETRAINED else value)


def fetch(
    variant: str,
    location: str | os.PathLike | None = None,
    *,
    timeout: float | None = None,
    progress: bool = True,
) -> Path:
    """The verified local copy of ``variant``'s weights from a weights location.

    Reads ``<base>/<variant>/manifest.json``, then uses the cached file if its size and sha256
    match, else downloads it. Offline, or when the location cannot be reached, the cached
    manifest and file serve; without them this raises one line saying what to download and where.
    """
    if variant not in VARIANTS:
        raise WeightsError(f"unknown CoaT variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    base = weights_location(variant, location)
    timeout = _timeout() if timeout is None else timeout
    folder = cache_root() / _location_key(base) / variant
    manifest_url = f"{base}/{variant}/manifest.json"
    cached_manifest = folder / "manifest.json"
    manifest = raw = None
    why = f"{OFFLINE_ENV}/HF_HUB_OFFLINE is set"
    if not is_offline():
        try:
            raw = _get(manifest_url, timeout, MANIFEST_LIMIT)
            manifest = _parse_manifest(raw, manifest_url, variant)
        except _Unreachable as e:
            why = f"cannot reach {manifest_url} ({e})"
    online = manifest is not None
    if manifest is None:
        raw = _read_cached(cached_manifest, MANIFEST_LIMIT)
        if raw is None:
            raise WeightsError(
                f"{variant}: {why}, and the cache has no copy: download {manifest_url} and the "
                f"{variant}{WEIGHT_SUFFIXES[0]} it lists into {folder}/, or pass the path of a weights file"
            )
        manifest = _parse_manifest(raw, str(cached_manifest), variant)
    name, listed = _choose_file(manifest, manifest_url, variant, cached_in=None if online else folder)
    target = folder / name
    if _cached_size(target) is not None:
        if _check_cached(target, listed, stale=_listed(cached_manifest, name) if online else None):
            if online and _read_cached(cached_manifest, MANIFEST_LIMIT) != raw:
                _store(cached_manifest, raw)  # a file placed by hand, or a republished manifest
            return target
    if not online:
        raise WeightsError(
            f"{variant}: {why}, and the cache has no {name}: download {base}/{variant}/{name} into "
            f"{folder}/, or pass the path of a weights file"
        )
    _private_folder(folder)
    _download(f"{base}/{variant}/{name}", target, listed, timeout, progress)
    _store(cached_manifest, raw)
    return target


def fetch_hf(repo_id: str, variant: str, *, revision: str | None = None) -> Path:
    """The verified local copy of ``variant``'s weights from a release folder on the Hub.

    The repository holds one release folder (``manifest.json``, the weights, config and card,
    as ``hf upload`` pushes it); its manifest must be of ``variant``. Files go to
    ``$COAT_PADDLE_CACHE/weights/hf-hub`` in huggingface_hub's cache layout, and are checked
    against the manifest (size, then sha256) on every use.
    """
    where = f"{HF_PREFIX}{repo_id}"
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise WeightsError(
            f"{where}: reading from the Hugging Face Hub needs the huggingface_hub package: "
            f"{install_hint('hub')}"
        ) from None
    cache = cache_root() / "hf-hub"
    _private_folder(cache)  # huggingface_hub would make the cache root with the user's umask

    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        EntryNotFoundError,
        http.client.HTTPException,
    )
    try:
        import httpx2

        errors += (httpx2.HTTPError,)
    except ImportError:  # older huggingface_hub releases use requests, whose errors are OSErrors
        pass

    kwargs = {"revision": revision, "cache_dir": cache, "etag_timeout": _timeout()}
    dry_run = "dry_run" in inspect.signature(hf_hub_download).parameters  # huggingface_hub >= 1.1

    def download(filename: str, limit: int, allowed: str) -> Path:
        """The file, refused before any byte is downloaded when the Hub lists it over ``limit``."""
        try:
            if dry_run and not is_offline():
                info = hf_hub_download(repo_id, filename, dry_run=True, **kwargs)
                if info.will_download and info.file_size is not None and info.file_size > limit:
                    raise WeightsError(
                        f"{where}/{filename}: the Hub lists {info.file_size} bytes, more than {allowed}; "
                        "nothing was downloaded"
                    )
            return Path(hf_hub_download(repo_id, filename, **kwargs))
        except errors as e:
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            hint = "; it is not in the cache: go online, or unset HF_HUB_OFFLINE" if is_offline() else ""
            raise WeightsError(
                f"{where}: cannot get {filename} ({type(e).__name__}: {reason}){hint}"
            ) from None

    manifest_path = download("manifest.json", MANIFEST_LIMIT, _MANIFEST_ALLOWED)
    raw = _read_cached(manifest_path, MANIFEST_LIMIT)
    if raw is None:
        raise WeightsError(f"{where}: huggingface_hub returned {manifest_path}, which does not exist")
    manifest = _parse_manifest(raw, f"{where}/manifest.json", variant)
    name, listed = _choose_file(manifest, f"{where}/manifest.json", variant)
    limit = listed.size if listed.size is not None else FILE_SIZE_LIMIT
    path = download(name, limit, f"the {limit} bytes its manifest lists")
    if _cached_size(path) is None or not _check_cached(path, listed, stale=None, remove=_hf_remover(cache)):
        raise WeightsError(f"{where}: huggingface_hub returned {path}, which does not exist")
    return path


def _hf_remover(cache: Path) -> Callable[[Path], None]:
    """How a damaged file is removed from huggingface_hub's cache: the snapshot entry itself (a
    link is not followed) and the blob it links to, only where that blob lies inside ``cache``."""

    def remove(path: Path) -> None:
        blob = path.resolve() if path.is_symlink() else None
        path.unlink(missing_ok=True)
        if blob is not None and blob.is_relative_to(cache.resolve()) and not blob.is_symlink():
            blob.unlink(missing_ok=True)

    return remove


def _timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise WeightsError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds above 0")
    return seconds


def _location_key(base: str) -> str:
    """A readable cache folder name for a location, unique by a short hash of its URL."""
    parsed = urllib.parse.urlsplit(base)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", parsed.netloc + parsed.path).strip("_")[-60:]
    return f"{readable or 'location'}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"


def _parse_manifest(data: bytes, where: str, variant: str) -> Manifest:
    manifest = Manifest.from_json(data, where)
    if manifest.variant != variant:
        raise WeightsError(f"{where}: holds weights of {manifest.variant!r}, not {variant!r}")
    return manifest


def _choose_file(
    manifest: Manifest, where: str, variant: str, cached_in: Path | None = None
) -> tuple[str, ListedFile]:
    """The weights file to use and its listing: the first of WEIGHT_SUFFIXES the manifest lists,
    or offline (``cached_in``) the first of those already in the cache."""
    listed = [
        (variant + s, manifest.files[variant + s]) for s in WEIGHT_SUFFIXES if variant + s in manifest.files
    ]
    if cached_in is not None:
        listed.sort(key=lambda item: _cached_size(cached_in / item[0]) is None)  # stable: cached first
    if listed:
        return listed[0]
    raise WeightsError(f"{where}: lists no {' or '.join(variant + s for s in WEIGHT_SUFFIXES)}")


def _listed(manifest_path: Path, name: str) -> ListedFile | None:
    """What the cached manifest listed for ``name`` (None if it cannot be read or lists none)."""
    try:
        raw = _read_cached(manifest_path, MANIFEST_LIMIT)
        return None if raw is None else Manifest.from_json(raw, str(manifest_path)).files.get(name)
    except WeightsError:
        return None


# Reading files: a folder location and the cache.


def _open_regular(path: Path, limit: int) -> tuple[int, int]:
    """An open descriptor of the regular file at ``path`` (links followed) and its size;
    WeightsError for anything else, checked before and after the open (:func:`open_checked`)."""
    return open_checked(path, lambda st: _check_regular(path, st, limit))


def _check_regular(path: Path, st: os.stat_result, limit: int) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(
            f"{path}: is not a regular file (a pipe, a device or a folder); coat-paddle reads "
            "only regular files: remove it, or point to the file itself"
        )
    if st.st_size > limit:
        raise WeightsError(f"{path}: {st.st_size} bytes, more than the {limit} allowed for it")
    return st.st_size


def _read_cached(path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file at ``path``, at most ``limit``; None if there is none."""
    try:
        fd, size = _open_regular(path, limit)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise WeightsError(f"{path}: more than the {limit} bytes allowed for it")
    return data


def _cached_size(path: Path) -> int | None:
    """The size of the cache entry ``path`` (links followed) if it exists, else None;
    WeightsError when it is not a regular file (a pipe or a device never ends)."""
    try:
        return _check_regular(path, os.stat(path), sys.maxsize)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror}); remove it from the cache") from None


def _check_cached(
    path: Path, listed: ListedFile, stale: ListedFile | None, remove: Callable[[Path], None] = Path.unlink
) -> bool:
    """Whether the cached ``path`` is the file ``listed``: its size first (a file of any other
    size is not hashed), then its sha256. A damaged copy is removed (the entry itself; a link
    is not followed) and refused; one that ``stale`` (the previous manifest) listed was
    republished since, and is left to be replaced (False)."""
    size = _cached_size(path)
    limit = listed.size if listed.size is not None else FILE_SIZE_LIMIT
    if size == listed.size or (listed.size is None and size is not None and size <= limit):
        actual = sha256_file(path)
        if actual == listed.sha256:
            return True
        if stale is not None and stale.sha256 == actual:
            return False
        remove(path)
        raise WeightsError(
            f"{path}: sha256 is {actual}, the manifest says {listed.sha256}; the damaged copy was "
            "removed from the cache, run again to download it"
        )
    if stale is not None and stale.size == size and size is not None and sha256_file(path) == stale.sha256:
        return False
    remove(path)
    raise WeightsError(
        f"{path}: {size} bytes, the manifest lists {listed.size if listed.size is not None else limit}"
        f"{'' if listed.size is not None else ' at most'}; the damaged copy was removed from the "
        "cache, run again to download it"
    )


def _store(path: Path, data: bytes) -> None:
    """Write ``data`` into the cache at ``path``, all or nothing (an existing entry is replaced)."""
    try:
        atomic_write(path, lambda f: f.write(data), force=True)
    except OSError as e:
        raise _cache_error(path, e) from None


def _private_folder(folder: Path) -> None:
    """Make ``folder`` below the project's cache (and the cache root itself) where missing,
    private (0700) and reached through no link, as the kernel cache requires of the root it
    shares; WeightsError when it cannot be made or an existing folder is not private."""
    try:
        problem = private_folder(project_cache_root(), folder)
    except OSError as e:
        raise _cache_error(folder, e) from None
    if problem:
        raise WeightsError(
            f"{problem}, so the weights cache {cache_root()} is not used; run chmod go-w on it, or set "
            "COAT_PADDLE_CACHE to a folder only you can write (nothing was downloaded)"
        )


def _cache_error(path: Path, e: OSError) -> WeightsError:
    """One line for a cache that cannot be written: the file, the folder, what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free space there or set COAT_PADDLE_CACHE to a folder with room"
    else:
        todo = "make it writable or set COAT_PADDLE_CACHE to a folder of your own"
    return WeightsError(
        f"{path}: cannot be written into the weights cache {cache_root()} ({e.strerror or e}); "
        f"{todo}, then run again (nothing was kept)"
    )


# Transfers: bounded in time (the whole of it) and in bytes.


class _Unreachable(Exception):
    """The location could not be reached or did not answer in time; the cache may serve."""


class _WriteFailed(Exception):
    """Writing a received chunk into the cache failed (carries the OSError)."""


class _Deadline:
    """The time one transfer may take, all of it: connecting, the headers and the body. When it
    passes, the transfer's sockets are shut down, which ends a read that is blocked or trickling
    (a per-read timeout cannot see a server that sends a byte every second)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def connect(self, address, timeout=None, source_address=None, *args):
        """``socket.create_connection`` for http.client, within the deadline, watched."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        if isinstance(timeout, (int, float)):
            left = min(left, timeout)
        sock = socket.create_connection(address, left, source_address, *args)
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)
        return sock

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies, redirects, https) whose connections this deadline watches."""
        deadline = self

        def watched(connection_class):
            def make(*args, **kwargs):
                connection = connection_class(*args, **kwargs)
                connection._create_connection = deadline.connect
                return connection

            return make

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(watched(http_class), req, **kwargs)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(watched(http_class), req, **kwargs)

        return urllib.request.build_opener(HTTP, HTTPS)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _get(url: str, timeout: float, limit: int) -> bytes:
    """The body at ``url``: all of it within ``timeout`` seconds, at most ``limit`` bytes."""
    chunks: list[bytes] = []
    _transfer(url, timeout, timeout, limit, chunks.append, _MANIFEST_ALLOWED)
    return b"".join(chunks)


def _transfer(
    url: str, timeout: float, seconds: float, limit: int, sink: Callable[[bytes], None], allowed: str
) -> int:
    """Stream the body at ``url`` into ``sink`` and return its length: all of it within
    ``seconds``, each read within ``timeout``, refused the moment it exceeds ``limit`` bytes
    (``allowed`` says which limit, for the message).
    WeightsError for a reply that is wrong, :class:`_Unreachable` for one that did not come."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise WeightsError(f"{url}: a weights location is http://, https://, file:// or a folder path")
    if scheme == "file":
        return _transfer_file(url, limit, sink, allowed)
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "coat-paddle"})
    deadline = _Deadline(seconds)
    try:
        with deadline, deadline.opener().open(request, timeout=timeout) as response:
            announced = getattr(response, "length", None)  # http.client's parse of Content-Length
            if announced is not None and announced > limit:
                raise WeightsError(f"{url}: the server announces {announced} bytes, more than {allowed}")
            while chunk := response.read(min(_CHUNK, limit + 1 - received)):
                received += len(chunk)
                if received > limit:
                    raise WeightsError(f"{url}: the server sent more than {allowed}; nothing was kept")
                sink(chunk)
            if deadline.expired:  # the shutdown ended a body sent without a length
                raise TimeoutError
    except (WeightsError, _WriteFailed):
        raise
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise WeightsError(
                f"{url}: not found (HTTP 404); the weights location holds no such "
                "release (check the location and the variant)"
            ) from None
        if e.code >= 500:  # the server is in trouble, not the request: a cached copy may serve
            raise _Unreachable(f"HTTP {e.code} {_short(e.reason)}") from None
        raise WeightsError(f"{url}: the server answered HTTP {e.code} {_short(e.reason)}") from None
    except Exception as e:
        raise _transfer_error(url, e, deadline, timeout, received) from None
    return received


def _transfer_error(url: str, e: Exception, deadline: _Deadline, timeout: float, received: int) -> Exception:
    """What a failed transfer is, in one line: too slow, cut short, not HTTP, or unreachable."""
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, Exception):
        e = e.reason
    what = f"{type(e).__name__}: {_short(e)}" if str(e) else type(e).__name__
    if deadline.expired or isinstance(e, TimeoutError):
        took = (
            f"not complete within {deadline.seconds:.3g} s"
            if deadline.expired
            else f"silent for {timeout:g} s"
        )
        return _Unreachable(f"timed out: {took}; raise {TIMEOUT_ENV} on a slow link")
    if isinstance(e, http.client.IncompleteRead) or (
        received and isinstance(e, (ConnectionError, ValueError))
    ):
        return _Unreachable(f"the transfer was cut short after {received} bytes ({what})")
    if isinstance(e, (http.client.HTTPException, ValueError)):
        return WeightsError(f"{url}: the server's reply is not valid HTTP ({what}); check the location")
    if isinstance(e, (OSError, urllib.error.URLError)):  # refused, reset, DNS, TLS
        return _Unreachable(what)
    return WeightsError(f"{url}: the transfer failed ({what})")


def _transfer_file(url: str, limit: int, sink: Callable[[bytes], None], allowed: str) -> int:
    """A ``file://`` URL: a regular file only (a FIFO would block), at most ``limit`` bytes."""
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        fd, size = _open_regular(path, limit)
    except FileNotFoundError:
        raise WeightsError(
            f"{url}: no such file; the weights location holds no such release "
            "(check the location and the variant)"
        ) from None
    except OSError as e:
        raise WeightsError(f"{url}: cannot be read ({e.strerror})") from None
    received = 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(min(_CHUNK, limit + 1 - received)):
            received += len(chunk)
            if received > limit:
                raise WeightsError(f"{url}: it grew while read to more than {allowed}")
            sink(chunk)
    return received


def _short(value) -> str:
    return " ".join(str(value).split())[:200]


def _download(url: str, target: Path, listed: ListedFile, timeout: float, progress: bool) -> None:
    """Stream ``url`` into the cache at ``target``, hashing as it goes; it is named ``target``
    only if it is complete and its sha256 is the listed one. Nothing is left behind otherwise."""
    from tqdm import tqdm

    limit = listed.size if listed.size is not None else FILE_SIZE_LIMIT
    seconds = timeout * (1 + limit / (1 << 20))  # an average of 1 MiB per `timeout` seconds
    allowed = f"the {limit} bytes its manifest lists" if listed.size is not None else f"{limit} bytes"

    def write(out) -> None:
        digest = hashlib.sha256()
        with tqdm(
            total=listed.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            desc=f"downloading {target.name}",
            disable=not progress,
            leave=False,
        ) as bar:

            def sink(chunk: bytes) -> None:
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _WriteFailed(e) from None
                digest.update(chunk)
                bar.update(len(chunk))

            received = _transfer(url, timeout, seconds, limit, sink, allowed)
        if listed.size is not None and received < listed.size:
            raise _Unreachable(f"the transfer was cut short after {received} of {listed.size} bytes")
        actual = digest.hexdigest()
        if actual != listed.sha256:
            raise WeightsError(
                f"{url}: sha256 is {actual}, the manifest says {listed.sha256}; nothing was "
                "kept (the location's file is damaged or was changed: tell its publisher)"
            )

    try:
        atomic_write(target, write, force=True)
    except _Unreachable as e:
        raise WeightsError(f"{url}: {e}; nothing was kept, run again") from None
    except _WriteFailed as e:
        raise _cache_error(target, e.args[0]) from None
    except OSError as e:
        raise _cache_error(target, e) from None
