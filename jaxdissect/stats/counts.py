"""Additive count statistics: Bincount and IoUTally (unit x label intersections for IoU).

Both are plain integer sums, so merging (and psum across devices) is exact.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._util import row_mask


@struct.dataclass
class Bincount:
    """Counts of integer labels 0 .. num_labels - 1 over a stream; out-of-range labels are counted apart."""

    counts: jax.Array  # (num_labels,) int32
    count: jax.Array  # () int32 rows (samples) seen
    out_of_range: jax.Array  # () int32

    @classmethod
    def create(cls, num_labels: int) -> "Bincount":
        z = jnp.zeros((), jnp.int32)
        return cls(counts=jnp.zeros((num_labels,), jnp.int32), count=z, out_of_range=z)

    def update(self, labels: jax.Array, mask: jax.Array | None = None) -> "Bincount":
        """Count every element of `labels` (samples, ...); rows where mask is False are ignored."""
        labels = jnp.asarray(labels)
        if labels.ndim == 0:
            labels = labels[None]
        return _bincount_update(self, labels, row_mask(mask, labels.shape[0]))

    def merge(self, other: "Bincount") -> "Bincount":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "Bincount":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def mean(self) -> jax.Array:
        """Counts per row seen (e.g. the average pixel count of each label per image)."""
        return self.counts / jnp.maximum(self.count, 1).astype(jnp.float32)


@jax.jit
def _bincount_update(state: Bincount, labels, mask) -> Bincount:
    n = state.counts.shape[0]
    valid = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (labels.ndim - 1)), labels.shape)
    ok = valid & (labels >= 0) & (labels < n)
    counts = state.counts.at[jnp.where(ok, labels, n).reshape(-1)].add(1, mode="drop")
    return Bincount(counts=counts, count=state.count + mask.sum(dtype=jnp.int32),
                    out_of_range=state.out_of_range + (valid & ~ok).sum(dtype=jnp.int32))


@struct.dataclass
class IoUTally:
    """Areas and intersections of unit indicator masks with multi-label segmentations.

    A pixel has label k when any of its segmentation channels equals k; label 0 means "no label"
    and is never counted. `iou()` is the original's I / (A + S - I) per (label, unit).
    """

    unit_area: jax.Array  # (units,) int32 pixels where the unit is on
    label_area: jax.Array  # (labels,) int32 pixels carrying the label
    intersection: jax.Array  # (labels, units) int32
    pixels: jax.Array  # () int32 pixels seen

    @classmethod
    def create(cls, num_units: int, num_labels: int) -> "IoUTally":
        return cls(unit_area=jnp.zeros((num_units,), jnp.int32),
                   label_area=jnp.zeros((num_labels,), jnp.int32),
                   intersection=jnp.zeros((num_labels, num_units), jnp.int32),
                   pixels=jnp.zeros((), jnp.int32))

    @property
    def num_units(self) -> int:
        return self.unit_area.shape[0]

    @property
    def num_labels(self) -> int:
        return self.label_area.shape[0]

    def update(self, indicator: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> "IoUTally":
        """Add indicator (N, H, W, units) bool and labels (N, channels, H, W) int; masked images are ignored.

        Label ids outside [1, num_labels) are ignored."""
        indicator = jnp.asarray(indicator)
        labels = jnp.asarray(labels)
        if indicator.ndim != 4 or indicator.shape[-1] != self.num_units:
            raise ValueError(f"IoUTally.update: indicator must be (N, H, W, {self.num_units}), got {indicator.shape}")
        if labels.ndim != 4 or labels.shape[0] != indicator.shape[0] or labels.shape[2:] != indicator.shape[1:3]:
            raise ValueError(f"IoUTally.update: labels must be (N, channels, H, W) = "
                             f"({indicator.shape[0]}, L, {indicator.shape[1]}, {indicator.shape[2]}), got {labels.shape}")
        return _iou_update(self, indicator, labels, row_mask(mask, indicator.shape[0]))

    def merge(self, other: "IoUTally") -> "IoUTally":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "IoUTally":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def iou(self) -> jax.Array:
        """(labels, units) IoU = I / (A + S - I); 0 where both areas are empty, and row 0 (no label) is 0."""
        inter = self.intersection.astype(jnp.float32)
        union = self.unit_area[None, :].astype(jnp.float32) + self.label_area[:, None].astype(jnp.float32) - inter
        out = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
        return out.at[0].set(0.0)

    def best_label(self) -> tuple[jax.Array, jax.Array]:
        """Each unit's best label (never label 0) and its IoU, (units,) each; ties go to the lower id."""
        iou = self.iou()[1:]
        best = jnp.argmax(iou, axis=0)
        return best + 1, jnp.take_along_axis(iou, best[None], 0)[0]


def dedup_labels(labels: jax.Array, num_labels: int) -> jax.Array:
    """(P, C) label ids -> the same with repeats within a row, 0 and out-of-range ids set to num_labels."""
    ok = (labels > 0) & (labels < num_labels)
    channels = labels.shape[1]
    for c in range(1, channels):
        ok = ok.at[:, c].set(ok[:, c] & ~(labels[:, :c] == labels[:, c:c + 1]).any(1))
    return jnp.where(ok, labels, num_labels)


@jax.jit
def _iou_update(state: IoUTally, indicator, labels, mask) -> IoUTally:
    n, h, w, units = indicator.shape
    num_labels = state.num_labels
    valid_px = jnp.broadcast_to(mask[:, None, None], (n, h, w)).reshape(-1)
    ind = (indicator.reshape(-1, units) & valid_px[:, None]).astype(jnp.int32)
    lab = jnp.moveaxis(labels, 1, -1).reshape(-1, labels.shape[1]).astype(jnp.int32)
    lab = jnp.where(valid_px[:, None], dedup_labels(lab, num_labels), num_labels)
    inter = state.intersection
    area = state.label_area
    for c in range(lab.shape[1]):  # a few channels: one segment sum each, no loop over labels
        inter = inter + jax.ops.segment_sum(ind, lab[:, c], num_segments=num_labels + 1)[:num_labels]
        area = area + jnp.bincount(lab[:, c], length=num_labels + 1)[:num_labels].astype(jnp.int32)
    return IoUTally(unit_area=state.unit_area + ind.sum(0), label_area=area, intersection=inter,
                    pixels=state.pixels + valid_px.sum(dtype=jnp.int32))


@struct.dataclass
class UnitCounts:
    """Per-unit counts of flagged samples (e.g. samples where a unit is NaN or infinite)."""

    counts: jax.Array  # (units,) int32 flagged rows per unit
    rows: jax.Array  # () int32 rows seen

    @classmethod
    def create(cls, num_units: int) -> "UnitCounts":
        return cls(counts=jnp.zeros((num_units,), jnp.int32), rows=jnp.zeros((), jnp.int32))

    def update(self, flags: jax.Array, mask: jax.Array | None = None) -> "UnitCounts":
        """Add flags (samples, units) bool; rows where mask is False are ignored."""
        flags = jnp.asarray(flags, bool)
        if flags.ndim != 2 or flags.shape[1] != self.counts.shape[0]:
            raise ValueError(f"UnitCounts.update: flags must be (samples, {self.counts.shape[0]}), got {flags.shape}")
        m = row_mask(mask, flags.shape[0])
        return UnitCounts(counts=self.counts + (flags & m[:, None]).sum(0, dtype=jnp.int32),
                          rows=self.rows + m.sum(dtype=jnp.int32))

    def merge(self, other: "UnitCounts") -> "UnitCounts":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "UnitCounts":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)
