"""Exact quantiles from a sketch and replayable data: narrow each target bin until it is one value.

A `QuantileSketch` knows, per unit, which of its bins holds a given rank, but inside a bin it can
only interpolate, and for data bunched inside one bin that can be far off in rank. When the data
can be read again (cached activations, or a network run again on the same inputs), the exact
order statistics follow from a few more passes: each pass counts, per unit and target rank, the
values below an interval of float32 order keys and a histogram of `num_subbins` equal slices of
that interval; the slice holding the target rank becomes the next interval. An interval one key
wide is one float32 value, the exact order statistic. A sketch bin spans 2**16 keys at
resolution 128, so 2**16 slices finish in one pass and 2**8 in two.

    sketch = ...                          # QuantileSketch of the whole data
    def replay(step, state):              # run `step` over the same data again
        for x, mask in batches():
            state = step(state, x, mask)
        return state
    thresholds = exact_quantiles(sketch, [0.99], replay)   # (units, 1), numpy's 'linear' quantile

Guarantee: the returned value is numpy's default (linear) quantile of exactly the values the
sketch saw (rank error 0), provided the replay yields the same values; if it does not (a stale
cache, a nondeterministic network), the counts disagree with the sketch and `exact_quantiles`
raises instead of returning a wrong threshold.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect.stats._util import as_2d, row_mask
from jaxdissect.stats.quantile import QuantileSketch

_SIGN_FLIP = np.int32(0x7FFFFFFF)
_NEG_ZERO = np.int32(-2**31)  # the bits of -0.0


def order_keys(x: jax.Array) -> jax.Array:
    """int32 keys whose order is the float32 order of x (-0.0 and 0.0 share the key of 0.0).

    Only bit operations: arithmetic would flush subnormal values to zero on some backends."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    bits = jnp.where(bits == _NEG_ZERO, 0, bits)
    return jnp.where(bits >= 0, bits, bits ^ _SIGN_FLIP)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of int32 order keys (inverse of `order_keys`), in numpy."""
    keys = np.asarray(keys, np.int32)
    bits = np.where(keys >= 0, keys, keys ^ _SIGN_FLIP).astype(np.int32)
    return bits.view(np.float32)


def _np_keys(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, np.float32).view(np.int32)
    bits = np.where(bits == _NEG_ZERO, 0, bits)
    return np.where(bits >= 0, bits, bits ^ _SIGN_FLIP).astype(np.int32)


@struct.dataclass
class QuantileRefinement:
    """One refinement pass: per unit a key interval [lo, hi], the count of values below it and a
    histogram of its `num_subbins` equal slices. Additive, so merges are exact."""

    lo: jax.Array  # (units,) int32 order key, inclusive
    hi: jax.Array  # (units,) int32 order key, inclusive
    shift: jax.Array  # (units,) int32: the slice of key k is (k - lo) >> shift
    below: jax.Array  # (units,) int32 values with key < lo
    counts: jax.Array  # (units, num_subbins) int32 values per slice of [lo, hi]
    num_subbins: int = struct.field(pytree_node=False, default=256)

    @classmethod
    def create(cls, lo: np.ndarray, hi: np.ndarray, num_subbins: int = 256) -> "QuantileRefinement":
        """A pass over the key intervals [lo, hi] (int32 order keys, one per unit)."""
        if num_subbins < 2 or num_subbins & (num_subbins - 1):
            raise ValueError(f"num_subbins must be a power of two >= 2, got {num_subbins}")
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        if lo.shape != hi.shape or lo.ndim != 1 or (hi < lo).any():
            raise ValueError("QuantileRefinement.create: lo and hi must be (units,) with lo <= hi")
        return cls(lo=jnp.asarray(lo, jnp.int32), hi=jnp.asarray(hi, jnp.int32),
                   shift=jnp.asarray(slice_shift(lo, hi, num_subbins), jnp.int32),
                   below=jnp.zeros(lo.shape, jnp.int32), counts=jnp.zeros(lo.shape + (num_subbins,), jnp.int32),
                   num_subbins=num_subbins)

    @property
    def num_units(self) -> int:
        return self.lo.shape[0]

    def update(self, x: jax.Array, mask: jax.Array | None = None) -> "QuantileRefinement":
        """Add a batch x (samples, units); rows where `mask` is False are ignored."""
        x = as_2d(x, self.num_units, "QuantileRefinement.update")
        return _update(self, x, row_mask(mask, x.shape[0]))

    def merge(self, other: "QuantileRefinement") -> "QuantileRefinement":
        return self.replace(below=self.below + other.below, counts=self.counts + other.counts)

    def all_reduce(self, axis_name) -> "QuantileRefinement":
        return self.replace(below=jax.lax.psum(self.below, axis_name), counts=jax.lax.psum(self.counts, axis_name))


def slice_shift(lo: np.ndarray, hi: np.ndarray, num_subbins: int) -> np.ndarray:
    """Per interval, the right shift that maps its keys onto at most `num_subbins` slices."""
    width = np.asarray(hi, np.int64) - np.asarray(lo, np.int64) + 1
    bits = np.ceil(np.log2(width.astype(np.float64))).astype(np.int64)
    return np.maximum(bits - int(math.log2(num_subbins)), 0)


@jax.jit
def _update(state: QuantileRefinement, x: jax.Array, mask: jax.Array) -> QuantileRefinement:
    units, subbins = state.counts.shape
    keys = order_keys(x)  # (rows, units)
    valid = mask[:, None]
    below = state.below + ((keys < state.lo) & valid).sum(0, dtype=jnp.int32)
    inside = (keys >= state.lo) & (keys <= state.hi) & valid
    offset = jax.lax.bitcast_convert_type(keys - state.lo, jnp.uint32) >> state.shift.astype(jnp.uint32)
    slot = jnp.arange(units, dtype=jnp.int32) * subbins + offset.astype(jnp.int32)
    slot = jnp.where(inside, slot, units * subbins)  # outside the interval: dropped
    counts = state.counts.reshape(-1).at[slot.reshape(-1)].add(1, mode="drop")
    return state.replace(below=below, counts=counts.reshape(units, subbins))


def target_ranks(n: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit and quantile, the two ranks numpy's linear quantile reads, (units, 2 * len(q)),
    and the interpolation fractions (units, len(q)); computed in float64."""
    n = np.asarray(n, np.int64)
    r = np.asarray(q, np.float64)[None, :] * np.maximum(n - 1, 0)[:, None].astype(np.float64)
    r0 = np.floor(r).astype(np.int64)
    r1 = np.minimum(r0 + 1, np.maximum(n - 1, 0)[:, None])
    ranks = np.stack([r0, r1], -1).reshape(len(n), -1)
    return ranks, r - r0


class ReplayMismatchError(RuntimeError):
    """The replayed data do not hold the values the sketch saw (stale cache, nondeterminism)."""


def _start(sketch: QuantileSketch, ranks: np.ndarray):
    """From the sketch: known values where a rank sits on an exact bin extreme, else key intervals."""
    counts = np.asarray(sketch.counts, np.int64)
    lo_v, hi_v = np.asarray(sketch.lo), np.asarray(sketch.hi)
    cum = np.cumsum(counts, axis=1)
    units, targets = ranks.shape
    values = np.full((units, targets), np.nan, np.float32)
    lo_k = np.zeros((units, targets), np.int64)
    hi_k = np.zeros((units, targets), np.int64)
    below = np.zeros((units, targets), np.int64)
    for u in range(units):
        j = np.searchsorted(cum[u], ranks[u], side="right")
        j = np.minimum(j, counts.shape[1] - 1)
        first = cum[u, j] - counts[u, j]
        exact_lo = (ranks[u] == first) | (lo_v[u, j] == hi_v[u, j])
        exact_hi = ranks[u] == cum[u, j] - 1
        values[u] = np.where(exact_lo, lo_v[u, j], np.where(exact_hi, hi_v[u, j], np.nan))
        lo_k[u], hi_k[u], below[u] = _np_keys(lo_v[u, j]), _np_keys(hi_v[u, j]), first
    return values, lo_k, hi_k, below


def choose_subbins(num_units: int, budget_bytes: int = 64 << 20) -> int:
    """The largest power of two of slices (at most 2**17, two sketch bins at resolution 128: one
    pass usually finishes) whose counts fit the memory budget."""
    per_slice = 4 * max(1, num_units)
    return int(2 ** np.clip(np.floor(np.log2(max(budget_bytes // per_slice, 2))), 1, 17))


class RefinementPlan:
    """The host side of the refinement for one sketch: which key interval each target rank is
    in, narrowed pass by pass. `state()` makes the next pass's QuantileRefinement (None when
    every value is known), `advance(state)` reads a finished pass, `values` holds the results
    (NaN where not yet known). Several plans can share one replay (e.g. several layers)."""

    def __init__(self, sketch: QuantileSketch, ranks: np.ndarray, num_subbins: int | None = None):
        self.ranks = np.asarray(ranks, np.int64)
        if self.ranks.ndim != 2 or self.ranks.shape[0] != sketch.num_units:
            raise ValueError(f"ranks must be (units={sketch.num_units}, targets), got {self.ranks.shape}")
        self.values, self.lo, self.hi, self._below_start = _start(sketch, self.ranks)
        self.num_subbins = num_subbins or choose_subbins(self.ranks.shape[0])
        self.passes = 0

    @property
    def pending(self) -> int:
        """How many (unit, target) values are not known yet."""
        return int(np.isnan(self.values).sum())

    def state(self) -> QuantileRefinement | None:
        """The next pass's empty state, or None when nothing is left to refine. A unit's interval
        covers its first pending target and every other pending one whose interval lies close
        enough (one histogram then serves both ranks a quantile interpolates between); each pass
        narrows at least the first pending target, so the refinement always ends. Units with
        nothing pending get a one-key interval."""
        todo = np.isnan(self.values)
        if not todo.any():
            return None
        units = self.ranks.shape[0]
        lo, hi = np.zeros(units, np.int64), np.zeros(units, np.int64)
        for u in np.flatnonzero(todo.any(axis=1)):
            pending = np.flatnonzero(todo[u])
            first = pending[0]
            lo[u], hi[u] = self.lo[u, first], self.hi[u, first]
            for t in pending[1:]:
                a, b = min(lo[u], self.lo[u, t]), max(hi[u], self.hi[u, t])
                if b - a + 1 <= 2 * max(hi[u] - lo[u] + 1, self.hi[u, t] - self.lo[u, t] + 1):
                    lo[u], hi[u] = a, b
        return QuantileRefinement.create(lo, hi, self.num_subbins)

    def advance(self, state: QuantileRefinement) -> None:
        """Narrow every pending interval to the slice of the pass's histogram that holds its rank."""
        below = np.asarray(state.below, np.int64)
        counts = np.asarray(state.counts, np.int64)
        shift = np.asarray(state.shift, np.int64)
        hull_lo, hull_hi = np.asarray(state.lo, np.int64), np.asarray(state.hi, np.int64)
        cum = below[:, None] + np.cumsum(counts, axis=-1)
        for u, t in zip(*np.nonzero(np.isnan(self.values))):
            if self.lo[u, t] < hull_lo[u] or self.hi[u, t] > hull_hi[u]:
                continue  # not in this pass's interval: its turn comes next
            r = self.ranks[u, t]
            first = self.passes == 0 and self.lo[u, t] == hull_lo[u] and below[u] != self._below_start[u, t]
            if below[u] > r or cum[u, -1] <= r or first:
                raise ReplayMismatchError(
                    f"unit {u}: the replayed data do not match the sketch (rank {r} expected in keys "
                    f"[{self.lo[u, t]}, {self.hi[u, t]}] after {self._below_start[u, t]} smaller values; the replay "
                    f"counted {below[u]} below and {cum[u, -1] - below[u]} inside): the cached or replayed "
                    "data are not the data the sketch saw (stale cache, or a nondeterministic network)")
            s = int(np.searchsorted(cum[u], r, side="right"))
            new_lo = hull_lo[u] + (s << shift[u])
            new_hi = new_lo + (1 << shift[u]) - 1
            self.lo[u, t], self.hi[u, t] = max(new_lo, self.lo[u, t]), min(new_hi, self.hi[u, t])
            if self.lo[u, t] == self.hi[u, t]:
                self.values[u, t] = key_values(np.array([self.lo[u, t]]))[0]
        self.passes += 1


def exact_order_statistics(sketch: QuantileSketch, ranks: np.ndarray,
                           replay: Callable[[Callable, QuantileRefinement], QuantileRefinement],
                           num_subbins: int | None = None, max_passes: int | None = None,
                           on_pass: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The exact values at integer `ranks` (units, targets) of the data the sketch summarized.

    `replay(step, state)` must run `state = step(state, x, mask)` over the same data (x of shape
    (samples, units)) and return the final state (merged, if the replay is split over devices).
    `on_pass(pass_number, unresolved)` is called before each pass (for progress messages)."""
    plan = RefinementPlan(sketch, ranks, num_subbins)
    step = lambda state, x, mask=None: state.update(x, mask)  # noqa: E731
    if max_passes is None:  # each pass takes log2(num_subbins) bits off a 32-bit key of one target at least
        max_passes = plan.ranks.shape[1] * -(-33 // int(math.log2(plan.num_subbins))) + 1
    for p in range(max_passes):
        state = plan.state()
        if state is None:
            return plan.values
        if on_pass is not None:
            on_pass(p + 1, plan.pending)
        plan.advance(replay(step, state))
    if plan.pending:
        raise RuntimeError(f"exact quantiles unresolved after {max_passes} passes")
    return plan.values


def exact_quantiles(sketch: QuantileSketch, q: Sequence[float] | float,
                    replay: Callable[[Callable, QuantileRefinement], QuantileRefinement],
                    num_subbins: int | None = None, on_pass: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Per-unit quantiles (units, len(q)) with numpy's linear definition, exact for the data the
    sketch saw (see the module docstring for `replay`). NaN for units without data."""
    q = np.atleast_1d(np.asarray(q, np.float64))
    if ((q < 0) | (q > 1) | np.isnan(q)).any():
        raise ValueError(f"quantiles must lie in [0, 1], got {q.tolist()}")
    n = np.asarray(sketch.unit_counts(), np.int64)
    ranks, frac = target_ranks(n, q)
    values = exact_order_statistics(sketch, np.where(n[:, None] > 0, ranks, 0), replay, num_subbins,
                                    on_pass=on_pass).astype(np.float64).reshape(len(n), len(q), 2)
    v0, v1 = values[..., 0], values[..., 1]
    with np.errstate(invalid="ignore"):
        out = np.where(frac > 0, v0 + frac * (v1 - v0), v0)
    return np.where(n[:, None] > 0, out, np.nan).astype(np.float32)
