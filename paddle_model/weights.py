"""Loading Paddle-layout CoaT weights into a model, strictly.

Reading the files (``.pdparams`` without running pickle code, ``.safetensors``) is
:mod:`converter.paddle_weights`, which needs no paddle; this module copies what it read into a
model and refuses anything that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from converter.errors import WeightsError, preview
from converter.paddle_weights import FLOAT_DTYPES, HEAD_PREFIXES, read_label_names, read_weights

__all__ = ["HEAD_PREFIXES", "load_state_dict", "read_label_names", "read_weights"]


def load_state_dict(
    model, state: Mapping[str, np.ndarray], source: str = "weights", ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Copy ``state`` into ``model``; raise unless every key fits exactly.

    Missing, unexpected or mis-shaped keys raise :class:`WeightsError`, and so do two keys of
    one shared parameter with different values. Keys starting with ``ignore_prefixes`` are
    neither required nor loaded (e.g. the head when loading a backbone).
    """
    import paddle

    def ignored(key: str) -> bool:
        return key.startswith(ignore_prefixes)

    targets = {k: v for k, v in model.state_dict().items() if not ignored(k)}
    given = {k: v for k, v in state.items() if not ignored(k)}
    missing = targets.keys() - given.keys()
    unexpected = given.keys() - targets.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({preview(unexpected)})")
        raise WeightsError(
            f"{source}: keys do not match the model: {'; '.join(parts)}; check the variant and num_classes"
        )
    first_key_of: dict[int, str] = {}
    for key, param in targets.items():
        value = given[key]
        if tuple(value.shape) != tuple(param.shape):
            raise WeightsError(
                f"{source}: {key} has shape {list(value.shape)}, the model expects "
                f"{list(param.shape)}; check the variant"
            )
        first = first_key_of.setdefault(id(param), key)
        if first != key:  # a shared parameter: its keys must agree
            if not np.array_equal(value, given[first]):
                raise WeightsError(
                    f"{source}: {key} and {first} name one shared tensor but hold different "
                    "values; the file is inconsistent"
                )
            continue
        if str(value.dtype) not in FLOAT_DTYPES:
            raise WeightsError(f"{source}: {key} has dtype {value.dtype}, expected a float tensor")
        with paddle.no_grad():
            param.set_value(paddle.to_tensor(np.asarray(value, dtype=np.float32)).astype(param.dtype))
