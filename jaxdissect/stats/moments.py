"""Moments and CrossCovariance: numerically stable parallel mean/variance/covariance.

Batches are centred on their own mean and combined with Chan et al.'s pairwise update, which is
also the merge, so per-device states combine with the same arithmetic as batches do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._util import as_2d, check_no_nan, row_mask


def _combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's pairwise combination of (count, mean, centred second moment)."""
    n = n_a + n_b
    nf = jnp.maximum(n, 1).astype(jnp.float32)
    delta = mean_b - mean_a
    w = n_b.astype(jnp.float32) / nf
    mean = mean_a + delta * w
    m2 = m2_a + m2_b + delta * delta * n_a.astype(jnp.float32) * w
    return n, mean, m2


@struct.dataclass
class Moments:
    """Per-unit count, mean and variance of a stream of (samples, units) batches."""

    n: jax.Array  # (units,) int32 non-NaN values seen
    mean_: jax.Array  # (units,) float32
    m2: jax.Array  # (units,) float32 sum of squared deviations
    nan_count: jax.Array  # (units,) int32

    @classmethod
    def create(cls, num_units: int) -> "Moments":
        z = jnp.zeros((num_units,), jnp.float32)
        zi = jnp.zeros((num_units,), jnp.int32)
        return cls(n=zi, mean_=z, m2=z, nan_count=zi)

    @property
    def num_units(self) -> int:
        return self.n.shape[0]

    def update(self, x: jax.Array, mask: jax.Array | None = None) -> "Moments":
        """Add a batch x (samples, units); masked rows are ignored; NaN raises eagerly, is counted under jit."""
        x = as_2d(x, self.num_units, "Moments.update")
        check_no_nan(x, "Moments.update")
        return _moments_update(self, x, row_mask(mask, x.shape[0]))

    def merge(self, other: "Moments") -> "Moments":
        n, mean, m2 = _combine(self.n, self.mean_, self.m2, other.n, other.mean_, other.m2)
        return Moments(n=n, mean_=mean, m2=m2, nan_count=self.nan_count + other.nan_count)

    def all_reduce(self, axis_name) -> "Moments":
        """Merge per-device states along a mesh axis (inside shard_map)."""
        n = jax.lax.psum(self.n, axis_name)
        nf = jnp.maximum(n, 1).astype(jnp.float32)
        mean = jax.lax.psum(self.mean_ * self.n.astype(jnp.float32), axis_name) / nf
        m2 = jax.lax.psum(self.m2 + self.n.astype(jnp.float32) * (self.mean_ - mean) ** 2, axis_name)
        return Moments(n=n, mean_=mean, m2=m2, nan_count=jax.lax.psum(self.nan_count, axis_name))

    def count(self) -> jax.Array:
        return self.n

    def mean(self) -> jax.Array:
        """Per-unit mean (NaN without data)."""
        return jnp.where(self.n > 0, self.mean_, jnp.nan)

    def variance(self, ddof: int = 1) -> jax.Array:
        """Per-unit variance, sum of squared deviations / (n - ddof) (ddof=1 as the original)."""
        return jnp.where(self.n > ddof, self.m2 / jnp.maximum(self.n - ddof, 1).astype(jnp.float32), jnp.nan)

    def stdev(self, ddof: int = 1) -> jax.Array:
        return jnp.sqrt(self.variance(ddof))


@jax.jit
def _moments_update(state: Moments, x: jax.Array, mask: jax.Array) -> Moments:
    nan = jnp.isnan(x)
    valid = mask[:, None] & ~nan
    n_b = valid.sum(axis=0, dtype=jnp.int32)
    xs = jnp.where(valid, x, 0.0)
    mean_b = xs.sum(axis=0) / jnp.maximum(n_b, 1).astype(jnp.float32)
    m2_b = (jnp.where(valid, x - mean_b, 0.0) ** 2).sum(axis=0)
    n, mean, m2 = _combine(state.n, state.mean_, state.m2, n_b, mean_b, m2_b)
    return Moments(n=n, mean_=mean, m2=m2, nan_count=state.nan_count + (nan & mask[:, None]).sum(0, dtype=jnp.int32))


@struct.dataclass
class CrossCovariance:
    """Means, variances, covariance and correlation between two sets of units (a, b)."""

    n: jax.Array  # () int32 rows seen (rows with any NaN are left out)
    mean_a: jax.Array  # (A,)
    mean_b: jax.Array  # (B,)
    m2_a: jax.Array  # (A,)
    m2_b: jax.Array  # (B,)
    cmom: jax.Array  # (A, B) sum of products of deviations
    nan_rows: jax.Array  # () int32

    @classmethod
    def create(cls, num_a: int, num_b: int) -> "CrossCovariance":
        za, zb = jnp.zeros((num_a,), jnp.float32), jnp.zeros((num_b,), jnp.float32)
        z = jnp.zeros((), jnp.int32)
        return cls(n=z, mean_a=za, mean_b=zb, m2_a=za, m2_b=zb,
                   cmom=jnp.zeros((num_a, num_b), jnp.float32), nan_rows=z)

    def update(self, a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> "CrossCovariance":
        """Add paired batches a (samples, A) and b (samples, B)."""
        a = as_2d(a, self.mean_a.shape[0], "CrossCovariance.update (a)")
        b = as_2d(b, self.mean_b.shape[0], "CrossCovariance.update (b)")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"CrossCovariance.update: a has {a.shape[0]} rows, b has {b.shape[0]}")
        check_no_nan(a, "CrossCovariance.update (a)")
        check_no_nan(b, "CrossCovariance.update (b)")
        return _cross_update(self, a, b, row_mask(mask, a.shape[0]))

    def merge(self, other: "CrossCovariance") -> "CrossCovariance":
        n = self.n + other.n
        nf = jnp.maximum(n, 1).astype(jnp.float32)
        da, db = other.mean_a - self.mean_a, other.mean_b - self.mean_b
        w = other.n.astype(jnp.float32) / nf
        scale = self.n.astype(jnp.float32) * w
        return CrossCovariance(
            n=n, mean_a=self.mean_a + da * w, mean_b=self.mean_b + db * w,
            m2_a=self.m2_a + other.m2_a + da * da * scale, m2_b=self.m2_b + other.m2_b + db * db * scale,
            cmom=self.cmom + other.cmom + jnp.outer(da, db) * scale, nan_rows=self.nan_rows + other.nan_rows)

    def all_reduce(self, axis_name) -> "CrossCovariance":
        """Merge per-device states along a mesh axis (inside shard_map)."""
        nf_local = self.n.astype(jnp.float32)
        n = jax.lax.psum(self.n, axis_name)
        nf = jnp.maximum(n, 1).astype(jnp.float32)
        mean_a = jax.lax.psum(self.mean_a * nf_local, axis_name) / nf
        mean_b = jax.lax.psum(self.mean_b * nf_local, axis_name) / nf
        da, db = self.mean_a - mean_a, self.mean_b - mean_b
        return CrossCovariance(
            n=n, mean_a=mean_a, mean_b=mean_b,
            m2_a=jax.lax.psum(self.m2_a + nf_local * da * da, axis_name),
            m2_b=jax.lax.psum(self.m2_b + nf_local * db * db, axis_name),
            cmom=jax.lax.psum(self.cmom + nf_local * jnp.outer(da, db), axis_name),
            nan_rows=jax.lax.psum(self.nan_rows, axis_name))

    def mean(self) -> tuple[jax.Array, jax.Array]:
        return self.mean_a, self.mean_b

    def variance(self) -> tuple[jax.Array, jax.Array]:
        d = jnp.maximum(self.n - 1, 1).astype(jnp.float32)
        return self.m2_a / d, self.m2_b / d

    def covariance(self) -> jax.Array:
        """(A, B) sample covariance, / (n - 1) as the original."""
        return self.cmom / jnp.maximum(self.n - 1, 1).astype(jnp.float32)

    def correlation(self) -> jax.Array:
        """(A, B) Pearson correlation; 0 where a unit has no variance (the original set NaN to 0)."""
        denom = jnp.sqrt(jnp.outer(self.m2_a, self.m2_b))
        return jnp.where(denom > 0, self.cmom / jnp.where(denom > 0, denom, 1.0), 0.0)


@jax.jit
def _cross_update(state: CrossCovariance, a, b, mask) -> CrossCovariance:
    bad = jnp.isnan(a).any(1) | jnp.isnan(b).any(1)
    valid = mask & ~bad
    n_b = valid.sum(dtype=jnp.int32)
    nf = jnp.maximum(n_b, 1).astype(jnp.float32)
    v = valid[:, None]
    a0, b0 = jnp.where(v, a, 0.0), jnp.where(v, b, 0.0)
    mean_a, mean_b = a0.sum(0) / nf, b0.sum(0) / nf
    ca, cb = jnp.where(v, a - mean_a, 0.0), jnp.where(v, b - mean_b, 0.0)
    batch = CrossCovariance(n=n_b, mean_a=mean_a, mean_b=mean_b, m2_a=(ca * ca).sum(0), m2_b=(cb * cb).sum(0),
                            cmom=jnp.matmul(ca.T, cb, precision=jax.lax.Precision.HIGHEST),
                            nan_rows=(bad & mask).sum(dtype=jnp.int32))
    return state.merge(batch)
