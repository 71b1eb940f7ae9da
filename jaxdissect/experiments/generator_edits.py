"""Pure pieces of the generator interventions: class statistics of segmentations, context
labels per layer cell, the units to edit (ranked by IoU), ablation and insertion edit stacks,
and per-condition moments."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.edit import Ablate, Replace, unit_mask
from jaxdissect.stats import Moments


def class_counts(seg: jax.Array, num_labels: int) -> jax.Array:
    """(N, L, H, W) multi-label maps -> (N, num_labels) float32 pixel counts over ALL channels
    (a pixel with two labels counts for both; label 0 'no label' is counted too)."""
    seg = jnp.asarray(seg)
    flat = seg.reshape(seg.shape[0], -1)
    flat = jnp.where((flat >= 0) & (flat < num_labels), flat, num_labels)
    counts = jax.vmap(lambda s: jnp.bincount(s, length=num_labels + 1))(flat)
    return counts[:, :num_labels].astype(jnp.float32)


def class_fractions(seg: jax.Array, num_labels: int) -> jax.Array:
    """Per-image class fractions: pixel counts over all channels / pixels (may sum past 1)."""
    seg = jnp.asarray(seg)
    return class_counts(seg, num_labels) / float(seg.shape[2] * seg.shape[3])


def cell_centers(size: int, cells: int) -> np.ndarray:
    """Centre pixel of each of `cells` equal cells along an axis of `size` pixels."""
    if size % cells:
        raise ValueError(f"segmentation size {size} is not a multiple of the layer size {cells}")
    step = size // cells
    return np.arange(cells) * step + step // 2


def context_labels(seg: jax.Array, layer_hw: tuple[int, int], num_labels: int) -> jax.Array:
    """(N, h, w, num_labels) bool: every nonzero label (any channel) of `seg` at the centre of
    each layer cell -- the original's context of an insertion at that cell."""
    ys = cell_centers(seg.shape[2], layer_hw[0])
    xs = cell_centers(seg.shape[3], layer_hw[1])
    at = seg[:, :, ys][:, :, :, xs]  # (N, C, h, w)
    onehot = at[..., None] == jnp.arange(num_labels)  # (N, C, h, w, L)
    return onehot.any(axis=1).at[..., 0].set(False)


def ranked_units(iou: np.ndarray, label: int) -> np.ndarray:
    """Units in order of descending IoU with `label` (ties: lower unit first)."""
    return np.argsort(-np.asarray(iou)[label], kind="stable")


def best_units_masks(ranked: Sequence[int], max_units: int, num_units: int) -> np.ndarray:
    """(max_units + 1, num_units): row n zeroes the best n units (row 0 is no edit)."""
    ranked = np.asarray(ranked)[:max_units]
    out = np.zeros((max_units + 1, num_units), np.float32)
    for n in range(1, max_units + 1):
        out[n, ranked[:n]] = 1.0
    return out


def ablation_stack(masks: np.ndarray) -> Ablate:
    """A stack of ablations, one per row of `masks` (K, units)."""
    return Ablate(jnp.asarray(masks, jnp.float32))


def insertion_stack(units: Sequence[int], values: Sequence[float], num_units: int,
                    layer_hw: tuple[int, int]) -> Replace:
    """One `edit.insert` per layer location (row-major): `units` set to `values` at that cell
    only; a Replace stack with leading axis h*w."""
    h, w = layer_hw
    mask = unit_mask(units, num_units)
    vals = jnp.zeros((num_units,), jnp.float32).at[jnp.asarray(units, jnp.int32)].set(jnp.asarray(values, jnp.float32))
    where = jnp.eye(h * w, dtype=jnp.float32).reshape(h * w, h, w)
    return Replace(ablation=where[..., None] * mask, replacement=jnp.broadcast_to(vals, (h * w, num_units)))


def stack_size(edits: Any) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(edits)}
    if len(sizes) != 1:
        raise ValueError(f"an edit stack needs one leading axis shared by all its arrays, got sizes {sizes}")
    return sizes.pop()


def conditional_update(state: Moments, x: jax.Array, cond: jax.Array, mask: jax.Array) -> Moments:
    """Add rows x (M, L) to per-condition moments (a Moments over Lc * L entries, condition-major):
    row i counts for every condition c with cond[i, c] (and mask[i])."""
    w = (jnp.asarray(cond, bool) & mask[:, None]).astype(jnp.float32)  # (M, Lc)
    n_b = w.sum(0)
    shift = jnp.where(mask[:, None], x, 0.0).sum(0) / jnp.maximum(mask.sum(), 1)  # shifted data for stability
    xs = x - shift
    hi = jax.lax.Precision.HIGHEST
    s1 = jnp.matmul(w.T, xs, precision=hi)
    s2 = jnp.matmul(w.T, xs * xs, precision=hi)
    safe = jnp.maximum(n_b, 1.0)[:, None]
    mean = s1 / safe
    m2 = jnp.maximum(s2 - s1 * mean, 0.0)
    num_l = x.shape[1]
    batch = Moments(n=jnp.repeat(n_b.astype(jnp.int32), num_l), mean_=(mean + shift).reshape(-1),
                    m2=m2.reshape(-1), nan_count=jnp.zeros_like(state.nan_count))
    return state.merge(batch)


def conditional_readout(state: Moments, num_cond: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count (Lc,), mean (Lc, L), variance (Lc, L)) of a conditional tally."""
    n = np.asarray(state.n).reshape(num_cond, -1)
    return n[:, 0].copy(), np.asarray(state.mean()).reshape(num_cond, -1), np.asarray(state.variance()).reshape(num_cond, -1)
