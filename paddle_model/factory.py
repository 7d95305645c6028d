"""``create_model`` and one entry point per released variant."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converter.layout import num_classes_in

from .classes import imagenet_classes
from .coat import CoaT
from .hub import resolve_weights
from .kernels import fast
from .variants import get_variant
from .weights import HEAD_PREFIXES, load_state_dict, read_label_names, read_weights

IMAGENET_CLASSES = 1000  # the classifier of the published weights, and of a model built without any
_log = logging.getLogger(__name__)


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike | None = None,
    num_classes: int | None = None,
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
    ``"hf-hub:<repo_id>"`` for a release folder on the Hugging Face Hub. Every key must fit.

    ``num_classes`` defaults to the classifier in the weights (1000 without weights or for a
    backbone file), so a fine-tuned head is kept. Another size asks for a new classifier: it
    keeps its fresh initialisation and a warning line says so (logger ``paddle_model.factory``).
    A backbone (``return_interm_layers=True``) ignores the head's weights.

    The model's ``label_names`` are the names of its classes where they are known: those
    recorded with the weights (:func:`converter.paddle_weights.read_label_names`), else
    ImageNet-1k's for a loaded 1000-class head; None otherwise (a new classifier, no weights).
    Other keyword arguments go to :class:`CoaT` (``drop_path_rate``, ``out_features``, ...).
    ``kernels`` chooses the layers (:func:`paddle_model.kernels.fast.layers`): None (default)
    runs eager CPU float32 inference calls on the compiled kernels where they are built,
    True requires them, False keeps Paddle's ops only.
    """
    weights = resolve_weights(name, pretrained, weights_url)  # a download fails before the build
    state = None if weights is None else read_weights(weights)
    return model_from_state(name, state, weights, num_classes, kernels=kernels, **kwargs)


def model_from_state(
    name: str,
    state: Mapping[str, np.ndarray] | None,
    weights: Path | None,
    num_classes: int | None = None,
    *,
    kernels: bool | None = None,
    **kwargs,
) -> CoaT:
    """:func:`create_model` once the weights file ``weights`` is read into ``state`` (both None
    for no weights): for a caller that has read the file already and must not read it twice.
    ``weights`` names the file in messages and is where its label names are looked for."""
    in_weights = 0 if state is None else num_classes_in(state)
    if num_classes is None:
        num_classes = in_weights or IMAGENET_CLASSES
    model = CoaT(get_variant(name), num_classes=num_classes, layers=fast.layers(kernels), **kwargs)
    model.label_names = None
    if state is not None:
        ignore: tuple[str, ...] = ()
        if model.return_interm_layers:
            ignore = HEAD_PREFIXES
        elif in_weights and in_weights != num_classes:
            ignore = ("head.",)  # a new classifier was asked for: keep it freshly initialised
            _log.warning(
                "head: %d classes in the weights, %d asked: a new classifier (%s)",
                in_weights,
                num_classes,
                weights,
            )
        load_state_dict(model, state, source=str(weights), ignore_prefixes=ignore)
        if not ignore:
            model.label_names = read_label_names(weights, num_classes)
            if model.label_names is None and num_classes == IMAGENET_CLASSES:
                model.label_names = imagenet_classes()
    return model


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
