"""A folder of images as a dataset, prepared as the original prepared Places365 val.

Files are found recursively and sorted, then shuffled with Python's random.Random(1) (the
original's order); the class of an image is its parent folder. Each image is resized to a square
(256 x 256, distorting the aspect ratio as the original did) and centre-cropped. Every image
becomes 8-bit RGB (see `to_rgb`): 16-bit and float images are scaled, not clipped; images with
transparency are composited over white. Unreadable or corrupt files are reported, not fatal, and
counted, so a folder with nothing readable can be refused. File names are reported as printable
text whatever their bytes (`display_name`).
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


def display_name(name: str) -> str:
    """Printable text for a file name (or a message holding one) whatever its bytes: bytes that are
    not UTF-8 (kept by the OS layer as surrogate escapes) become \\xNN, control characters \\n, \\x1b..."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte
        raw = name.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
BACKGROUND = (255, 255, 255)  # what shows through transparent pixels


def to_rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, with its full range kept.

    16-bit grayscale (I;16*) is scaled by 255/65535; 32-bit integer (I) by its TIFF bit depth when
    known, else as 16-bit; float (F) from [0, 1]. Values outside the nominal range raise
    ValueError (the range of such an image is unknown), rather than clip. Images with an alpha
    channel or a transparent colour (LA, RGBA, PA, palette or RGB with tRNS) are composited over
    BACKGROUND; palette, bilevel, CMYK, YCbCr, LAB and HSV images go through PIL's conversion.
    16-bit RGB(A) PNGs are read by PIL as 8-bit RGB(A) already."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return Image.fromarray(_scaled_to_uint8(im)).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return im.convert("RGB")


def _scaled_to_uint8(im: Image.Image) -> np.ndarray:
    """A single-channel 16-bit, 32-bit integer or float image as uint8 over its nominal range."""
    a = np.asarray(im)
    if im.mode == "F":
        top, what = 1.0, "a floating-point image, expected in [0, 1]"
    elif im.mode == "I":
        bits = _tiff_bits(im) or 16
        top, what = float(2 ** bits - 1), f"a {bits}-bit integer image, expected in [0, {2 ** bits - 1}]"
    else:
        top, what = 65535.0, "a 16-bit image"
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or a.min(initial=0) < 0 or a.max(initial=0) > top:
        raise ValueError(f"{what} holds values in [{np.nanmin(a):g}, {np.nanmax(a):g}]: its range is unknown")
    return np.round(a * (255.0 / top)).astype(np.uint8)


def _tiff_bits(im: Image.Image) -> int | None:
    """Bits per sample declared by a TIFF, if the image has that tag."""
    try:
        bits = im.tag_v2.get(258)  # BitsPerSample
    except AttributeError:
        return None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


def prepare_image(im: Image.Image, resize: int, crop: int) -> np.ndarray:
    """uint8 (crop, crop, 3) RGB: square resize (bilinear) then centre crop, as the original."""
    im = to_rgb(im).resize((resize, resize), Image.BILINEAR)
    left = (resize - crop) // 2
    return np.asarray(im.crop((left, left, left + crop, left + crop)), np.uint8)


def load_image(path: str, resize: int, crop: int) -> np.ndarray:
    """uint8 (crop, crop, 3): square resize then centre crop. Raises OSError/ValueError if unreadable."""
    with Image.open(path) as im:
        im.load()
        return prepare_image(im, resize, crop)


class ImageFolder:
    """Random-access images of a folder tree; `batch(indices)` marks unreadable files with ok=False.

    `files` are the relative paths as the OS gives them (to open); `name(i)` and `classes` are
    printable text (to report). `readable_count` / `unreadable_count` count the distinct samples
    that `batch` has read so far, so a caller can refuse a folder with zero readable samples."""

    def __init__(self, root: str | os.PathLike, crop: int = 224, resize: int = 256, shuffle_seed: int | None = 1):
        self.root = os.fspath(root)
        self.crop, self.resize = int(crop), int(resize)
        self.files = find_images(self.root)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {display_name(self.root)!r}")
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.files)
        self._class_dirs = sorted({os.path.dirname(f) for f in self.files})
        self._class_index = {d: k for k, d in enumerate(self._class_dirs)}
        self.classes = [display_name(d) for d in self._class_dirs]
        self._readable: set[int] = set()
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> int:
        return self._class_index[os.path.dirname(self.files[i])]

    def name(self, i: int) -> str:
        """The relative path of sample i as printable text."""
        return display_name(self.files[i])

    @property
    def readable_count(self) -> int:
        """Distinct samples `batch` has read successfully so far."""
        return len(self._readable)

    @property
    def unreadable_count(self) -> int:
        """Distinct samples `batch` has found unreadable so far."""
        return len(self._unreadable)

    def batch(self, indices: Sequence[int]) -> dict:
        """image uint8 (N, crop, crop, 3), label (N,), ok (N,) and errors {index: printable message}."""
        images = np.zeros((len(indices), self.crop, self.crop, 3), np.uint8)
        ok = np.ones(len(indices), bool)
        errors = {}
        for j, i in enumerate(indices):
            path = os.path.join(self.root, self.files[i])
            try:
                images[j] = load_image(path, self.resize, self.crop)
                self._readable.add(int(i))
            except Exception as e:  # PIL raises many types for corrupt data
                ok[j] = False
                self._unreadable.add(int(i))
                errors[int(i)] = f"{self.name(i)}: {type(e).__name__}: {display_name(str(e))}"
        labels = np.asarray([self.label(i) for i in indices], np.int32)
        return {"image": images, "label": labels, "ok": ok, "errors": errors}
