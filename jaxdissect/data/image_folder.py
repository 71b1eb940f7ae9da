"""A folder of images as a dataset, prepared as the original prepared Places365 val.

Files are found recursively and sorted, then shuffled with Python's random.Random(1) (the
original's order); the class of an image is its parent folder. Each image is resized to a square
(256 x 256, distorting the aspect ratio as the original did) and centre-cropped. Grayscale, RGBA
and palette images are converted to RGB; unreadable or corrupt files are reported, not fatal.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def find_images(root: str | os.PathLike) -> list[str]:
    """Relative paths of the image files under root, sorted."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(found)


def prepare_image(im: Image.Image, resize: int, crop: int) -> np.ndarray:
    """uint8 (crop, crop, 3) RGB: square resize (bilinear) then centre crop, as the original."""
    im = im.convert("RGB").resize((resize, resize), Image.BILINEAR)
    left = (resize - crop) // 2
    return np.asarray(im.crop((left, left, left + crop, left + crop)), np.uint8)


def load_image(path: str, resize: int, crop: int) -> np.ndarray:
    """uint8 (crop, crop, 3): square resize then centre crop. Raises OSError/ValueError if unreadable."""
    with Image.open(path) as im:
        im.load()
        return prepare_image(im, resize, crop)


class ImageFolder:
    """Random-access images of a folder tree; `batch(indices)` marks unreadable files with ok=False."""

    def __init__(self, root: str | os.PathLike, crop: int = 224, resize: int = 256, shuffle_seed: int | None = 1):
        self.root = os.fspath(root)
        self.crop, self.resize = int(crop), int(resize)
        self.files = find_images(self.root)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root!r}")
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.files)
        self.classes = sorted({os.path.dirname(f) for f in self.files})

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> int:
        return self.classes.index(os.path.dirname(self.files[i]))

    def batch(self, indices: Sequence[int]) -> dict:
        """image uint8 (N, crop, crop, 3), label (N,), ok (N,) and errors {index: message}."""
        images = np.zeros((len(indices), self.crop, self.crop, 3), np.uint8)
        ok = np.ones(len(indices), bool)
        errors = {}
        for j, i in enumerate(indices):
            path = os.path.join(self.root, self.files[i])
            try:
                images[j] = load_image(path, self.resize, self.crop)
            except Exception as e:  # PIL raises many types for corrupt data
                ok[j] = False
                errors[int(i)] = f"{self.files[i]}: {type(e).__name__}: {e}"
        labels = np.asarray([self.label(i) for i in indices], np.int32)
        return {"image": images, "label": labels, "ok": ok, "errors": errors}
