"""SampleRecords: one value per sample of a pass (a prediction, a norm, a vector of peaks), kept
at the sample's position in a fixed-size array.

Each sample is recorded once, by whichever device or process saw it, so states hold disjoint
positions: merging adds them (or-s booleans), and across devices that is one psum. Positions
nobody filled stay zero (and `filled` False), which is what makes the sum exact: every position
is one value plus zeros.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._util import row_mask
from jaxdissect.stats.io import register_state_class


@register_state_class
@struct.dataclass
class SampleRecords:
    """Per-sample values of a stream of `num_samples` samples, at the samples' positions."""

    values: jax.Array  # (num_samples, *shape) any dtype; zeros where not filled
    filled: jax.Array  # (num_samples,) bool: the sample's value has been recorded

    @classmethod
    def create(cls, num_samples: int, shape: tuple[int, ...] = (), dtype=jnp.float32) -> "SampleRecords":
        """An empty state for `num_samples` samples, each recording a value of `shape` and `dtype`."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        return cls(values=jnp.zeros((num_samples, *tuple(shape)), dtype), filled=jnp.zeros((num_samples,), bool))

    @property
    def num_samples(self) -> int:
        return self.filled.shape[0]

    def update(self, values: jax.Array, positions: jax.Array, mask: jax.Array | None = None) -> "SampleRecords":
        """Record `values` (N, *shape) of the samples at `positions` (N,) ints in [0, num_samples).
        Rows where mask is False, and positions out of range, are ignored. A position recorded
        again is overwritten (within one state; across states positions must be disjoint)."""
        values = jnp.asarray(values)
        positions = jnp.asarray(positions, jnp.int32)
        if values.shape[1:] != self.values.shape[1:] or positions.shape != values.shape[:1]:
            raise ValueError(f"SampleRecords.update: values must be (N, {', '.join(map(str, self.values.shape[1:]))}) "
                             f"with positions (N,), got {values.shape} and {positions.shape}")
        n = self.num_samples
        ok = row_mask(mask, positions.shape[0]) & (positions >= 0) & (positions < n)
        where = jnp.where(ok, positions, n)  # n: dropped
        return SampleRecords(values=self.values.at[where].set(values.astype(self.values.dtype), mode="drop"),
                             filled=self.filled.at[where].set(True, mode="drop"))

    def merge(self, other: "SampleRecords") -> "SampleRecords":
        """The records of both (disjoint positions: values added, booleans or-ed)."""
        return jax.tree.map(_add, self, other)

    def all_reduce(self, axis_name) -> "SampleRecords":
        return jax.tree.map(lambda a: _psum(a, axis_name), self)

    def result(self) -> tuple[jax.Array, jax.Array]:
        """(values (num_samples, *shape), filled (num_samples,))."""
        return self.values, self.filled


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
    return a | b if a.dtype == jnp.bool_ else a + b


def _psum(a: jax.Array, axis_name) -> jax.Array:
    if a.dtype == jnp.bool_:
        return jax.lax.psum(a.astype(jnp.int32), axis_name) > 0
    return jax.lax.psum(a, axis_name)


__all__ = ["SampleRecords"]
