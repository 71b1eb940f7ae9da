"""Surface labels that a dataset never separates from one shape.

A material drawn on one kind of object only (in the scenes world, stone is the mountains' body and
nothing else) labels a mountain detector as well as a stone detector: on the original images the
two cannot be told apart, so the unit's label says nothing about surface versus shape. For each
surface (material, colour) label, `confinement` measures the largest share of its pixels that lie
inside one shape (object, part) label; the shape-bias experiment compares shape units with the
units of separable surface labels (share below `SEPARABLE_BELOW`) as well as with every surface
unit. The overlap is tallied in the same pass as the labels (`update_overlap`, jit-friendly).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.experiments.label_groups import group_of
from jaxdissect.stats import IoUTally

# A surface label with at least this share of its pixels inside one shape label is confined to it.
SEPARABLE_BELOW = 0.9


def label_ids(categories: Sequence[str], group: str) -> np.ndarray:
    """Ids of the labels whose category is in `group` ('shape' or 'surface'); never id 0 (no label)."""
    return np.asarray([i for i, c in enumerate(categories) if i and group_of(c) == group], np.int32)


def create_overlap(categories: Sequence[str]) -> IoUTally:
    """An empty overlap tally: an IoUTally whose 'units' are the surface labels' own masks, so its
    intersection (labels, surface labels) counts the pixels carrying both labels."""
    return IoUTally.create(len(label_ids(categories, "surface")), len(categories))


def update_overlap(tally: IoUTally, labels: jax.Array, surface: np.ndarray, mask: jax.Array | None = None) -> IoUTally:
    """Add segmentations (N, channels, H, W) int; `surface` = label_ids(categories, 'surface')."""
    labels = jnp.asarray(labels)
    present = (labels[..., None] == jnp.asarray(surface, labels.dtype)).any(axis=1)  # (N, H, W, surface labels)
    return tally.update(present, labels, mask)


@dataclasses.dataclass(frozen=True)
class Confinement:
    """Per label id: `share`, the largest fraction of the label's pixels inside one shape label
    (NaN for labels that are not surface labels or never seen), and `inside`, that shape label's
    id (-1 where none)."""

    share: np.ndarray  # (labels,) float
    inside: np.ndarray  # (labels,) int

    def separable(self, limit: float = SEPARABLE_BELOW) -> np.ndarray:
        """(labels,) bool: surface labels seen outside any single shape label (share < limit)."""
        return np.nan_to_num(self.share, nan=np.inf) < limit

    def table(self, names: Sequence[str], limit: float = SEPARABLE_BELOW) -> dict:
        """{surface label: {share, inside, separable}} for the labels seen (for reports)."""
        return {names[i]: {"share": float(self.share[i]), "inside": names[int(self.inside[i])],
                           "separable": bool(self.share[i] < limit)}
                for i in np.flatnonzero(~np.isnan(self.share))}


def confinement(tally: IoUTally, categories: Sequence[str]) -> Confinement:
    """Each surface label's largest share inside one shape label, from a finished overlap tally."""
    surface, shape = label_ids(categories, "surface"), label_ids(categories, "shape")
    share = np.full(len(categories), np.nan)
    inside = np.full(len(categories), -1, np.int64)
    area = np.asarray(tally.unit_area, np.float64)  # (surface labels,) pixels carrying each
    inter = np.asarray(tally.intersection, np.float64)[shape]  # (shape labels, surface labels)
    for j, label in enumerate(surface):
        if area[j] > 0 and shape.size:
            best = int(np.argmax(inter[:, j]))
            share[label], inside[label] = inter[best, j] / area[j], shape[best]
    return Confinement(share, inside)
