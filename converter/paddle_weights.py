"""Reading Paddle-layout CoaT weights files safely, without paddle.

``.pdparams`` files are pickles: they are read with an allowlisting unpickler, never with
``paddle.load``, which would run any code a file carries. As ``paddle.save`` does, they hold
bfloat16 tensors as uint16 arrays of the same bits (CoaT has no integer tensors, so uint16
always means bfloat16 here). ``.safetensors`` files may omit aliased tensors and record them
in their metadata (``alias -> kept name``), as ``safetensors.torch.save_model`` does; reading
fills them back in.

The names of the classes can be recorded with the weights (:data:`LABEL_NAMES`, as timm's
``pretrained_cfg`` and Hugging Face configs name them): in a ``.safetensors`` file's metadata
(:func:`label_names_metadata`), or in a ``config.json`` beside the weights file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import safe_pickle, safetensors_io
from .errors import WeightsError
from .files import check_input_file, load_json, read_bounded

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# ``paddle.save`` adds this bookkeeping entry to state dicts; it holds no tensor
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
# keys that belong to the classification head rather than the backbone
HEAD_PREFIXES = ("norm2.", "norm3.", "norm4.", "aggregate.", "head.")


_WEIGHTS_FILE = "a .pdparams or .safetensors file"

LABEL_NAMES = "label_names"  # the key of the class names, in safetensors metadata and config.json
CONFIG_FILE = "config.json"  # read beside a weights file for its label names
_MAX_CONFIG_BYTES = 16 << 20
_MAX_JSON_DEPTH = 32  # the names are 2 deep; a Hugging Face config.json nests a few levels
_MAX_NUMBER_CHARS = 40  # a float's repr has 24 characters
_MAX_NAME_CHARS = 200


def read_pdparams(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``.pdparams`` state dict, read without executing pickle code, within
    :mod:`converter.safe_pickle`'s limits (arrays are read-only views of the file's bytes)."""
    path = Path(path)
    size = check_input_file(path, WeightsError, _WEIGHTS_FILE)
    try:
        with open(path, "rb") as f:
            obj = safe_pickle.load(f, safe_pickle.NUMPY_ALLOWED, end=size)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    except Exception as e:  # truncated or corrupt pickles fail in many ways
        raise WeightsError(
            f"{path}: not a readable .pdparams file ({type(e).__name__}: {e}); it may be truncated or corrupt"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    state = {}
    for key, value in obj.items():
        if key == _PADDLE_NAME_TABLE:
            continue
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected an array")
        state[key] = value.view(safetensors_io.bfloat16()) if value.dtype == np.uint16 else value
    return state


def safetensors_aliases(metadata: Mapping[str, str] | None, names) -> dict[str, str]:
    """``alias -> kept name`` entries of a safetensors header, as ``save_model`` writes them."""
    names = set(names)
    return {k: v for k, v in (metadata or {}).items() if v in names and k not in names}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``.safetensors`` file, aliases recorded in its metadata filled in."""
    path = Path(path)
    check_input_file(path, WeightsError, _WEIGHTS_FILE)
    state, metadata = safetensors_io.read_file(path)
    for alias, kept in safetensors_aliases(metadata, state).items():
        state[alias] = state[kept]
    return state


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pdparams`` or ``.safetensors`` weights file into numpy arrays."""
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".pdparams":
        return read_pdparams(path)
    raise WeightsError(
        f"{path}: unknown weights format {suffix!r}; expected .pdparams or .safetensors "
        "(convert PyTorch checkpoints first: coat-convert SRC DST, or python convert.py SRC DST)"
    )


def label_names_metadata(names: Sequence[str]) -> dict[str, str]:
    """The ``.safetensors`` metadata entry that records the class names with the weights."""
    return {LABEL_NAMES: json.dumps(list(names), ensure_ascii=False)}


def _check_names(names, num_classes: int, where: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{where}: {LABEL_NAMES} must be a list of strings, one per class")
    if len(names) != num_classes:
        raise WeightsError(
            f"{where}: {len(names)} {LABEL_NAMES} for a classifier of {num_classes} classes; "
            "record one name per class"
        )
    for i, name in enumerate(names):
        if not name or len(name) > _MAX_NAME_CHARS or not name.isprintable():
            raise WeightsError(
                f"{where}: {LABEL_NAMES}[{i}] must be 1 to {_MAX_NAME_CHARS} printable characters"
            )
    return names


def _parse_json(text: str | bytes, where: str) -> Any:
    return load_json(text, f"{where}: not valid JSON", WeightsError, _MAX_JSON_DEPTH, _MAX_NUMBER_CHARS)


def read_label_names(path: str | os.PathLike, num_classes: int) -> list[str] | None:
    """The class names recorded with the weights at ``path``, or None where none are.

    Looked for in a ``.safetensors`` file's metadata, then in a ``config.json`` beside the file
    (only its :data:`LABEL_NAMES` entry is read). Names that are there but do not fit (not one
    printable string per class of the ``num_classes`` the weights have) raise
    :class:`WeightsError`: a file that names its classes wrongly is not guessed around.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        recorded = safetensors_io.open_file(path)[1].get(LABEL_NAMES)
        if recorded is not None:
            where = f"{path} (metadata)"
            return _check_names(_parse_json(recorded, where), num_classes, where)
    config = path.with_name(CONFIG_FILE)
    if not os.path.lexists(config):
        return None
    data = _parse_json(read_bounded(config, _MAX_CONFIG_BYTES, WeightsError, "a JSON config"), str(config))
    if not isinstance(data, dict) or LABEL_NAMES not in data:
        return None
    return _check_names(data[LABEL_NAMES], num_classes, str(config))
