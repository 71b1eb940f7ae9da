"""Resampling layer activations to the segmentation grid, with the original's geometry.

The original resamples with `grid_sample(bilinear, zeros padding, align_corners=True)` on a
fixed grid. Bilinear sampling is separable, so here it is two small interpolation matrices
(target x source, one per axis) applied with einsum: exact, jit-able, and cheap on any device.

Geometry: a target pixel t samples source coordinate (t - offset) / scale. By default (no
receptive-field information) scale = target / source and offset = scale / 2 - 1/2, which aligns
pixel centres. With the receptive-field geometry of the layers up to the dissected one (a list of
(kernel, dilation, stride, padding) per layer), scale and offset come from composing the layers
and are rescaled from image pixels to target pixels by (target - 1) / (image - 1).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ConvConfig = tuple[int, int, int, int]  # kernel, dilation, stride, padding (one axis)


def receptive_field_scale_offset(convs: Sequence[ConvConfig]) -> tuple[float, float]:
    """Compose layers into input = output * scale + offset (receptive-field centres)."""
    scale, offset = 1.0, 0.0
    for kernel, dilation, stride, padding in reversed(convs):
        scale, offset = scale * stride, offset * stride + (kernel - 1) * dilation / 2.0 - padding
    return scale, offset


def conv_output_size(convs: Sequence[ConvConfig], size: int) -> int:
    """Spatial size after the layers (PyTorch's conv/pool output-size formula)."""
    for kernel, dilation, stride, padding in convs:
        size = 1 + (size + 2 * padding - dilation * (kernel - 1) - 1) // stride
    return size


def source_coordinates(data_size: int, target_size: int, image_size: int | None = None,
                       scale_offset: tuple[float, float] | None = None) -> np.ndarray:
    """Source index (in data pixels, may be fractional or out of range) of every target pixel."""
    if scale_offset is None:
        scale = target_size / data_size
        offset = 0.5 * scale - 0.5
    else:
        scale, offset = scale_offset
        if image_size is not None:
            ratio = (target_size - 1) / (image_size - 1)
            scale, offset = scale * ratio, offset * ratio
    t = np.arange(target_size, dtype=np.float64)
    # The original normalizes by max(1, D - 1) and grid_sample undoes it by (D - 1).
    norm = (t - offset) * (2.0 / (scale * max(1, data_size - 1))) - 1.0
    return (norm + 1.0) / 2.0 * (data_size - 1)


def interpolation_matrix(coords: np.ndarray, data_size: int) -> np.ndarray:
    """(target, data) weights of linear interpolation at `coords`, zero outside the data."""
    nearest = np.round(coords)
    coords = np.where(np.abs(coords - nearest) < 1e-9, nearest, coords)  # exact where the grids align
    lo = np.floor(coords).astype(np.int64)
    frac = coords - lo
    m = np.zeros((len(coords), data_size), np.float64)
    for idx, w in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (idx >= 0) & (idx < data_size)
        m[np.nonzero(ok)[0], idx[ok]] += w[ok]
    return m.astype(np.float32)


@struct.dataclass
class Upsampler:
    """A fixed bilinear resampling from a (h, w) grid to a (H, W) grid; call it on NHWC arrays."""

    wy: jax.Array  # (H, h)
    wx: jax.Array  # (W, w)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, h, w, C) -> (N, H, W, C)."""
        if x.shape[1:3] != (self.wy.shape[1], self.wx.shape[1]):
            raise ValueError(f"Upsampler expects (N, {self.wy.shape[1]}, {self.wx.shape[1]}, C), got {x.shape}")
        hi = jax.lax.Precision.HIGHEST
        y = jnp.einsum("Hh,nhwc->nHwc", self.wy, x.astype(jnp.float32), precision=hi)
        return jnp.einsum("Ww,nHwc->nHWc", self.wx, y, precision=hi)

    @property
    def target_shape(self) -> tuple[int, int]:
        return self.wy.shape[0], self.wx.shape[0]


def upsampler(target_shape: tuple[int, int], data_shape: tuple[int, int],
              image_size: tuple[int, int] | None = None,
              convolutions: Sequence[Sequence[ConvConfig]] | None = None) -> Upsampler:
    """The original's upsampler: default centre-aligned grid, or receptive-field geometry from
    `convolutions` = (y layers, x layers), each a list of (kernel, dilation, stride, padding)."""
    mats = []
    for axis in range(2):
        so = receptive_field_scale_offset(convolutions[axis]) if convolutions is not None else None
        img = image_size[axis] if (image_size is not None and so is not None) else None
        coords = source_coordinates(data_shape[axis], target_shape[axis], img, so)
        mats.append(jnp.asarray(interpolation_matrix(coords, data_shape[axis])))
    return Upsampler(wy=mats[0], wx=mats[1])


# Receptive-field geometry of the Places AlexNet (reference section 7), per dissectable layer:
# only the layers up to the dissected one count (the original always included pool5).
_ALEXNET_LAYERS = (("conv1", (11, 1, 4, 0)), ("pool1", (3, 1, 2, 0)), ("conv2", (5, 1, 1, 2)),
                   ("pool2", (3, 1, 2, 0)), ("conv3", (3, 1, 1, 1)), ("conv4", (3, 1, 1, 1)),
                   ("conv5", (3, 1, 1, 1)), ("pool5", (3, 1, 2, 0)))


def layer_geometry(model_name: str, layer: str) -> tuple[list[ConvConfig], list[ConvConfig]] | None:
    """(y, x) receptive-field layers up to `layer` for models dissected with that geometry
    (the original used it for AlexNet only); None means the default centre-aligned grid."""
    if model_name.startswith("alexnet"):
        base = layer.split(".")[0]
        names = [n for n, _ in _ALEXNET_LAYERS]
        if base not in names:
            return None
        convs = [c for _, c in _ALEXNET_LAYERS[:names.index(base) + 1]]
        return convs, convs
    return None
