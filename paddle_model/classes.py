"""The names of a model's classes: ImageNet-1k's, in label order, from the table shipped here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["imagenet_classes", "imagenet_wnids"]


@lru_cache(maxsize=1)
def _imagenet_table() -> list[tuple[str, str]]:
    table = Path(__file__).with_name("imagenet_classes.tsv").read_text().splitlines()
    return [tuple(line.split("\t", 1)) for line in table]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (WordNet lemmas)."""
    return [name for _, name in _imagenet_table()]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764``, ...) in label order: sorted."""
    return [wnid for wnid, _ in _imagenet_table()]
