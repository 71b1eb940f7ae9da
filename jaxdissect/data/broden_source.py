"""A Broden-style folder as a dissection source: images with their ground-truth segmentation.

`BrodenSource(path)` is random access like the sources of jaxdissect.dissect.sources:
`load(indices)` -> Batch with uint8 images and the segmentation at the image resolution (the
pipeline subsamples it as it does the scenes world's), and class labels from the whole-image
'scene' category when there is one. Unreadable images or masks mark their sample not ok, with
the reason in Batch.errors. `parse_broden_name('broden:PATH')` -> PATH for `--dataset`.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from jaxdissect.data.sources import Batch
from jaxdissect.segment.broden import BrodenSegmentation

PREFIX = "broden:"


def parse_broden_name(dataset: str) -> str | None:
    """'broden:PATH' -> PATH; None for any other dataset name."""
    if not dataset.startswith(PREFIX):
        return None
    path = dataset[len(PREFIX):]
    if not path:
        raise ValueError("--dataset broden:PATH needs the path of a Broden-style folder")
    return path


class BrodenSource:
    """Images and exact labels of a Broden-style folder (all images of one size, or resized)."""

    kind = "images"

    def __init__(self, directory: str | os.PathLike, split: str | None = None,
                 categories: Sequence[str] | None = None, image_size: tuple[int, int] | None = None,
                 size: int | None = None):
        self.dataset = BrodenSegmentation(directory, categories=categories, split=split, image_size=image_size)
        sizes = {r["_size"] for r in self.dataset.records}
        if image_size is None and len(sizes) > 1:
            raise ValueError(f"Broden folder {os.fspath(directory)!r} has images of {len(sizes)} sizes "
                             f"(e.g. {sorted(sizes)[:3]}); give image_size to resize them")
        self.image_size = tuple(image_size) if image_size else sizes.pop()
        self.size = len(self.dataset) if size is None else min(int(size), len(self.dataset))
        self.labels = self.dataset.labels
        scene_ids = [i for i, c in enumerate(self.labels.categories) if c == "scene"]
        self.classes = tuple(self.labels.names[i] for i in scene_ids)
        self._class_of = {n: k for k, n in enumerate(scene_ids)}

    def __len__(self) -> int:
        return self.size

    def identity(self) -> dict:
        """The folder's tables (their bytes) and every listed file's size and time, the split,
        the categories, the image size and the number of samples."""
        h = hashlib.sha256()
        folder = self.dataset.directory
        for table in sorted(f for f in os.listdir(folder) if f.endswith(".csv")):
            with open(os.path.join(folder, table), "rb") as f:
                h.update(table.encode() + b"|" + f.read())
        for record in self.dataset.records[:self.size]:
            for value in record.values():
                for name in str(value).split(";"):
                    path = os.path.join(folder, "images", name)
                    if name and os.path.isfile(path):
                        st = os.stat(path)
                        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return {"kind": "broden", "contents": h.hexdigest(), "categories": list(self.dataset.categories),
                "image_size": list(self.image_size), "size": self.size}

    def _class(self, i: int) -> int:
        """The index in `classes` of the image's first scene label; -1 without one."""
        for item in self.dataset.items(self.dataset.records[i], "scene") if "scene" in self.dataset.categories else []:
            if item.isdigit() and int(item) in self._class_of:
                return self._class_of[int(item)]
        return -1

    def load(self, indices: Sequence[int]) -> Batch:
        n = len(indices)
        h, w = self.image_size
        images = np.zeros((n, h, w, 3), np.uint8)
        seg = np.zeros((n, self.dataset.num_channels, h, w), np.int32)
        ok = np.ones(n, bool)
        errors = {}
        for j, i in enumerate(indices):
            i = int(i)
            if not 0 <= i < self.size:
                raise IndexError(f"index {i} out of range for a Broden source of {self.size} images")
            try:
                images[j] = self.dataset.image_uint8(i)
                seg[j] = self.dataset.segmentation(i)
            except ValueError as e:
                ok[j] = False
                errors[i] = str(e)
        labels = np.asarray([self._class(int(i)) for i in indices], np.int32)
        return Batch(np.asarray(indices, np.int32), images, ok, seg, errors, labels)
