"""A Broden-style folder as a ground-truth segmentation source (human labels, NetDissect style).

Layout: index.csv (image, split, ih, iw, sh, sw, then one column per category: ';'-separated PNG
mask files for pixel categories, or label numbers for whole-image ones such as scene/texture),
label.csv (number, name, category such as 'object(12);part(3)', ...), and images/ holding the
images and masks; a mask pixel's label is red + 256 * green. Label 0 is 'no label'.

Since the labels come with the data, this source segments dataset items, not arbitrary pixels:
`segment_indices(indices, downsample)` returns the same (N, L, H/ds, W/ds) int32 maps that a
Segmenter's `segment(images, downsample)` returns for those items' images.
"""
from __future__ import annotations

import csv
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image

from jaxdissect.segment.base import SegmentLabels

INDEX_FIXED = ("image", "split", "ih", "iw", "sh", "sw")
WHOLE_IMAGE_CATEGORIES = ("scene", "texture")


def _read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Broden folder lacks {path!r}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _primary_category(field: str, known: Sequence[str]) -> str:
    """'object(12);part(3)' -> the category with the largest count (the first on ties)."""
    best, best_n = "-", -1
    for item in filter(None, field.split(";")):
        m = re.fullmatch(r"\s*([^()]+?)\s*(?:\((\d+)\))?\s*", item)
        if m and m.group(1) in known and int(m.group(2) or 0) > best_n:
            best, best_n = m.group(1), int(m.group(2) or 0)
    return best


def decode_mask(path: str) -> np.ndarray:
    """A Broden mask PNG -> int32 label ids (red + 256 * green)."""
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.int32)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read Broden mask {path!r}: {e}") from None
    return a[..., 0] + 256 * a[..., 1]


def _nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = a.shape
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return a[ys[:, None], xs[None, :]]


class BrodenSegmentation:
    """Images and their ground-truth multi-label maps from a Broden-style folder."""

    def __init__(self, directory: str | os.PathLike, categories: Sequence[str] | None = None,
                 split: str | None = None, image_size: tuple[int, int] | None = None):
        self.directory = os.fspath(directory)
        rows = _read_csv(os.path.join(self.directory, "index.csv"))
        if not rows:
            raise ValueError(f"{os.path.join(self.directory, 'index.csv')!r} lists no images")
        columns = list(rows[0].keys())
        missing = [c for c in INDEX_FIXED if c not in columns]
        if missing:
            raise ValueError(f"index.csv lacks the column(s) {missing}; it has {columns}")
        available = [c for c in columns if c not in INDEX_FIXED]
        if categories is None:
            categories = available
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise ValueError(f"unknown Broden categories {unknown}; this folder has {available}")
        self.categories = tuple(categories)
        self.records = [r for r in rows if split is None or r["split"] == split]
        if not self.records:
            raise ValueError(f"no images of split {split!r} in {self.directory!r}")
        self.image_size = tuple(image_size) if image_size else None
        label_rows = _read_csv(os.path.join(self.directory, "label.csv"))
        numbers = {}
        for r in label_rows:
            try:
                numbers[int(r["number"])] = (r["name"], _primary_category(r.get("category", ""), self.categories))
            except (KeyError, ValueError):
                raise ValueError(f"label.csv row {r} has no integer 'number' / 'name'") from None
        size = max(numbers, default=0) + 1
        names, cats = ["-"] * size, ["-"] * size
        for n, (name, cat) in numbers.items():
            if n:
                names[n], cats[n] = name, cat
        self.labels = SegmentLabels(tuple(names), tuple(cats), self.categories)
        self.num_channels = max(sum(len(self._items(r, c)) for c in self.categories) for r in self.records) or 1

    @staticmethod
    def _items(record: dict, category: str) -> list[str]:
        return [v for v in (record.get(category) or "").split(";") if v]

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, "images", name)

    def _size(self, i: int) -> tuple[int, int]:
        r = self.records[i]
        return self.image_size or (int(r["ih"]), int(r["iw"]))

    def image(self, i: int) -> np.ndarray:
        """Item i's image, float32 (H, W, 3) in [-1, 1] (resized to image_size when given)."""
        path = self._path(self.records[i]["image"])
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                h, w = self._size(i)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except OSError as e:
            raise ValueError(f"cannot read Broden image {path!r}: {e}") from None
        return a / 127.5 - 1.0

    def segmentation(self, i: int, downsample: int = 1) -> np.ndarray:
        """Item i's labels, int32 (num_channels, H // ds, W // ds): one channel per mask file or
        whole-image label, in category order, zero-padded to the same count for every item."""
        h, w = self._size(i)
        size = (h // downsample, w // downsample)
        out = np.zeros((self.num_channels,) + size, np.int32)
        k = 0
        for cat in self.categories:
            for item in self._items(self.records[i], cat):
                if cat in WHOLE_IMAGE_CATEGORIES or item.strip().isdigit():
                    out[k] = int(item)
                else:
                    out[k] = _nearest(decode_mask(self._path(item)), size)
                    if out[k].max() >= len(self.labels):
                        raise ValueError(f"mask {self._path(item)!r} holds label {out[k].max()}, "
                                         f"past the {len(self.labels)} labels of label.csv")
                k += 1
        return out

    def segment_indices(self, indices: Sequence[int], downsample: int = 1) -> np.ndarray:
        """int32 (N, num_channels, H // ds, W // ds) for the given items (all of one size)."""
        segs = [self.segmentation(int(i), downsample) for i in indices]
        shapes = {s.shape for s in segs}
        if len(shapes) > 1:
            raise ValueError(f"items of different sizes {sorted(shapes)}; pass image_size to the dataset")
        return np.stack(segs)

    def batch(self, indices: Sequence[int], downsample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(images NHWC in [-1, 1], segmentations) for the given items."""
        return np.stack([self.image(int(i)) for i in indices]), self.segment_indices(indices, downsample)
