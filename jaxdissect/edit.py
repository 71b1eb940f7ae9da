"""Edits as data: what to do to a layer's units, passed to `jaxdissect.capture(..., edits=...)`.

Every edit is a pytree (its arrays are traced jit arguments, so one compilation serves every edit
of the same shapes) with `__call__(x) -> x` on the layer's NHWC (or (N, C)) output. Low-rank
arrays broadcast the original's way, aligned on the channel axis: a (C,) vector applies to every
position of every image, an (H, W, C) array to every image, a scalar to everything.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def _align(value: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a low-rank edit array against x (..., C): trailing axes line up."""
    value = jnp.asarray(value, x.dtype)
    if value.ndim > x.ndim:
        raise ValueError(f"edit array of shape {value.shape} has more axes than the layer output {x.shape}")
    for v, d in zip(value.shape[::-1], x.shape[::-1]):
        if v not in (1, d):
            units = (f"; its last axis must be the layer's {x.shape[-1]} units (e.g. num_units={x.shape[-1]})"
                     if value.shape[-1] != x.shape[-1] else "")
            raise ValueError(f"edit array of shape {value.shape} does not fit the layer output {x.shape}{units}")
    return value.reshape((1,) * (x.ndim - value.ndim) + value.shape)


@struct.dataclass
class Replace:
    """x * (1 - ablation) + replacement * ablation (the original's rule)."""

    ablation: jax.Array
    replacement: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        a = _align(self.ablation, x)
        return x * (1 - a) + _align(self.replacement, x) * a


@struct.dataclass
class Ablate:
    """Zero the units where `mask` (a (C,) 0/1 vector, or fractional for partial ablation) is set."""

    mask: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * (1 - _align(self.mask, x))


@struct.dataclass
class Rule:
    """Any user rule: `fn(x, params) -> x`, with traced `params` (a pytree) and a static fn."""

    params: Any
    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x, self.params)


def unit_mask(units: Sequence[int] | jax.Array, num_units: int, dtype=jnp.float32) -> jax.Array:
    """A (num_units,) 0/1 vector with ones at `units`."""
    if not isinstance(units, jax.core.Tracer):  # concrete units are checked (JAX drops out-of-range ones)
        bad = [int(u) for u in np.asarray(units).reshape(-1) if not 0 <= int(u) < num_units]
        if bad:
            raise ValueError(f"units {bad} out of range for a layer of {num_units} units (0..{num_units - 1})")
    units = jnp.asarray(units, jnp.int32).reshape(-1)
    return jnp.zeros((num_units,), dtype).at[units].set(1)


def ablate(units: Sequence[int] | jax.Array, num_units: int) -> Ablate:
    """Zero the given units of a layer with `num_units` channels."""
    return Ablate(unit_mask(units, num_units))


def keep_only(units: Sequence[int] | jax.Array, num_units: int) -> Ablate:
    """Zero every unit except the given ones."""
    return Ablate(1 - unit_mask(units, num_units))


def replace(values: jax.Array, where: jax.Array) -> Replace:
    """Set the layer to `values` where `where` is 1 (both broadcast against the output)."""
    return Replace(ablation=jnp.asarray(where, jnp.float32), replacement=jnp.asarray(values, jnp.float32))


def insert(units: Sequence[int] | jax.Array, values: jax.Array, location: jax.Array, num_units: int) -> Replace:
    """Switch `units` on: set them to `values` ((len(units),) or (num_units,)) at the spatial
    positions where `location` (H, W) is 1, leaving everything else untouched."""
    mask = unit_mask(units, num_units)
    values = jnp.asarray(values, jnp.float32)
    if values.shape != (num_units,):
        values = jnp.zeros((num_units,), jnp.float32).at[jnp.asarray(units, jnp.int32)].set(values)
    a = jnp.asarray(location, jnp.float32)[..., None] * mask  # (H, W, C)
    return Replace(ablation=a, replacement=values)
