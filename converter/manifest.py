"""The pretrained metadata, ``manifest.json``: one typed definition for its writer and its reader.

``python -m reference.release`` writes a :class:`Manifest` per variant, :mod:`paddle_model.hub`
reads it back before it downloads or trusts any file; both go through :meth:`Manifest.to_json` and
:meth:`Manifest.from_json`, so a field cannot be written one way and read another.

The JSON form, schema version 2::

    {"schema_version": 2, "variant": "coat_tiny",
     "files": {"coat_tiny.safetensors": "<sha256>", ...},   # the file table: sha256 ...
     "sizes": {"coat_tiny.safetensors": 21878744, ...},     # ... and size in bytes, by name
     "source": {...}, "params": ..., "parity": {...}, "preprocessing": {...},
     "input_size": [3, 224, 224], "accuracy": {...}, "license": "...", "versions": {...}}

The sha256 table keeps the shape of version 1 (the manifests before ``schema_version``, which had
no sizes; they are still read), so an older reader still finds its hashes. Reading is bounded: at
most :data:`MANIFEST_LIMIT` bytes, nesting at most :data:`MAX_DEPTH` deep, numbers of a few digits,
no NaN or Infinity; anything else is one :class:`~converter.errors.WeightsError` line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WeightsError
from .files import load_json

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no "schema_version" key and no sizes
MANIFEST_LIMIT = 1 << 20  # a manifest is a few kB; refuse to read more than this
FILE_SIZE_LIMIT = 4 << 30  # the largest variant's weights are 180 MB
MAX_DEPTH = 16  # the manifest's own nesting is 4 deep
_MAX_DIGITS = 40  # a size or a count has a dozen digits; a float's repr has 24 characters
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")  # a file name in the release folder
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ListedFile:
    """One file of a release folder: its sha256 and its size in bytes (None in version 1)."""

    sha256: str
    size: int | None


@dataclass(frozen=True)
class Source:
    """The checkpoint the release was converted from."""

    file: str
    sha256: str
    official: bool
    official_match: str | None  # what "official" rests on, in words; None when not official


@dataclass(frozen=True)
class Manifest:
    """What a release folder holds for one variant. The nested tables that no code reads back
    (``parity``, ``preprocessing``, ``accuracy``, ``versions``) are kept as JSON objects."""

    variant: str
    files: Mapping[str, ListedFile]
    source: Source
    params: int
    parity: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    input_size: tuple[int, int, int]
    accuracy: Mapping[str, Any]
    license: str
    versions: Mapping[str, str]
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_dict(self) -> dict:
        """The JSON object, in the current schema version."""
        return {
            "schema_version": SCHEMA_VERSION,
            "variant": self.variant,
            "files": {name: f.sha256 for name, f in self.files.items()},
            "sizes": {name: f.size for name, f in self.files.items() if f.size is not None},
            "source": {
                "file": self.source.file,
                "sha256": self.source.sha256,
                "official": self.source.official,
                "official_match": self.source.official_match,
            },
            "params": self.params,
            "parity": dict(self.parity),
            "preprocessing": dict(self.preprocessing),
            "input_size": list(self.input_size),
            "accuracy": dict(self.accuracy),
            "license": self.license,
            "versions": dict(self.versions),
        }

    def to_json(self) -> bytes:
        """``manifest.json``'s bytes; :meth:`from_json` reads them back equal (tested)."""
        data = (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode()
        if len(data) > MANIFEST_LIMIT:  # the reader would refuse it: refuse to write it
            raise WeightsError(f"manifest of {self.variant}: {len(data)} bytes, over {MANIFEST_LIMIT}")
        return data

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """The manifest in ``data`` (read from ``where``, named in the messages), checked field
        by field; one :class:`WeightsError` line for anything that is not a readable manifest."""
        return _Reader(where).manifest(_load(data, where))


def _load(data: bytes, where: str) -> Any:
    """JSON within limits: size, nesting depth, digits per number, no NaN/Infinity."""
    if len(data) > MANIFEST_LIMIT:
        raise _bad(where, f"larger than {MANIFEST_LIMIT >> 10} kB")
    return load_json(data, f"{where}: not a readable release manifest", WeightsError, MAX_DEPTH, _MAX_DIGITS)


def _bad(where: str, why: str) -> WeightsError:
    return WeightsError(f"{where}: not a readable release manifest ({why})")


class _Reader:
    """Typed access to a parsed manifest, each failure one line naming the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, expected: str) -> WeightsError:
        return _bad(self.where, f"'{key}' is not {expected}")

    def get(self, obj: dict, key: str, kind: type | tuple[type, ...], expected: str, path: str = "") -> Any:
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(path + key, expected)
        return value

    def count(self, obj: dict, key: str, low: int, high: int, path: str = "") -> int:
        value = self.get(obj, key, int, f"a whole number in {low}..{high}", path)
        if not low <= value <= high:
            raise self.fail(path + key, f"a whole number in {low}..{high}")
        return value

    def manifest(self, m: Any) -> Manifest:
        if not isinstance(m, dict):
            raise _bad(self.where, "not a JSON object")
        version = m.get("schema_version", 1)
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise _bad(
                self.where,
                f"schema_version {version!r}; this coat-paddle reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade coat-paddle to read it",
            )
        source = self.get(m, "source", dict, "an object")
        input_size = self.get(m, "input_size", list, "a list of 3 sizes")
        if len(input_size) != 3 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 16 for n in input_size
        ):
            raise self.fail("input_size", "a list of 3 sizes")
        match = source.get("official_match")
        if match is not None and not isinstance(match, str):
            raise self.fail("source.official_match", "a string or null")
        return Manifest(
            variant=self.get(m, "variant", str, "a variant name"),
            files=self.files(m, version),
            source=Source(
                file=self.get(source, "file", str, "a file name", "source."),
                sha256=self.sha256(source, "sha256", "source."),
                official=self.get(source, "official", bool, "true or false", "source."),
                official_match=match,
            ),
            params=self.count(m, "params", 0, 1 << 40),
            parity=self.get(m, "parity", dict, "an object"),
            preprocessing=self.get(m, "preprocessing", dict, "an object"),
            input_size=tuple(input_size),
            accuracy=self.get(m, "accuracy", dict, "an object"),
            license=self.get(m, "license", str, "a string"),
            versions=self.versions(m),
            schema_version=version,
        )

    def sha256(self, obj: dict, key: str, path: str = "") -> str:
        value = obj.get(key)
        if not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise self.fail(path + key, "a sha256 (64 lowercase hex digits)")
        return value

    def files(self, m: dict, version: int) -> dict[str, ListedFile]:
        table = self.get(m, "files", dict, "a table of file names to sha256")
        sizes = self.get(m, "sizes", dict, "a table of file names to sizes") if version >= 2 else {}
        if version >= 2 and sizes.keys() != table.keys():
            raise self.fail("sizes", "a size for each file of 'files'")
        listed = {}
        for name in table:
            if not _NAME.fullmatch(name) or ".." in name:
                raise self.fail(f"files.{name[:60]}", "a plain file name")
            size = self.count(sizes, name, 1, FILE_SIZE_LIMIT, "sizes.") if version >= 2 else None
            listed[name] = ListedFile(self.sha256(table, name, "files."), size)
        return listed

    def versions(self, m: dict) -> dict[str, str]:
        versions = self.get(m, "versions", dict, "a table of package versions")
        if not all(isinstance(v, str) for v in versions.values()):
            raise self.fail("versions", "a table of package versions")
        return versions
