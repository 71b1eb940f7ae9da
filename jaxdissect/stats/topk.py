"""TopK: the k largest (or smallest) values per unit with the global indices of their samples.

Ties break deterministically towards the smaller sample index, so the result does not depend on
batch order, batch size or how the stream was split across states or devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._util import as_2d, check_no_nan, row_mask

_NO_INDEX = jnp.iinfo(jnp.int32).max


@struct.dataclass
class TopK:
    """Per-unit top-k of a stream; indices are the samples' global dataset indices."""

    keys: jax.Array  # (units, k) float32, sorted ascending: -value if largest else value
    indices: jax.Array  # (units, k) int32 global sample indices (int32 max = empty)
    count: jax.Array  # () int32 rows seen
    largest: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def create(cls, num_units: int, k: int, largest: bool = True) -> "TopK":
        """An empty state keeping k entries per unit."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        return cls(keys=jnp.full((num_units, k), jnp.inf, jnp.float32),
                   indices=jnp.full((num_units, k), _NO_INDEX, jnp.int32),
                   count=jnp.zeros((), jnp.int32), largest=largest)

    @property
    def num_units(self) -> int:
        return self.keys.shape[0]

    @property
    def k(self) -> int:
        return self.keys.shape[1]

    def update(self, values: jax.Array, indices: jax.Array, mask: jax.Array | None = None) -> "TopK":
        """Add a batch of values (samples, units) whose samples have global `indices` (samples,).

        Masked rows are ignored. NaN raises in eager use; under jit NaN entries are left out."""
        values = as_2d(values, self.num_units, "TopK.update")
        check_no_nan(values, "TopK.update")
        indices = jnp.asarray(indices, jnp.int32)
        if indices.shape != (values.shape[0],):
            raise ValueError(f"TopK.update: indices must have shape ({values.shape[0]},), got {indices.shape}")
        return _update(self, values, indices, row_mask(mask, values.shape[0]))

    def merge(self, other: "TopK") -> "TopK":
        """Top-k of both streams (exact; associative and commutative)."""
        if self.keys.shape != other.keys.shape or self.largest != other.largest:
            raise ValueError("cannot merge TopK states of different shapes or directions")
        keys, idx = _select(jnp.concatenate([self.keys, other.keys], 1),
                            jnp.concatenate([self.indices, other.indices], 1), self.k)
        return self.replace(keys=keys, indices=idx, count=self.count + other.count)

    def all_reduce(self, axis_name) -> "TopK":
        """Merge per-device states along a mesh axis (inside shard_map): all-gather, then select."""
        keys, idx = _select(_gather_replicated(self.keys, axis_name),
                            _gather_replicated(self.indices, axis_name), self.k)
        return self.replace(keys=keys, indices=idx, count=jax.lax.psum(self.count, axis_name))

    def result(self) -> tuple[jax.Array, jax.Array]:
        """(values, indices), each (units, k), best first. Empty slots hold -inf/+inf and -1."""
        values = -self.keys if self.largest else self.keys
        return values, jnp.where(self.indices == _NO_INDEX, -1, self.indices)


def _gather_replicated(x: jax.Array, axis_name) -> jax.Array:
    """(units, k) per device -> (units, devices * k) on every device, typed as replicated.

    Each device writes its block into its own slot of a zero buffer and a psum joins them
    (exact: every slot has one nonzero writer), which shard_map knows to be replicated."""
    n = jax.lax.psum(1, axis_name)
    slot = jax.lax.axis_index(axis_name)
    buf = jnp.zeros((n,) + x.shape, x.dtype).at[slot].set(x)
    buf = jax.lax.psum(buf, axis_name)
    return jnp.moveaxis(buf, 0, 1).reshape(x.shape[0], n * x.shape[1])


def _select(keys: jax.Array, indices: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Sort each row by (key, index) and keep the first k."""
    keys, indices = jax.lax.sort((keys, indices), dimension=1, num_keys=2)
    return keys[:, :k], indices[:, :k]


@jax.jit
def _update(state: TopK, values: jax.Array, indices: jax.Array, mask: jax.Array) -> TopK:
    keys = -values.T if state.largest else values.T
    ok = mask[None, :] & ~jnp.isnan(keys)
    keys = jnp.where(ok, keys, jnp.inf)
    idx = jnp.where(ok, jnp.broadcast_to(indices[None, :], keys.shape), _NO_INDEX)
    keys, idx = _select(jnp.concatenate([state.keys, keys], 1), jnp.concatenate([state.indices, idx], 1), state.k)
    return state.replace(keys=keys, indices=idx, count=state.count + mask.sum(dtype=jnp.int32))
