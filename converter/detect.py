"""Which CoaT variant a state dict is, from its tensor names and shapes.

One fitting for both directions: a PyTorch checkpoint (torch shapes, mapped by the rules of
:mod:`converter.mapping`) and Paddle weights on their way back to torch (``paddle=True``: Paddle
shapes, every key already named as the layout names it).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConversionError, preview
from .mapping import Plan, plan_mapping
from .variants import VARIANTS, CoatVariant


def detect_variant(
    shapes: Mapping[str, tuple[int, ...]],
    origin: str = "checkpoint",
    name_hint: str = "",
    paddle: bool = False,
) -> Plan:
    """The mapping plan of the one variant the tensors fit.

    Variants with identical tensors (coat_lite_medium and coat_lite_medium_384) are told
    apart by ``name_hint`` (the file name): the longest variant name it contains wins.
    """
    if "patch_embed1.proj.weight" not in shapes:
        raise ConversionError(
            f"{origin}: not a CoaT checkpoint: expected keys such as patch_embed1.proj.weight, "
            f"cls_token1 and serial_blocks1.0.*, found {preview(shapes)}"
        )
    plans = {name: plan_mapping(shapes, v, paddle) for name, v in VARIANTS.items()}
    fits = [name for name, plan in plans.items() if not plan.problems]
    if fits:
        return plans[choose_variant(fits, origin, name_hint)]
    closest = min(plans.values(), key=lambda p: p.misfits)
    raise ConversionError(
        f"{origin}: the tensors fit no CoaT variant; closest is {closest.variant.name}: "
        + "; ".join(closest.problems)
        + " (pass --variant to force one)"
    )


def choose_variant(fits: list[str], origin: str, name_hint: str) -> str:
    """One of the variants whose tensors fit: the only one, or the one the file name names."""
    if len(fits) == 1:
        return fits[0]
    named = sorted((n for n in fits if n in name_hint), key=len)
    if named:
        return named[-1]
    raise ConversionError(
        f"{origin}: the tensors fit {' and '.join(fits)} alike (they differ only in default "
        "input size); pass --variant to choose"
    )


def plan_for(
    shapes: Mapping[str, tuple[int, ...]],
    variant: CoatVariant | None,
    origin: str = "checkpoint",
    name_hint: str = "",
    paddle: bool = False,
) -> Plan:
    """The plan for ``variant`` when given, checked; else the detected one."""
    if variant is None:
        return detect_variant(shapes, origin, name_hint, paddle)
    plan = plan_mapping(shapes, variant, paddle)
    plan.check(origin)
    return plan
