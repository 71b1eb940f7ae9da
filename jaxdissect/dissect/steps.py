"""The dissection's per-batch steps: pure functions of (states, activations, ...) -> states.

Pass 1 (one forward): per-unit quantiles of the upsampled activations and per-unit top-k of each
image's peak (raw) activation. Pass 2 (needs the thresholds): unit x label intersections of the
thresholded, upsampled activations with the segmentation. Both compose with any forward pass in
user code; `sharded_pass` runs one over a mesh with per-device states.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect.stats import IoUTally, QuantileSketch, TopK
from jaxdissect.upsample import Upsampler

P = jax.sharding.PartitionSpec


@struct.dataclass
class ActivationStats:
    """Pass-1 statistics of one layer."""

    quantiles: QuantileSketch
    topk: TopK

    @classmethod
    def create(cls, num_units: int, k: int = 100, resolution: int = 128) -> "ActivationStats":
        return cls(QuantileSketch.create(num_units, resolution), TopK.create(num_units, k))

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        return ActivationStats(self.quantiles.merge(other.quantiles), self.topk.merge(other.topk))

    def all_reduce(self, axis_name) -> "ActivationStats":
        return ActivationStats(self.quantiles.all_reduce(axis_name), self.topk.all_reduce(axis_name))


def update_activation_stats(state: ActivationStats, acts: jax.Array, upsample: Upsampler,
                            indices: jax.Array, mask: jax.Array) -> ActivationStats:
    """Add a batch of raw layer activations (N, h, w, units) of images with global `indices`."""
    n, units = acts.shape[0], acts.shape[-1]
    up = upsample(acts)
    pixels = up.shape[1] * up.shape[2]
    rows = up.reshape(n * pixels, units)
    row_mask = jnp.repeat(mask, pixels)
    peak = acts.reshape(n, -1, units).max(axis=1)
    return ActivationStats(state.quantiles.update(rows, row_mask), state.topk.update(peak, indices, mask))


def unit_indicator(acts: jax.Array, upsample: Upsampler, thresholds: jax.Array) -> jax.Array:
    """Where each unit is on: upsampled activation above its threshold, (N, H, W, units) bool."""
    return upsample(acts) > thresholds


def update_iou(state: IoUTally, acts: jax.Array, upsample: Upsampler, thresholds: jax.Array,
               segmentation: jax.Array, mask: jax.Array) -> IoUTally:
    """Add a batch: activations (N, h, w, units), segmentation (N, L, H, W) at the upsampled size."""
    return state.update(unit_indicator(acts, upsample, thresholds), segmentation, mask)


def merge_over_mesh(stacked: Any, mesh: jax.sharding.Mesh) -> Any:
    """Per-device states (leading device axis) -> their merge, replicated on every device, with
    the states' own collectives (psum for counts, pmin/pmax for extremes, gathers for top-k)."""
    return _merge_fn(mesh)(stacked)


@functools.lru_cache(maxsize=None)
def _merge_fn(mesh: jax.sharding.Mesh) -> Callable:
    """One jitted merge per mesh, so repeated checkpoints do not recompile."""

    def body(state):
        local = jax.tree.map(lambda a: a[0], state)
        return jax.tree.map(lambda s: s.all_reduce("data"), local, is_leaf=_is_state)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P(), check_vma=False))


def _is_state(x) -> bool:
    return hasattr(x, "all_reduce")


def place_first(state: Any, empty: Any, mesh: jax.sharding.Mesh) -> Any:
    """A per-device state array (leading device axis, split over the mesh) whose first device holds
    `state` and every other device `empty` (merge-neutral). Works across processes: each builds
    only its own devices' parts."""
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    n = mesh.size

    def leaf(s, e):
        s, e = np.asarray(s), np.asarray(e)

        def part(index):
            first = index[0].start or 0
            return (s if first == 0 else e)[None]

        return jax.make_array_from_callback((n,) + s.shape, sharding, part)

    return jax.tree.map(leaf, state, empty)


def sharded_pass(per_device: Callable, mesh: jax.sharding.Mesh, num_batch_args: int) -> Callable:
    """Jit a step `per_device(state, replicated, *batch) -> state` over `mesh`'s 'data' axis.

    The state carries a leading device axis (one state per device, never communicated during
    the pass); `replicated` (e.g. variables, thresholds) is the same on every device; the batch
    arguments are split over devices along their first axis. The state is donated."""

    def body(state, replicated, *batch):
        local = jax.tree.map(lambda a: a[0], state)
        new = per_device(local, replicated, *batch)
        return jax.tree.map(lambda a: a[None], new)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P()) + (P("data"),) * num_batch_args,
                       out_specs=P("data"), check_vma=False)
    return jax.jit(fn, donate_argnums=0)
