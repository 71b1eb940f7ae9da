"""Unit thumbnails: a top image with the unit's region outlined, strips of them, and their files.

The look is the original's: the region where the unit fires keeps the image, a 1-pixel yellow
border runs just outside it, and everything else is dimmed to half brightness.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from jaxdissect.atomic import atomic_write_bytes

BORDER_COLOR = np.array([255, 255, 0], np.uint8)  # yellow
STRIP_BACKGROUND = 255  # white gaps between the images of a strip


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    return image


def outside_border(mask: np.ndarray) -> np.ndarray:
    """Pixels outside `mask` with at least one of their 8 neighbours inside it."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)
    h, w = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy:dy + h, dx:dx + w]
    return grown & ~mask


def masked_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image inside `mask`, a yellow 1-pixel border outside it, the rest at half brightness."""
    image = _check_rgb(image, "masked_image: image")
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != image.shape[:2]:
        raise ValueError(f"masked_image: mask must be a bool array of shape {image.shape[:2]}, "
                         f"got {mask.dtype} {mask.shape}")
    # Half brightness rounds down, as the original's float product cast to bytes did.
    out = image // 2
    out[mask] = image[mask]
    out[outside_border(mask)] = BORDER_COLOR
    return out


def unit_strip(images: Sequence[np.ndarray], gap: int = 5) -> np.ndarray:
    """Images of one size side by side, separated by white gaps of `gap` pixels."""
    if len(images) == 0:
        raise ValueError("unit_strip: no images given")
    if gap < 0:
        raise ValueError(f"unit_strip: gap must be >= 0, got {gap}")
    images = [_check_rgb(im, f"unit_strip: image {i}") for i, im in enumerate(images)]
    h, w, _ = images[0].shape
    for i, im in enumerate(images):
        if im.shape != images[0].shape:
            raise ValueError(f"unit_strip: image {i} has shape {im.shape}, image 0 has {images[0].shape}")
    n = len(images)
    strip = np.full((h, n * w + (n - 1) * gap, 3), STRIP_BACKGROUND, np.uint8)
    for i, im in enumerate(images):
        x = i * (w + gap)
        strip[:, x:x + w] = im
    return strip


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: bilinear for a uint8 (H, W, 3) image, nearest for a bool mask."""
    if int(size) < 1:
        raise ValueError(f"thumbnail: size must be >= 1, got {size}")
    image = np.asarray(image)
    if image.dtype == bool and image.ndim == 2:
        pil = Image.fromarray(image.astype(np.uint8) * 255)
        return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST)) > 127
    image = _check_rgb(image, "thumbnail: image")
    if image.shape[:2] == (size, size):
        return image.copy()
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def unit_image_path(directory: str | os.PathLike, unit: int) -> str:
    """Where the strip of `unit` lives: <directory>/image/unit<N>.jpg (the original's names)."""
    return os.path.join(os.fspath(directory), "image", f"unit{int(unit)}.jpg")


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 (H, W, 3) image; no chroma subsampling, so 1-pixel borders stay yellow."""
    buffer = io.BytesIO()
    Image.fromarray(_check_rgb(image, "encode_jpeg: image")).save(
        buffer, format="JPEG", quality=quality, optimize=True, subsampling=0)
    return buffer.getvalue()


def save_unit_images(directory: str | os.PathLike, strips: Mapping[int, np.ndarray],
                     quality: int = 95) -> list[str]:
    """Write each strip to <directory>/image/unit<N>.jpg atomically; files already there are kept.

    Returns the paths written this call (a resumed run skips finished units).
    """
    written = []
    for unit, strip in strips.items():
        path = unit_image_path(directory, unit)
        if os.path.exists(path):
            continue
        atomic_write_bytes(path, encode_jpeg(strip, quality))
        written.append(path)
    return written
