"""A Broden-style folder as a ground-truth segmentation source (human labels, NetDissect style).

Layout (as NetDissect-Lite reads it):
- index.csv: image, split, ih, iw (image size), sh, sw (mask size), then one column per category
  (Broden: color, object, part, material, scene, texture) whose cells list ';'-separated mask
  PNGs (pixel categories) or label numbers (whole-image categories such as scene and texture);
- label.csv: number, name, category ('object(12);part(3)': the categories the label occurs in,
  with image counts), frequency, coverage, syns;
- c_<category>.csv (optional): code, number, name, frequency, coverage per category;
- category.csv (optional): name, first, last, count, frequency;
- images/: the images and masks; a mask pixel's label number is red + 256 * green; 0 = none.

Conventions follow NetDissect-Lite: categories in category.csv order (unless chosen); a label's
category is the one where it covers most (c_<category>.csv coverage; without those files, the
one with the largest image count in label.csv); images with no data in any chosen category are
left out. Masks are at (sh, sw) and are scaled to the image size by nearest neighbour.

Channels are laid out per category: category c gets as many channels as the most masks (or
whole-image labels) any image has in it, in category order, zero ('no label') where an image
has fewer. `segment_indices(indices, downsample)` returns the same (N, L, H/ds, W/ds) int32 maps
that a Segmenter's `segment(images, downsample)` returns for those items' images.
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


def _read_csv(path: str, required: bool = True) -> list[dict] | None:
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"Broden folder lacks {path!r}")
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _category_counts(field: str) -> dict[str, int]:
    """'object(12);part(3)' -> {'object': 12, 'part': 3} (a bare name counts 0)."""
    out = {}
    for item in filter(None, (field or "").split(";")):
        m = re.fullmatch(r"\s*([^()]+?)\s*(?:\((\d+)\))?\s*", item)
        if m:
            out[m.group(1)] = int(m.group(2) or 0)
    return out


def decode_mask(path: str) -> np.ndarray:
    """A Broden mask PNG -> int32 label ids (red + 256 * green)."""
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.int32)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read Broden mask {path!r}: {e}") from None
    return a[..., 0] + 256 * a[..., 1]


def encode_mask(labels: np.ndarray) -> np.ndarray:
    """int label ids (H, W) -> uint8 RGB (H, W, 3) with red = id % 256, green = id // 256."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= 256 * 256:
        raise ValueError(f"Broden mask labels must be in [0, 65536), got {labels.min()} .. {labels.max()}")
    out = np.zeros(labels.shape + (3,), np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


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
        index_path = os.path.join(self.directory, "index.csv")
        rows = _read_csv(index_path)
        if not rows:
            raise ValueError(f"{index_path!r} lists no images")
        columns = list(rows[0].keys())
        missing = [c for c in INDEX_FIXED if c not in columns]
        if missing:
            raise ValueError(f"{index_path!r} lacks the column(s) {missing}; it has {columns}")
        available = [c for c in columns if c not in INDEX_FIXED]
        listed = _read_csv(os.path.join(self.directory, "category.csv"), required=False)
        if categories is None:
            order = [r.get("name") for r in listed or []]
            categories = [c for c in order if c in available] + [c for c in available if c not in order]
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise ValueError(f"unknown Broden categories {unknown}; this folder has {available}")
        self.categories = tuple(categories)
        records = [r for r in rows if split is None or r["split"] == split]
        self.records = [r for r in records if any(self.items(r, c) for c in self.categories)]
        if not self.records:
            raise ValueError(f"no images of split {split!r} with data in {list(self.categories)} in {self.directory!r}")
        for r in self.records:
            try:
                r["_size"] = (int(r["ih"]), int(r["iw"]))
            except (TypeError, ValueError):
                raise ValueError(f"{index_path!r}: image {r.get('image')!r} has no integer ih/iw") from None
        self.image_size = tuple(image_size) if image_size else None
        self.labels = self._read_labels()
        self.slots = {c: max(len(self.items(r, c)) for r in self.records) for c in self.categories}
        self.num_channels = max(1, sum(self.slots.values()))

    def _read_labels(self) -> SegmentLabels:
        label_path = os.path.join(self.directory, "label.csv")
        numbers = {}
        for r in _read_csv(label_path):
            try:
                numbers[int(r["number"])] = (r["name"], _category_counts(r.get("category", "")))
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"{label_path!r}: row {r} has no integer 'number' / 'name'") from None
        coverage = {}  # (category, number) -> coverage, from c_<category>.csv where present
        for cat in self.categories:
            for r in _read_csv(os.path.join(self.directory, f"c_{cat}.csv"), required=False) or []:
                try:
                    coverage[cat, int(r["number"])] = float(r.get("coverage") or 0.0)
                except (KeyError, ValueError):
                    raise ValueError(f"c_{cat}.csv row {r} has no integer 'number'") from None
        size = max(numbers, default=0) + 1
        names, cats = ["-"] * size, ["-"] * size
        for n, (name, counts) in numbers.items():
            if not n:
                continue
            names[n] = name
            mine = [c for c in self.categories if c in counts]
            if mine:
                if any((c, n) in coverage for c in mine):
                    score = lambda c: coverage.get((c, n), 0.0)  # noqa: E731
                else:
                    score = lambda c: counts[c]  # noqa: E731
                cats[n] = max(mine, key=lambda c: (score(c), -mine.index(c)))  # ties: the first category
        return SegmentLabels(tuple(names), tuple(cats), self.categories)

    @staticmethod
    def items(record: dict, category: str) -> list[str]:
        """The mask files or label numbers listed for `category` in an index.csv record."""
        return [v.strip() for v in (record.get(category) or "").split(";") if v.strip()]

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, "images", name)

    def _size(self, i: int) -> tuple[int, int]:
        return self.image_size or self.records[i]["_size"]

    def image_uint8(self, i: int) -> np.ndarray:
        """Item i's image, uint8 (H, W, 3) RGB (resized bilinearly to image_size when given)."""
        path = self._path(self.records[i]["image"])
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                h, w = self._size(i)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise ValueError(f"cannot read Broden image {path!r}: {e}") from None

    def image(self, i: int) -> np.ndarray:
        """Item i's image, float32 (H, W, 3) in [-1, 1]."""
        return self.image_uint8(i).astype(np.float32) / 127.5 - 1.0

    def segmentation(self, i: int, downsample: int = 1) -> np.ndarray:
        """Item i's labels, int32 (num_channels, H // ds, W // ds), channels laid out per category."""
        h, w = self._size(i)
        size = (h // downsample, w // downsample)
        out = np.zeros((self.num_channels,) + size, np.int32)
        k = 0
        for cat in self.categories:
            for j, item in enumerate(self.items(self.records[i], cat)):
                if item.isdigit():
                    out[k + j] = int(item)
                elif cat in WHOLE_IMAGE_CATEGORIES:
                    raise ValueError(f"index.csv: {cat} of image {self.records[i]['image']!r} is {item!r}, "
                                     "not a label number")
                else:
                    out[k + j] = _nearest(decode_mask(self._path(item)), size)
                if out[k + j].max() >= len(self.labels):
                    raise ValueError(f"{item!r} of image {self.records[i]['image']!r} holds label "
                                     f"{out[k + j].max()}, past the {len(self.labels)} labels of label.csv")
            k += self.slots[cat]
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
