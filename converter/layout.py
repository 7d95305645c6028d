"""The state-dict format of a CoaT variant, described without torch or paddle.

The names are the official mlpc-ucsd / timm ones and are part of the public format: the
converter maps checkpoints onto this description, the Paddle model produces exactly these
keys (``tests/test_layout.py`` checks both), and published ``.pdparams`` files use them.

Shapes are Paddle's; a Linear weight is stored ``[in, out]`` here and ``[out, in]`` in torch.
Aliases are keys that name the same tensor as another key: the per-stage ``cpeN``/``crpeN``
shared by every block of stage N, and ``mlp3``/``mlp4`` that are ``mlp2`` in parallel blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .variants import CoatVariant

LINEAR, CONV, NORM, TOKEN = "linear", "conv", "norm", "token"

# the backbone outputs (return_interm_layers): each scale's tokens without CLS, as NCHW maps
FEATURE_NAMES = ("x1_nocls", "x2_nocls", "x3_nocls", "x4_nocls")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the format: its Paddle shape and the kind of layer that owns it."""

    shape: tuple[int, ...]
    layer: str
    transposed: bool = False  # torch stores it transposed: true of Linear weights alone

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transposed else self.shape


@dataclass(frozen=True)
class Layout:
    """All keys of a model's state dict, in the model's order.

    ``tensors`` holds the canonical keys; ``aliases`` maps every other key to the canonical
    key whose tensor it shares. ``order`` lists both kinds as the model's state dict does.
    """

    tensors: dict[str, TensorSpec]
    aliases: dict[str, str]
    order: tuple[str, ...]

    def spec(self, key: str) -> TensorSpec:
        return self.tensors[self.aliases.get(key, key)]

    def num_params(self) -> int:
        total = 0
        for spec in self.tensors.values():
            n = 1
            for d in spec.shape:
                n *= d
            total += n
        return total


class _Builder:
    def __init__(self) -> None:
        self.tensors: dict[str, TensorSpec] = {}
        self.aliases: dict[str, str] = {}
        self.order: list[str] = []

    def add(self, key: str, shape: tuple[int, ...], layer: str, transposed: bool = False) -> None:
        self.tensors[key] = TensorSpec(tuple(shape), layer, transposed)
        self.order.append(key)

    def alias(self, key: str, canonical: str) -> None:
        self.aliases[key] = canonical
        self.order.append(key)

    def alias_module(self, prefix: str, canonical_prefix: str) -> None:
        """Alias every key under ``canonical_prefix`` (already added) as ``prefix``."""
        start = canonical_prefix + "."
        for key in [k for k in self.tensors if k.startswith(start)]:
            self.alias(prefix + key[len(canonical_prefix) :], key)

    def linear(self, prefix: str, n_in: int, n_out: int) -> None:
        self.add(f"{prefix}.weight", (n_in, n_out), LINEAR, transposed=True)
        self.add(f"{prefix}.bias", (n_out,), LINEAR)

    def norm(self, prefix: str, dim: int) -> None:
        self.add(f"{prefix}.weight", (dim,), NORM)
        self.add(f"{prefix}.bias", (dim,), NORM)

    def conv(self, prefix: str, c_in: int, c_out: int, kernel: tuple[int, ...], groups: int = 1):
        self.add(f"{prefix}.weight", (c_out, c_in // groups, *kernel), CONV)
        self.add(f"{prefix}.bias", (c_out,), CONV)


def num_classes_in(state: Mapping[str, Any], torch_layout: bool = False) -> int:
    """The number of classes of a state dict's classifier (``head.weight``), 0 when it has none.

    ``state`` maps keys to arrays or to shapes; ``torch_layout``: Linear weights are stored
    ``[out, in]`` (torch) rather than ``[in, out]`` (Paddle).
    """
    head = state.get("head.weight")
    if head is None:
        return 0
    shape = tuple(getattr(head, "shape", head))
    return int(shape[0 if torch_layout else 1])


def coat_layout(variant: CoatVariant, num_classes: int = 1000, head: bool = True) -> Layout:
    """The state-dict layout of ``variant``.

    ``head=False`` describes the backbone built with ``return_interm_layers=True``: no final
    norms, no aggregate, no classifier. ``num_classes=0`` keeps the norms but no classifier.
    """
    v = variant
    dims = v.embed_dims
    b = _Builder()
    for i in range(4):
        b.add(f"cls_token{i + 1}", (1, 1, dims[i]), TOKEN)
    for i in range(4):
        c_in = 3 if i == 0 else dims[i - 1]
        k = v.patch_size if i == 0 else 2
        b.conv(f"patch_embed{i + 1}.proj", c_in, dims[i], (k, k))
        b.norm(f"patch_embed{i + 1}.norm", dims[i])
    for i in range(4):
        b.conv(f"cpe{i + 1}.proj", dims[i], dims[i], (3, 3), groups=dims[i])
    for i in range(4):
        head_chs = dims[i] // v.num_heads
        for j, (window, heads) in enumerate(v.crpe_window):
            ch = heads * head_chs
            b.conv(f"crpe{i + 1}.conv_list.{j}", ch, ch, (window, window), groups=ch)
    for i in range(4):
        dim, hidden = dims[i], v.mlp_hidden(i)
        for j in range(v.serial_depths[i]):
            p = f"serial_blocks{i + 1}.{j}"
            b.alias_module(f"{p}.cpe", f"cpe{i + 1}")
            b.norm(f"{p}.norm1", dim)
            b.linear(f"{p}.factoratt_crpe.qkv", dim, 3 * dim)
            b.linear(f"{p}.factoratt_crpe.proj", dim, dim)
            b.alias_module(f"{p}.factoratt_crpe.crpe", f"crpe{i + 1}")
            b.norm(f"{p}.norm2", dim)
            b.linear(f"{p}.mlp.fc1", dim, hidden)
            b.linear(f"{p}.mlp.fc2", hidden, dim)
    for j in range(v.parallel_depth):
        p = f"parallel_blocks.{j}"
        for s in (2, 3, 4):
            b.norm(f"{p}.norm1{s}", dims[s - 1])
        for s in (2, 3, 4):
            dim = dims[s - 1]
            b.linear(f"{p}.factoratt_crpe{s}.qkv", dim, 3 * dim)
            b.linear(f"{p}.factoratt_crpe{s}.proj", dim, dim)
            b.alias_module(f"{p}.factoratt_crpe{s}.crpe", f"crpe{s}")
        for s in (2, 3, 4):
            b.norm(f"{p}.norm2{s}", dims[s - 1])
        b.linear(f"{p}.mlp2.fc1", dims[1], v.mlp_hidden(1))
        b.linear(f"{p}.mlp2.fc2", v.mlp_hidden(1), dims[1])
        b.alias_module(f"{p}.mlp3", f"{p}.mlp2")
        b.alias_module(f"{p}.mlp4", f"{p}.mlp2")
    if head:
        if not v.is_lite:
            b.norm("norm2", dims[1])
            b.norm("norm3", dims[2])
        b.norm("norm4", dims[3])
        if not v.is_lite:
            b.add("aggregate.weight", (1, 3, 1), CONV)
            b.add("aggregate.bias", (1,), CONV)
        if num_classes > 0:
            b.linear("head", dims[3], num_classes)
    return Layout(b.tensors, b.aliases, tuple(b.order))
