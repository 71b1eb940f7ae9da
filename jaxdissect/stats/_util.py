"""Small helpers shared by the statistics: input checks that behave well under jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    """True while `x` is being traced by jit/vmap/shard_map (its values are unknown)."""
    return isinstance(x, jax.core.Tracer)


def check_no_nan(x, what: str) -> None:
    """Raise a clear error for NaN input in eager use; under jit the caller counts NaNs instead."""
    if is_traced(x):
        return
    arr = np.asarray(x)
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        bad = np.argwhere(np.isnan(arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)))
        cols = sorted(set(int(c) for c in bad[:, 1]))[:10]
        raise ValueError(
            f"{what}: input contains {int(np.isnan(arr).sum())} NaN value(s) "
            f"(first affected units: {cols}); NaN activations cannot be ranked")


def row_mask(mask, n: int) -> jax.Array:
    """A boolean (n,) validity mask; None means every row is valid."""
    if mask is None:
        return jnp.ones((n,), bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {mask.shape}")
    return mask


def as_2d(x, num_units: int, what: str) -> jax.Array:
    """Check that x is (samples, num_units); return it as a float32 array."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != num_units:
        raise ValueError(f"{what}: expected shape (samples, {num_units}), got {tuple(x.shape)}")
    return x.astype(jnp.float32)
