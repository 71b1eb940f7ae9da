"""TopK: the k largest (or smallest) values per unit with the global indices of their samples.

Ties break deterministically towards the smaller sample index, so the result does not depend on
batch order, batch size or how the stream was split across states or devices. A state may carry
a payload per kept entry (e.g. the unit's activation map in that sample, for thumbnails): it
follows its entry through updates and merges.
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
    payload: jax.Array | None = None  # (units, k, *payload_shape) or None: data kept with each entry
    largest: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def create(cls, num_units: int, k: int, largest: bool = True, payload_shape: tuple[int, ...] | None = None,
               payload_dtype=jnp.float32) -> "TopK":
        """An empty state keeping k entries per unit; with `payload_shape`, each entry also keeps a
        payload of that shape (zeros where empty)."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        payload = None if payload_shape is None else jnp.zeros((num_units, k, *payload_shape), payload_dtype)
        return cls(keys=jnp.full((num_units, k), jnp.inf, jnp.float32),
                   indices=jnp.full((num_units, k), _NO_INDEX, jnp.int32),
                   count=jnp.zeros((), jnp.int32), payload=payload, largest=largest)

    @property
    def num_units(self) -> int:
        return self.keys.shape[0]

    @property
    def k(self) -> int:
        return self.keys.shape[1]

    def update(self, values: jax.Array, indices: jax.Array, mask: jax.Array | None = None,
               payload: jax.Array | None = None) -> "TopK":
        """Add a batch of values (samples, units) whose samples have global `indices` (samples,).

        With a payload state, `payload` (samples, units, *payload_shape) gives each (sample, unit)
        entry's payload. Masked rows are ignored. NaN raises in eager use; under jit NaN entries
        are left out."""
        values = as_2d(values, self.num_units, "TopK.update")
        check_no_nan(values, "TopK.update")
        indices = jnp.asarray(indices, jnp.int32)
        if indices.shape != (values.shape[0],):
            raise ValueError(f"TopK.update: indices must have shape ({values.shape[0]},), got {indices.shape}")
        if (payload is None) != (self.payload is None):
            raise ValueError("TopK.update: give a payload exactly when the state was created with payload_shape")
        if payload is not None:
            expected = (values.shape[0], self.num_units) + self.payload.shape[2:]
            if tuple(payload.shape) != expected:
                raise ValueError(f"TopK.update: payload must have shape {expected}, got {tuple(payload.shape)}")
            payload = jnp.swapaxes(jnp.asarray(payload, self.payload.dtype), 0, 1)
        return _update(self, values, indices, row_mask(mask, values.shape[0]), payload)

    def merge(self, other: "TopK") -> "TopK":
        """Top-k of both streams (exact; associative and commutative)."""
        if self.keys.shape != other.keys.shape or self.largest != other.largest or \
                (self.payload is None) != (other.payload is None):
            raise ValueError("cannot merge TopK states of different shapes, directions or payloads")
        payload = None if self.payload is None else jnp.concatenate([self.payload, other.payload], 1)
        keys, idx, payload = _select(jnp.concatenate([self.keys, other.keys], 1),
                                     jnp.concatenate([self.indices, other.indices], 1), self.k, payload)
        return self.replace(keys=keys, indices=idx, payload=payload, count=self.count + other.count)

    def all_reduce(self, axis_name) -> "TopK":
        """Merge per-device states along a mesh axis (inside shard_map): all-gather, then select."""
        payload = None if self.payload is None else _gather_replicated(self.payload, axis_name)
        keys, idx, payload = _select(_gather_replicated(self.keys, axis_name),
                                     _gather_replicated(self.indices, axis_name), self.k, payload)
        return self.replace(keys=keys, indices=idx, payload=payload, count=jax.lax.psum(self.count, axis_name))

    def result(self) -> tuple[jax.Array, jax.Array]:
        """(values, indices), each (units, k), best first. Empty slots hold -inf/+inf and -1."""
        values = -self.keys if self.largest else self.keys
        return values, jnp.where(self.indices == _NO_INDEX, -1, self.indices)


def _gather_replicated(x: jax.Array, axis_name) -> jax.Array:
    """(units, k, ...) per device -> (units, devices * k, ...) on every device, typed as replicated.

    Each device writes its block into its own slot of a zero buffer and a psum joins them
    (exact: every slot has one nonzero writer), which shard_map knows to be replicated."""
    n = jax.lax.psum(1, axis_name)
    slot = jax.lax.axis_index(axis_name)
    buf = jnp.zeros((n,) + x.shape, x.dtype).at[slot].set(x)
    buf = jax.lax.psum(buf, axis_name)
    return jnp.moveaxis(buf, 0, 1).reshape(x.shape[0], n * x.shape[1], *x.shape[2:])


def _select(keys: jax.Array, indices: jax.Array, k: int, payload: jax.Array | None = None):
    """Sort each row by (key, index) and keep the first k (and their payloads)."""
    order = jnp.broadcast_to(jnp.arange(keys.shape[1], dtype=jnp.int32), keys.shape)
    keys, indices, order = jax.lax.sort((keys, indices, order), dimension=1, num_keys=2)
    if payload is not None:
        take = order[:, :k].reshape(order.shape[0], k, *([1] * (payload.ndim - 2)))
        payload = jnp.take_along_axis(payload, take, axis=1)
    return keys[:, :k], indices[:, :k], payload


@jax.jit
def _update(state: TopK, values: jax.Array, indices: jax.Array, mask: jax.Array, payload=None) -> TopK:
    keys = -values.T if state.largest else values.T
    ok = mask[None, :] & ~jnp.isnan(keys)
    keys = jnp.where(ok, keys, jnp.inf)
    idx = jnp.where(ok, jnp.broadcast_to(indices[None, :], keys.shape), _NO_INDEX)
    if payload is not None:
        payload = jnp.concatenate([state.payload, payload], 1)
    keys, idx, payload = _select(jnp.concatenate([state.keys, keys], 1), jnp.concatenate([state.indices, idx], 1),
                                 state.k, payload)
    return state.replace(keys=keys, indices=idx, payload=payload, count=state.count + mask.sum(dtype=jnp.int32))
