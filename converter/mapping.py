"""The key mapping from PyTorch CoaT checkpoints to the Paddle layout, as data.

``RULES`` says what happens to each source key: drop it (with the reason), tie it to the
canonical tensor it aliases (the values must agree), or rename it. The first rule whose
anchored pattern matches a key decides. Whether a tensor is transposed is not a rule: it
follows from the target layer's type in :mod:`converter.layout` (Linear weights are
``[out, in]`` in torch and ``[in, out]`` in Paddle).

Mapping runs in two steps: :func:`plan_mapping` looks at names and shapes only (variant
detection runs it for every variant), :func:`apply_plan` moves the data. The same engine
fits Paddle-layout weights (the way back to torch, :mod:`converter.reverse`): with
``PADDLE_RULES`` every key already has its name, and shapes are compared in Paddle's layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np

from .errors import ConversionError, preview
from .layout import Layout, coat_layout, num_classes_in
from .lazy import Lazy
from .paddle_weights import FLOAT_DTYPES
from .variants import CoatVariant

DROP, TIE, RENAME = "drop", "tie", "rename"


@dataclass(frozen=True)
class Rule:
    pattern: str  # matched against the whole source key
    action: str  # DROP, TIE or RENAME
    target: str = r"\g<0>"  # re.sub template: the new name (RENAME) or the canonical key (TIE)
    reason: str = ""  # why a key is dropped
    applies: Callable[[CoatVariant], bool] = lambda variant: True


def _lite(variant: CoatVariant) -> bool:
    return variant.is_lite


RULES: tuple[Rule, ...] = (
    Rule(
        r"norm1\.(weight|bias)",
        DROP,
        reason="norm1: built but unused by the official CoaT and CoaT-Lite (timm drops it)",
    ),
    Rule(
        r"norm[23]\.(weight|bias)",
        DROP,
        applies=_lite,
        reason="norm2/norm3: unused by CoaT-Lite, which classifies from the last scale alone",
    ),
    Rule(r"serial_blocks([1-4])\.\d+\.cpe\.(.+)", TIE, r"cpe\1.\2"),
    Rule(r"serial_blocks([1-4])\.\d+\.factoratt_crpe\.crpe\.(.+)", TIE, r"crpe\1.\2"),
    Rule(r"parallel_blocks\.\d+\.factoratt_crpe([2-4])\.crpe\.(.+)", TIE, r"crpe\1.\2"),
    Rule(r"parallel_blocks\.(\d+)\.mlp[34]\.(.+)", TIE, r"parallel_blocks.\1.mlp2.\2"),
    Rule(r".*", RENAME),  # every other key keeps its official name
)


# a source already in the Paddle layout (a .pdparams file): every key keeps its name, an
# alias is tied to its canonical key by the layout itself, and nothing is dropped
PADDLE_RULES: tuple[Rule, ...] = (Rule(r".*", RENAME),)


@lru_cache(maxsize=16384)
def _resolve(key: str, rules: tuple[Rule, ...]) -> tuple[Rule, str]:
    """The first rule matching ``key`` and the name it gives (cached: detection asks the same
    of every variant)."""
    for rule in rules:
        match = re.fullmatch(rule.pattern, key)
        if match:
            return rule, match.expand(rule.target)
    raise ConversionError(f"{key}: no mapping rule matches it; a rule table must end with a catch-all")


def layout_for(shapes: Mapping[str, tuple[int, ...]], variant: CoatVariant, paddle: bool = False) -> Layout:
    """The target layout that fits a source: its classifier size, or no head at all.

    ``paddle``: the shapes are in Paddle's layout (a Linear weight is ``[in, out]``).
    """
    head = any(k.startswith("norm4.") for k in shapes)
    num_classes = num_classes_in(shapes, torch_layout=not paddle)
    return coat_layout(variant, num_classes=num_classes, head=head)


@dataclass
class Plan:
    """What happens to every source key for one variant, and what does not fit."""

    variant: CoatVariant
    layout: Layout
    renamed: dict[str, str] = field(default_factory=dict)  # source key -> canonical key
    tied: dict[str, str] = field(default_factory=dict)  # source key -> canonical key it aliases
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    problems: list[str] = field(default_factory=list)
    misfits: int = 0  # keys missing, unexpected, mis-shaped or duplicated

    def check(self, source: str) -> None:
        if self.problems:
            raise ConversionError(f"{source} does not fit {self.variant.name}: " + "; ".join(self.problems))


def check_declared_ties(plan: Plan, declared: Mapping[str, str], origin: str) -> None:
    """Aliases a file left out and named in its metadata must be aliases of CoaT, too."""
    canonical = {**plan.renamed, **plan.tied}
    for alias, kept in declared.items():
        if plan.layout.aliases.get(alias) != canonical.get(kept):
            raise ConversionError(
                f"{origin}: its metadata says {alias} is {kept}, but in "
                f"{plan.variant.name} they are different tensors"
            )


def plan_mapping(
    shapes: Mapping[str, tuple[int, ...]],
    variant: CoatVariant,
    paddle: bool = False,
    rules: tuple[Rule, ...] | None = None,
) -> Plan:
    """Decide each source key's fate from names and shapes alone.

    The shapes are torch's (a PyTorch checkpoint, mapped by ``RULES``), or with ``paddle``
    Paddle's (Paddle weights, mapped by ``PADDLE_RULES``); ``rules`` overrides the table.
    A renamed key that is an alias in the layout is a tie to its canonical key.
    """
    layout = layout_for(shapes, variant, paddle)
    plan = Plan(variant, layout)
    active = tuple(r for r in (rules or (PADDLE_RULES if paddle else RULES)) if r.applies(variant))
    unexpected, mismatched, duplicated = [], [], []
    for key, shape in shapes.items():
        rule, target = _resolve(key, active)
        if rule.action == DROP:
            plan.dropped[key] = rule.reason
            continue
        if rule.action == TIE or target in layout.aliases:
            canonical = target if rule.action == TIE else layout.aliases[target]
            if layout.aliases.get(key) != canonical:
                unexpected.append(key)
                continue
            plan.tied[key] = canonical
            target = canonical
        else:
            if target not in layout.tensors:
                unexpected.append(key)
                continue
            if target in plan.renamed.values():
                duplicated.append(target)
            plan.renamed[key] = target
        spec = layout.spec(target)
        expected = spec.shape if paddle else spec.torch_shape
        if tuple(shape) != expected:
            mismatched.append(f"{key} is {list(shape)}, expected {list(expected)}")
    missing = layout.tensors.keys() - plan.renamed.values()
    plan.misfits = len(missing) + len(unexpected) + len(mismatched) + len(duplicated)
    if missing:
        plan.problems.append(f"{len(missing)} keys missing ({preview(missing)})")
    if unexpected:
        plan.problems.append(f"{len(unexpected)} unexpected keys ({preview(unexpected)})")
    if mismatched:
        plan.problems.append(f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:4])})")
    if duplicated:
        plan.problems.append(f"keys given twice ({preview(duplicated)})")
    return plan


@dataclass
class MappingReport:
    tensors: int  # canonical tensors
    written: int  # keys written, aliases included
    transposed: list[str]
    dropped: dict[str, str]
    ties_checked: list[str]  # aliases present in the source and equal to their canonical tensor
    ties_filled: list[str]  # aliases absent from the source, written from their canonical tensor


def apply_plan(
    plan: Plan,
    source: Mapping[str, Lazy],
    origin: str = "checkpoint",
    allow_nonfinite: bool = False,
    dtype: np.dtype | None = None,
) -> tuple[dict[str, Lazy], MappingReport]:
    """The Paddle state dict, in layout order, aliases sharing one tensor.

    Names, shapes, dtypes and ties are checked now; each tensor is read, checked for NaN/Inf,
    transposed if it is a Linear weight and cast (``dtype``, round to nearest even) only when
    it is loaded, so a writer can stream. Tensors keep their source dtype by default.
    """
    plan.check(origin)
    layout = plan.layout
    canonical: dict[str, Lazy] = {}
    transposed = []
    for key, target in plan.renamed.items():
        tensor = source[key]
        if tensor.dtype.name not in FLOAT_DTYPES:
            raise ConversionError(f"{origin}: {key} has dtype {tensor.dtype}, expected a float tensor")
        spec = layout.tensors[target]
        if spec.transposed:
            transposed.append(target)
        prepare = partial(_prepare, tensor, f"{origin}: {key}", spec.transposed, dtype, allow_nonfinite)
        canonical[target] = Lazy(spec.shape, dtype if dtype is not None else tensor.dtype, prepare)
    source_of = {target: key for key, target in plan.renamed.items()}
    for key, target in plan.tied.items():
        alias, kept = source[key], source[source_of[target]]
        if not (alias.same_as(kept) or np.array_equal(alias.load(), kept.load())):
            raise ConversionError(
                f"{origin}: {key} should be the same tensor as {target} but holds other values; "
                "the checkpoint is inconsistent"
            )
    out = {key: canonical[layout.aliases.get(key, key)] for key in layout.order}
    report = MappingReport(
        tensors=len(canonical),
        written=len(out),
        transposed=transposed,
        dropped=dict(plan.dropped),
        ties_checked=sorted(plan.tied),
        ties_filled=sorted(set(layout.aliases) - set(plan.tied)),
    )
    return out, report


def _prepare(
    tensor: Lazy, where: str, transpose: bool, dtype: np.dtype | None, allow_nonfinite: bool
) -> np.ndarray:
    array = tensor.load()
    if not allow_nonfinite and not np.isfinite(array).all():
        raise ConversionError(f"{where} contains NaN or Inf values; pass --allow-nonfinite to convert anyway")
    if transpose:
        array = _transposed(array)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return np.ascontiguousarray(array)


def _transposed(array: np.ndarray, rows: int = 16) -> np.ndarray:
    """``array.T``, contiguous, copied a band of rows at a time: twice as fast as one copy
    for the large Linear weights, whose plain transposed copy misses the cache."""
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for start in range(0, array.shape[0], rows):
        out[:, start : start + rows] = array[start : start + rows].T
    return out
