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
unreachable location when the cache holds the variant. Reads time out after
``$COAT_PADDLE_TIMEOUT`` seconds (default 30).

The HTTP client is the standard library's ``urllib.request``: a location is a plain static
folder (no API to speak), urllib reads ``http(s)://`` and ``file://`` alike, honours the proxy
variables and takes a timeout, so no extra dependency is needed; ``paddle.utils.download`` checks
md5 only and has no timeout. ``hf-hub:`` goes through ``huggingface_hub`` (the ``hub`` extra),
which honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the Hub's redirects and authentication.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from converter.errors import WeightsError
from converter.files import sha256_file
from converter.variants import VARIANTS

from .cache import cache_root as project_cache_root

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
_MANIFEST_LIMIT = 1 << 20  # a manifest is a few kB; refuse to read more than this
_FILE_LIMIT = 4 << 30  # the largest variant's weights are 180 MB
_CHUNK = 1 << 20


class _Unreachable(Exception):
    """The location could not be reached (no connection, timeout); the cache may serve."""


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
            "or a path), pass pretrained='hf-hub:<repo_id>', or pass the path of a weights file"
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

    Reads ``<base>/<variant>/manifest.json``, then uses the cached file if its sha256 matches,
    else downloads it. Offline, or when the location cannot be reached, the cached manifest
    and file serve; without them this raises one line saying what to download and where.
    """
    if variant not in VARIANTS:
        raise WeightsError(f"unknown CoaT variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    base = weights_location(variant, location)
    timeout = _timeout() if timeout is None else timeout
    folder = cache_root() / _location_key(base) / variant
    manifest_url = f"{base}/{variant}/manifest.json"
    cached_manifest = folder / "manifest.json"
    manifest = None
    why = f"{OFFLINE_ENV}/HF_HUB_OFFLINE is set"
    if not is_offline():
        try:
            manifest = _parse_manifest(_read_url(manifest_url, timeout), manifest_url, variant)
        except _Unreachable as e:
            why = f"cannot reach {manifest_url} ({e})"
    online = manifest is not None
    if manifest is None:
        if not cached_manifest.is_file():
            raise WeightsError(
                f"{variant}: {why}, and the cache has no copy: download {manifest_url} and the "
                f"{variant}{WEIGHT_SUFFIXES[0]} it lists into {folder}/, or pass the path of a weights file"
            )
        manifest = _parse_manifest(cached_manifest.read_bytes(), str(cached_manifest), variant)
    name, expected = _choose_file(manifest, manifest_url, variant, cached_in=None if online else folder)
    target = folder / name
    manifest_bytes = json.dumps(manifest, indent=2).encode() + b"\n"
    if target.is_file():
        actual = sha256_file(target)
        if actual == expected:
            if online and not (cached_manifest.is_file() and cached_manifest.read_bytes() == manifest_bytes):
                _write_atomically(cached_manifest, manifest_bytes)  # a file placed by hand
            return target
        stale = online and _listed_digest(cached_manifest, name) == actual  # republished, not damaged
        if not stale:
            target.unlink()
            raise WeightsError(
                f"{target}: sha256 is {actual}, the manifest says {expected}; the damaged copy was "
                "removed from the cache, run again to download it"
            )
    if not online:
        raise WeightsError(
            f"{variant}: {why}, and the cache has no {name}: download {base}/{variant}/{name} into "
            f"{folder}/, or pass the path of a weights file"
        )
    folder.mkdir(parents=True, exist_ok=True)
    _download(f"{base}/{variant}/{name}", target, expected, timeout, progress)
    _write_atomically(cached_manifest, manifest_bytes)
    return target


def fetch_hf(repo_id: str, variant: str, *, revision: str | None = None) -> Path:
    """The verified local copy of ``variant``'s weights from a release folder on the Hub.

    The repository holds one release folder (``manifest.json``, the weights, config and card,
    as ``hf upload`` pushes it); its manifest must be of ``variant``. Files go to
    ``$COAT_PADDLE_CACHE/weights/hf-hub`` in huggingface_hub's cache layout, and are hashed
    against the manifest on every use.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise WeightsError(
            f"pretrained='{HF_PREFIX}{repo_id}' needs the huggingface_hub package: "
            "pip install 'coat-paddle[hub]'"
        ) from None
    where = f"{HF_PREFIX}{repo_id}"
    cache = cache_root() / "hf-hub"

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, EntryNotFoundError)
    try:
        import httpx2

        errors += (httpx2.HTTPError,)
    except ImportError:  # older huggingface_hub releases use requests, whose errors are OSErrors
        pass

    def download(filename: str) -> Path:
        try:
            return Path(
                hf_hub_download(
                    repo_id, filename, revision=revision, cache_dir=cache, etag_timeout=_timeout()
                )
            )
        except errors as e:
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            hint = "; it is not in the cache: go online, or unset HF_HUB_OFFLINE" if is_offline() else ""
            raise WeightsError(
                f"{where}: cannot get {filename} ({type(e).__name__}: {reason}){hint}"
            ) from None

    manifest = _parse_manifest(download("manifest.json").read_bytes(), f"{where}/manifest.json", variant)
    name, expected = _choose_file(manifest, f"{where}/manifest.json", variant)
    path = download(name)
    actual = sha256_file(path)
    if actual != expected:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise WeightsError(
            f"{where}/{name}: sha256 is {actual}, the manifest says {expected}; removed it from the cache"
        )
    return path


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


def _open(url: str, timeout: float):
    """urlopen, with a missing file told apart from a location that cannot be reached."""
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, headers={"User-Agent": "coat-paddle"}), timeout=timeout
        )
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise WeightsError(
                f"{url}: not found (HTTP 404); the weights location holds no such "
                "release (check the location and the variant)"
            ) from None
        if e.code >= 500:  # the server is in trouble, not the request: a cached copy may serve
            raise _Unreachable(f"HTTP {e.code} {e.reason}") from None
        raise WeightsError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if url.startswith("file:"):  # a folder on this machine: never unreachable, only missing
            raise WeightsError(
                f"{url}: no such file; the weights location holds no such release "
                "(check the location and the variant)"
            ) from None
        raise _Unreachable(str(e.reason)) from None
    except (TimeoutError, ConnectionError) as e:
        raise _Unreachable(f"{type(e).__name__}: {e or 'timed out'}") from None


def _read_url(url: str, timeout: float) -> bytes:
    try:
        with _open(url, timeout) as response:
            data = response.read(_MANIFEST_LIMIT + 1)
    except (TimeoutError, ConnectionError) as e:
        raise _Unreachable(f"{type(e).__name__} while reading: {e or 'timed out'}") from None
    if len(data) > _MANIFEST_LIMIT:
        raise WeightsError(f"{url}: larger than {_MANIFEST_LIMIT >> 10} kB; not a release manifest")
    return data


def _parse_manifest(data: bytes, where: str, variant: str) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{where}: not a release manifest (invalid JSON: {e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise WeightsError(f"{where}: not a release manifest (no 'files' table of sha256 hashes)")
    if manifest.get("variant") != variant:
        raise WeightsError(f"{where}: holds weights of {manifest.get('variant')!r}, not {variant!r}")
    return manifest


def _choose_file(manifest: dict, where: str, variant: str, cached_in: Path | None = None) -> tuple[str, str]:
    """The weights file to use and its sha256: the first of WEIGHT_SUFFIXES the manifest lists,
    or offline (``cached_in``) the first of those already in the cache."""
    listed = []
    for suffix in WEIGHT_SUFFIXES:
        name = f"{variant}{suffix}"
        digest = manifest["files"].get(name)
        if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
            listed.append((name, digest))
    if cached_in is not None:
        listed.sort(key=lambda item: not (cached_in / item[0]).is_file())  # stable: cached first
    if listed:
        return listed[0]
    raise WeightsError(f"{where}: lists no {' or '.join(variant + s for s in WEIGHT_SUFFIXES)} with a sha256")


def _listed_digest(manifest_path: Path, name: str) -> str | None:
    try:
        return json.loads(manifest_path.read_bytes())["files"][name]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _download(url: str, target: Path, expected: str, timeout: float, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``target``, hashing as it goes; rename it
    into place only if the sha256 is ``expected``. Nothing is left behind otherwise."""
    from tqdm import tqdm

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, _open(url, timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                desc=f"downloading {target.name}",
                disable=not progress,
                leave=False,
            ) as bar:
                size = 0
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > _FILE_LIMIT:
                        raise WeightsError(f"{url}: larger than {_FILE_LIMIT >> 30} GB; not CoaT weights")
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != expected:
            raise WeightsError(
                f"{url}: sha256 is {actual}, the manifest says {expected}; nothing was "
                "kept (the location's file is damaged or was changed: tell its publisher)"
            )
        os.replace(tmp, target)
    except (TimeoutError, ConnectionError) as e:
        raise WeightsError(
            f"{url}: the download broke off ({type(e).__name__}: {e or 'timed out'}); "
            "nothing was kept, run again"
        ) from None
    except _Unreachable as e:
        raise WeightsError(f"{url}: cannot reach it ({e}); nothing was kept, run again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
