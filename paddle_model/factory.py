"""``create_model`` and one entry point per released variant."""

from __future__ import annotations

import os

from .coat import CoaT
from .hub import resolve_weights
from .kernels import fast
from .variants import get_variant
from .weights import HEAD_PREFIXES, load_state_dict, read_weights


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike | None = None,
    num_classes: int = 1000,
    *,
    weights_url: str | os.PathLike | None = None,
    kernels: bool | None = None,
    **kwargs,
) -> CoaT:
    """Build the CoaT variant ``name``; with ``pretrained``, load those weights strictly.

    ``pretrained`` is a ``.pdparams`` or ``.safetensors`` file in this library's layout (see
    ``convert.py``); ``True`` for the variant's published weights, fetched from a weights
    location (``weights_url``, else ``$COAT_PADDLE_WEIGHTS_URL``, else the project's own; see
    :mod:`paddle_model.hub`) into the cache and checked against its manifest's sha256; or
    ``"hf-hub:<repo_id>"`` for a release folder on the Hugging Face Hub. Every key must fit;
    the only tolerated difference is a classifier of another size when ``num_classes`` asks
    for one (it keeps its fresh initialisation), and a backbone (``return_interm_layers=True``)
    ignores the head's weights.
    Other keyword arguments go to :class:`CoaT` (``drop_path_rate``, ``out_features``, ...).
    ``kernels`` chooses the layers (:func:`paddle_model.kernels.fast.layers`): None (default)
    runs eager CPU float32 inference calls on the compiled kernels where they are built,
    True requires them, False keeps Paddle's ops only.
    """
    weights = resolve_weights(name, pretrained, weights_url)  # a download fails before the build
    model = CoaT(get_variant(name), num_classes=num_classes, layers=fast.layers(kernels), **kwargs)
    if weights is not None:
        state = read_weights(weights)
        ignore: tuple[str, ...] = ()
        if model.return_interm_layers:
            ignore = HEAD_PREFIXES
        elif _head_size(state) not in (None, num_classes):
            ignore = ("head.",)  # a new classifier was asked for: keep it freshly initialised
        load_state_dict(model, state, source=str(weights), ignore_prefixes=ignore)
    return model


def _head_size(state) -> int | None:
    weight = state.get("head.weight")
    return None if weight is None else int(weight.shape[1])


def coat_tiny(pretrained=None, **kwargs) -> CoaT:
    """CoaT Tiny: 5.5M parameters, dims 152 at every scale, 6 parallel blocks."""
    return create_model("coat_tiny", pretrained, **kwargs)


def coat_mini(pretrained=None, **kwargs) -> CoaT:
    """CoaT Mini: 10M parameters, dims 152/216, 6 parallel blocks."""
    return create_model("coat_mini", pretrained, **kwargs)


def coat_small(pretrained=None, **kwargs) -> CoaT:
    """CoaT Small: 22M parameters, dims 152/320, 6 parallel blocks."""
    return create_model("coat_small", pretrained, **kwargs)


def coat_lite_tiny(pretrained=None, **kwargs) -> CoaT:
    """CoaT-Lite Tiny: 5.7M parameters, serial blocks only."""
    return create_model("coat_lite_tiny", pretrained, **kwargs)


def coat_lite_mini(pretrained=None, **kwargs) -> CoaT:
    """CoaT-Lite Mini: 11M parameters, serial blocks only."""
    return create_model("coat_lite_mini", pretrained, **kwargs)


def coat_lite_small(pretrained=None, **kwargs) -> CoaT:
    """CoaT-Lite Small: 20M parameters, depths 3/4/6/3."""
    return create_model("coat_lite_small", pretrained, **kwargs)


def coat_lite_medium(pretrained=None, **kwargs) -> CoaT:
    """CoaT-Lite Medium: 45M parameters, depths 3/6/10/8."""
    return create_model("coat_lite_medium", pretrained, **kwargs)


def coat_lite_medium_384(pretrained=None, **kwargs) -> CoaT:
    """CoaT-Lite Medium fine-tuned at 384x384 (same tensors, default input 384)."""
    return create_model("coat_lite_medium_384", pretrained, **kwargs)
