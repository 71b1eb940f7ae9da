"""Grouping pixels by their set of labels, for tallies that count per (label, ...) pair.

A pixel of a multi-label segmentation carries up to C labels (one per channel). Counting per
label needs C passes over the pixels (one per channel); grouping the pixels by their label
tuple first needs one pass into a few hundred groups, and the groups then add into their labels
in C passes over the groups alone. Tuples are packed into one int32 key (so only when
(num_labels + 1) ** C < 2 ** 31); a batch with more distinct tuples than the buffer holds is
counted the per-channel way by the caller (same result).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_EMPTY = jnp.iinfo(jnp.int32).max


class LabelSets(NamedTuple):
    set_id: jax.Array  # (P,) int32 the pixel's set, in [0, max_sets)
    labels: jax.Array  # (max_sets, C) int32 each set's label per channel; num_labels = none / unused slot
    fits: jax.Array  # () bool: all the batch's sets fit in max_sets (else set_id is meaningless)


def packable(num_labels: int, channels: int) -> bool:
    """Whether label tuples of `channels` ids in [0, num_labels] fit one int32 key (and C > 1)."""
    return channels > 1 and (num_labels + 1) ** channels < 2 ** 31


def label_sets(lab: jax.Array, num_labels: int, max_sets: int) -> LabelSets:
    """lab (P, C) deduplicated label ids (num_labels = none) -> the pixels' label sets."""
    channels = lab.shape[1]
    radix = num_labels + 1
    key = lab[:, 0]
    for c in range(1, channels):
        key = key * radix + lab[:, c]
    ordered = jnp.sort(key)
    new = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    rank = jnp.cumsum(new, dtype=jnp.int32) - 1
    sets = jnp.full((max_sets,), _EMPTY, jnp.int32).at[rank].set(ordered, mode="drop")
    set_id = jnp.minimum(jnp.searchsorted(sets, key), max_sets - 1).astype(jnp.int32)
    none_key = sum(num_labels * radix ** c for c in range(channels))
    rest = jnp.where(sets == _EMPTY, none_key, sets)  # unused slots hold no pixels: "no label"
    digits = []
    for _ in range(channels):
        digits.append(rest % radix)
        rest = rest // radix
    return LabelSets(set_id, jnp.stack(digits[::-1], axis=1), rank[-1] < max_sets)


def add_into_labels(per_set: jax.Array, set_labels: jax.Array, num_labels: int) -> jax.Array:
    """(max_sets, X) sums per set -> (num_labels, X) sums per label (row 0 and "none" dropped)."""
    out = jnp.zeros((num_labels + 1,) + per_set.shape[1:], per_set.dtype)
    for c in range(set_labels.shape[1]):
        out = out + jax.ops.segment_sum(per_set, set_labels[:, c], num_segments=num_labels + 1)
    return out[:num_labels]


def membership(set_labels: jax.Array, num_labels: int) -> jax.Array:
    """(max_sets, C) labels -> (max_sets, num_labels + 1) bool: the set carries the label (never "none")."""
    has = (set_labels[:, :, None] == jnp.arange(num_labels + 1)[None, None, :]).any(1)
    return has.at[:, num_labels].set(False)
