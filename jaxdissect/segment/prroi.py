"""Exact pooling and resampling of NHWC maps: precise RoI pooling, and torch-equal adaptive
average pooling and bilinear resizing, each written as small weight matrices so they are exact,
jit-able and cheap (one einsum per axis).

Precise RoI pooling (Jiang et al. 2018) averages the bilinear interpolation of the feature
samples (at integer coordinates, zero outside the map) over each bin. The interpolation is a sum
of separable tent functions, so the integral over a bin is, per axis, the integral of a tent:
a closed form (its antiderivative is piecewise quadratic). No sampling, no approximation.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _tent_antiderivative(u: jax.Array) -> jax.Array:
    """F(u) = integral of max(0, 1 - |t|) for t from -inf to u."""
    u = jnp.clip(u, -1.0, 1.0)
    return jnp.where(u <= 0, 0.5 * (u + 1.0) ** 2, 1.0 - 0.5 * (1.0 - u) ** 2)


def _tent_integrals(start: jax.Array, end: jax.Array, size: int) -> jax.Array:
    """(..., size) integrals over [start, end] of the tent centred on each sample 0..size-1."""
    centres = jnp.arange(size, dtype=start.dtype)
    return (_tent_antiderivative(end[..., None] - centres)
            - _tent_antiderivative(start[..., None] - centres))


def prroi_pool2d(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int],
                 spatial_scale: float = 1.0) -> jax.Array:
    """Precise RoI pooling of one box per image.

    features: (N, H, W, C); boxes: (N, 4) as (x0, y0, x1, y1) in input coordinates (scaled by
    `spatial_scale` onto the feature grid, whose samples sit at integer coordinates).
    Returns (N, ph, pw, C): each bin's exact mean of the bilinear interpolation; 0 for an empty bin.
    """
    n, h, w, _ = features.shape
    ph, pw = output_size
    if boxes.shape != (n, 4):
        raise ValueError(f"prroi_pool2d: boxes must have shape ({n}, 4), got {boxes.shape}")
    dtype = jnp.promote_types(features.dtype, jnp.float32)
    boxes = boxes.astype(dtype) * spatial_scale
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    bin_w = jnp.maximum(x1 - x0, 0.0) / pw
    bin_h = jnp.maximum(y1 - y0, 0.0) / ph
    ys = y0[:, None] + bin_h[:, None] * jnp.arange(ph + 1, dtype=dtype)  # (N, ph+1) bin edges
    xs = x0[:, None] + bin_w[:, None] * jnp.arange(pw + 1, dtype=dtype)
    wy = _tent_integrals(ys[:, :-1], ys[:, 1:], h)  # (N, ph, H)
    wx = _tent_integrals(xs[:, :-1], xs[:, 1:], w)  # (N, pw, W)
    area = bin_w * bin_h
    scale = jnp.where(area > 0, 1.0 / jnp.where(area > 0, area, 1.0), 0.0)
    out = jnp.einsum("nph,nhwc,nqw->npqc", wy, features.astype(dtype), wx,
                     precision=jax.lax.Precision.HIGHEST)
    return (out * scale[:, None, None, None]).astype(features.dtype)


def prroi_pool_full(features: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """Precise RoI pooling over the whole map, the box (0, 0, W, H) as UPerNet's PPM uses it."""
    n, h, w, _ = features.shape
    box = jnp.asarray([0.0, 0.0, float(w), float(h)], jnp.float32)
    return prroi_pool2d(features, jnp.broadcast_to(box, (n, 4)), output_size)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging weights of torch's AdaptiveAvgPool along one axis: output i averages
    inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1."""
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of torch's bilinear interpolate(size=..., align_corners=False) along one
    axis: source = (i + 0.5) * in/out - 0.5, clamped at 0, edge sample repeated."""
    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


def _apply_axes(x: jax.Array, my: np.ndarray, mx: np.ndarray) -> jax.Array:
    my = jnp.asarray(my, x.dtype)
    mx = jnp.asarray(mx, x.dtype)
    return jnp.einsum("ph,nhwc,qw->npqc", my, x, mx, precision=jax.lax.Precision.HIGHEST)


def adaptive_avg_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d on an NHWC array (exact, including up-sizing by repetition)."""
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    return _apply_axes(x, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch's F.interpolate(mode='bilinear', align_corners=False) to `size` on NHWC (no antialias)."""
    _, h, w, _ = x.shape
    if (h, w) == tuple(size):
        return x
    return _apply_axes(x, bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1]))
