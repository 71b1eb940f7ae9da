"""The segmenter protocol: label lists and multi-label segmentation maps.

A segmentation is an int32 array (N, L, H, W): L channels of label ids, 0 = no label. A pixel
has label k when any of its channels equals k (the original's multi-label layout).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import jax


@dataclasses.dataclass(frozen=True)
class SegmentLabels:
    """Label names and categories; index 0 is the 'no label' entry ('-', '-')."""

    names: tuple[str, ...]
    categories: tuple[str, ...]  # category of each label, same length as names
    category_names: tuple[str, ...]  # the categories in display order

    def __post_init__(self):
        if len(self.names) != len(self.categories):
            raise ValueError("names and categories must have the same length")
        if not self.names or self.names[0] != "-":
            raise ValueError("label 0 must be the 'no label' entry '-'")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The label id of `name`; a clear error lists a few known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown label {name!r} (labels include {', '.join(self.names[1:12])} ...)") from None

    def as_pairs(self) -> list[tuple[str, str]]:
        """[(label, category)] as the original's segcatlabels."""
        return list(zip(self.names, self.categories))


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns images into multi-label maps."""

    labels: SegmentLabels

    def segment(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        """NHWC float images in [-1, 1] -> int32 (N, L, H // downsample, W // downsample)."""
        ...


def merged_labels(parts: Sequence[SegmentLabels]) -> tuple[SegmentLabels, list[int]]:
    """Concatenate label lists with offsets so that label 0 of every part stays 'no label'.

    Returns the merged labels and, per part, the offset added to its nonzero ids.
    """
    names, cats, catnames, offsets = ["-"], ["-"], [], []
    for p in parts:
        offsets.append(len(names) - 1)
        names.extend(p.names[1:])
        cats.extend(p.categories[1:])
        catnames.extend(c for c in p.category_names if c not in catnames)
    return SegmentLabels(tuple(names), tuple(cats), tuple(catnames)), offsets
