"""The dissection's per-batch steps: pure functions of (states, activations, ...) -> states.

Pass 1 (the one forward): per-unit quantiles of the upsampled activations, per-unit top-k of
each image's peak (raw) activation with the unit's activation map for the first few (for
thumbnails), and a count of non-finite values. Refinement passes (replays): exact thresholds
(`jaxdissect.stats.QuantileRefinement`). The IoU pass (needs the thresholds): unit x label
intersections of the thresholded, upsampled activations with the segmentation. Each composes
with any forward pass in user code; `sharded_pass` runs one over a mesh with per-device states.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.parallel import merge_over_mesh, place_first, sharded_pass  # noqa: F401 (re-exported)
from jaxdissect.stats import IoUTally, QuantileRefinement, QuantileSketch, TopK, UnitCounts
from jaxdissect.upsample import Upsampler


@struct.dataclass
class ActivationStats:
    """Pass-1 statistics of one layer."""

    quantiles: QuantileSketch  # of the upsampled activations
    topk: TopK  # top images by peak activation (global sample indices)
    top_maps: TopK | None = None  # the first few top images with the unit's (h, w) map each
    nonfinite: UnitCounts | None = None  # samples where the unit (or its pre-activation) was NaN/inf

    @classmethod
    def create(cls, num_units: int, k: int = 100, resolution: int = 128, map_shape: tuple[int, int] | None = None,
               map_k: int = 5) -> "ActivationStats":
        """Empty statistics; with `map_shape` (the layer's h, w) the first `map_k` top images keep
        their activation maps, so thumbnails need no forward pass."""
        maps = None if map_shape is None else TopK.create(num_units, min(map_k, k), payload_shape=tuple(map_shape))
        return cls(QuantileSketch.create(num_units, resolution), TopK.create(num_units, k), maps,
                   UnitCounts.create(num_units))

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        return self.replace(**{f.name: None if getattr(self, f.name) is None else
                               getattr(self, f.name).merge(getattr(other, f.name)) for f in dataclasses.fields(self)})

    def all_reduce(self, axis_name) -> "ActivationStats":
        return self.replace(**{f.name: None if getattr(self, f.name) is None else
                               getattr(self, f.name).all_reduce(axis_name) for f in dataclasses.fields(self)})


def nonfinite_flags(acts: jax.Array) -> jax.Array:
    """(N, ..., units) -> (N, units) bool: some value of the unit in that sample is NaN or inf."""
    return ~jnp.isfinite(acts.reshape(acts.shape[0], -1, acts.shape[-1])).all(axis=1)


def update_activation_stats(state: ActivationStats, acts: jax.Array, upsample: Upsampler,
                            indices: jax.Array, mask: jax.Array,
                            pre_nonfinite: jax.Array | None = None) -> ActivationStats:
    """Add a batch of raw layer activations (N, h, w, units) of images with global `indices`.

    `pre_nonfinite` (N, units) flags samples whose pre-activation (e.g. before the layer's ReLU,
    which would hide a NaN) was not finite."""
    n, units = acts.shape[0], acts.shape[-1]
    up = upsample(acts)
    pixels = up.shape[1] * up.shape[2]
    rows = up.reshape(n * pixels, units)
    peak = acts.reshape(n, -1, units).max(axis=1)
    new = state.replace(quantiles=state.quantiles.update(rows, jnp.repeat(mask, pixels)),
                        topk=state.topk.update(peak, indices, mask))
    if state.top_maps is not None:
        new = new.replace(top_maps=state.top_maps.update(peak, indices, mask, payload=jnp.moveaxis(acts, -1, 1)))
    if state.nonfinite is not None:
        flags = nonfinite_flags(acts)
        if pre_nonfinite is not None:
            flags = flags | pre_nonfinite
        new = new.replace(nonfinite=state.nonfinite.update(flags, mask))
    return new


def update_refinement(state: QuantileRefinement, acts: jax.Array, upsample: Upsampler,
                      mask: jax.Array) -> QuantileRefinement:
    """Add a batch of raw layer activations (N, h, w, units) to an exact-threshold refinement pass
    (over the same upsampled values the sketch of pass 1 saw)."""
    up = upsample(acts)
    pixels = up.shape[1] * up.shape[2]
    return state.update(up.reshape(-1, up.shape[-1]), jnp.repeat(mask, pixels))


def unit_indicator(acts: jax.Array, upsample: Upsampler, thresholds: jax.Array) -> jax.Array:
    """Where each unit is on: upsampled activation above its threshold, (N, H, W, units) bool."""
    return upsample(acts) > thresholds


def update_iou(state: IoUTally, acts: jax.Array, upsample: Upsampler, thresholds: jax.Array,
               segmentation: jax.Array, mask: jax.Array) -> IoUTally:
    """Add a batch: activations (N, h, w, units), segmentation (N, L, H, W) at the upsampled size."""
    return state.update(unit_indicator(acts, upsample, thresholds), segmentation, mask)
