"""Where the dissection's samples come from: images (scenes world, image folders) or z vectors.

A source is random access by global sample index, so batches can be re-read for thumbnails and
a resumed run sees exactly the batches it missed. `identity()` says what a source holds (for the
fingerprints of results and caches); `prefetch` loads batches ahead on several threads (image
decoding releases the GIL), each process loading only its own rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from jaxdissect.data.image_folder import ImageFolder
from jaxdissect.data.scenes import Scenes
from jaxdissect.data.tfds_images import TfdsImages, open_data_source
from jaxdissect.data.zdataset import standard_z_sample

LOADER_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass
class Batch:
    """One batch: model input (uint8 images or float32 z), validity, optional exact segmentation."""

    indices: np.ndarray  # (N,) int32 global sample indices
    inputs: np.ndarray  # (N, H, W, 3) uint8 images or (N, z_dim) float32
    ok: np.ndarray  # (N,) bool: False for padding and unreadable images
    segmentation: np.ndarray | None = None  # (N, L, H, W) int32 ground truth, when the source has it
    errors: dict = dataclasses.field(default_factory=dict)  # index -> message for unreadable samples
    labels: np.ndarray | None = None  # (N,) int32 class labels, when the source has them


@runtime_checkable
class Source(Protocol):
    """What the dissection reads samples from: random access by global sample index.

    `kind` is 'images' (uint8 NHWC inputs) or 'z' (latent vectors of a generator); `labels` is
    the source's own segmentation labels (SegmentLabels) when its batches carry an exact
    segmentation, else None. Defining `identity() -> dict` (what the source holds: names, sizes,
    a digest of the contents) lets results and shared caches be fingerprinted by content."""

    kind: str
    labels: Any

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int]) -> "Batch": ...


class ScenesSource:
    """The embedded scenes world (val split by default), which carries its exact segmentation.

    Rendering a scene costs more than the toy classifier's forward, and every pass (and the
    thumbnails) reads the same scenes again, so rendered scenes are kept in memory up to
    `cache_bytes` (segmentations stored as uint8); past that budget they are rendered again."""

    kind = "images"

    def __init__(self, size: int = 1000, split: str = "val", seed: int = 0, image_size: int = 128,
                 cache_bytes: int = 512 << 20):
        self.dataset = Scenes(split=split, size=size, seed=seed, image_size=image_size)
        self.labels = self.dataset.labels
        self.classes = tuple(self.dataset.classes)
        self._seg_dtype = np.uint8 if len(self.labels.names) <= 256 else np.int32
        per_scene = image_size * image_size * (3 + 4 * np.dtype(self._seg_dtype).itemsize) + 4
        self._cache_capacity = max(0, int(cache_bytes) // per_scene)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def identity(self) -> dict:
        """Split, seed, size and image size, plus a digest of the first scene (the renderer's output)."""
        d = self.dataset
        first = d[0] if len(d) else {"image": np.zeros(0), "segmentation": np.zeros(0)}
        content = hashlib.sha256(np.ascontiguousarray(first["image"]).tobytes()
                                 + np.ascontiguousarray(first["segmentation"]).tobytes()).hexdigest()[:16]
        return {"kind": "scenes", "split": d.split, "seed": d.seed, "size": len(d), "image_size": d.image_size,
                "stylized": getattr(d, "stylized", False), "style_seed": getattr(d, "style_seed", 0),
                "first_scene": content}

    def _scene(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        item = self.dataset[i]
        scene = (item["image"], item["segmentation"].astype(self._seg_dtype), int(item["scene"]))
        if len(self._cache) < self._cache_capacity:
            self._cache[i] = scene
        return scene

    def load(self, indices: Sequence[int]) -> Batch:
        items = [self._scene(int(i)) for i in indices]
        s = self.dataset.image_size
        images = np.stack([it[0] for it in items]) if items else np.zeros((0, s, s, 3), np.uint8)
        seg = np.stack([it[1] for it in items]).astype(np.int32) if items else np.zeros((0, 4, s, s), np.int32)
        labels = np.asarray([it[2] for it in items], np.int32)
        return Batch(np.asarray(indices, np.int32), images, np.ones(len(indices), bool), seg, labels=labels)


class FolderSource:
    """An image folder (e.g. Places365 val), prepared as the original did."""

    kind = "images"
    labels = None

    def __init__(self, root: str | os.PathLike, crop: int, size: int | None = None):
        self.dataset = ImageFolder(root, crop=crop)
        self.size = len(self.dataset) if size is None else min(size, len(self.dataset))
        self.classes = tuple(self.dataset.classes)

    def __len__(self) -> int:
        return self.size

    def identity(self) -> dict:
        """The files in sample order with their sizes and modification times, and the preparation."""
        h = hashlib.sha256()
        for rel in self.dataset.files[:self.size]:
            try:
                st = os.stat(os.path.join(self.dataset.root, rel))
                h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            except OSError:
                h.update(f"{rel}|missing\n".encode("utf-8", "surrogateescape"))
        return {"kind": "folder", "files": h.hexdigest(), "size": self.size, "crop": self.dataset.crop,
                "resize": self.dataset.resize}

    def load(self, indices: Sequence[int]) -> Batch:
        b = self.dataset.batch(indices)
        return Batch(np.asarray(indices, np.int32), b["image"], b["ok"], None, b["errors"], b["label"])


class TfdsSource:
    """A prepared tensorflow-datasets image dataset (e.g. places365_small validation) through
    `tfds.data_source`, prepared as FolderSource prepares images; tfds's order."""

    kind = "images"
    labels = None

    def __init__(self, name: str, split: str = "validation", crop: int = 224, size: int | None = None,
                 data_dir: str | None = None, data: Any = None):
        self.dataset = TfdsImages(data if data is not None else open_data_source(name, split, data_dir), crop=crop)
        self.size = len(self.dataset) if size is None else min(size, len(self.dataset))
        self.classes = self.dataset.classes
        self.name, self.split = name, split

    def __len__(self) -> int:
        return self.size

    def identity(self) -> dict:
        """The dataset's name, split and length (tfds datasets are versioned and immutable), the preparation."""
        return {"kind": "tfds", "name": self.name, "split": self.split, "records": len(self.dataset),
                "size": self.size, "crop": self.dataset.crop, "resize": self.dataset.resize}

    def load(self, indices: Sequence[int]) -> Batch:
        b = self.dataset.batch(indices)
        return Batch(np.asarray(indices, np.int32), b["image"], b["ok"], None, b["errors"], b["label"])


class ZSource:
    """z ~ N(0, I) from numpy RandomState(seed), the original's generator samples."""

    kind = "z"
    labels = None

    def __init__(self, size: int, z_dim: int, seed: int = 1):
        self.z = standard_z_sample(size, z_dim, seed)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.z)

    def identity(self) -> dict:
        return {"kind": "z", "seed": self.seed, "size": len(self.z), "z_dim": int(self.z.shape[1])}

    def load(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, np.int64)
        return Batch(idx.astype(np.int32), self.z[idx], np.ones(len(idx), bool))


def local_batch(source: Any, indices: np.ndarray, positions: np.ndarray) -> Batch:
    """The rows `positions` of a global batch made of `indices` (positions past the end are padding:
    a real sample, marked not ok). A paired source's tuple of batches is marked alike."""
    valid = positions < len(indices)
    wanted = np.where(valid, indices[np.minimum(positions, len(indices) - 1)], indices[0])
    batch = source.load(wanted)
    for b in (batch if isinstance(batch, tuple) else (batch,)):
        b.ok = b.ok & valid
    return batch


def pad_batch(batch: Batch, size: int) -> Batch:
    """Pad a short batch to `size` rows by repeating its first row, marked not ok."""
    n = len(batch.indices)
    if n == size:
        return batch
    if n == 0 or n > size:
        raise ValueError(f"cannot pad a batch of {n} to {size}")
    take = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    ok = np.concatenate([batch.ok, np.zeros(size - n, bool)])
    seg = None if batch.segmentation is None else batch.segmentation[take]
    labels = None if batch.labels is None else batch.labels[take]
    return Batch(batch.indices[take], batch.inputs[take], ok, seg, batch.errors, labels)


def batch_ranges(total: int, batch_size: int) -> list[np.ndarray]:
    """Consecutive index ranges covering 0 .. total - 1."""
    return [np.arange(s, min(s + batch_size, total)) for s in range(0, total, batch_size)]


def prefetch_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int | None = None) -> Iterator[Any]:
    """Yield fn(item) for each item in order, computing up to `threads` of them ahead in background
    threads (image decoding, file reads and numpy release the GIL)."""
    threads = max(1, threads or LOADER_THREADS)
    depth = threads + 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(fn, item) for item in items[:depth]]
        for i in range(len(items)):
            result = futures[i].result()
            futures[i] = None
            if i + depth < len(items):
                futures.append(pool.submit(fn, items[i + depth]))
            yield result


def prefetch(source: Any, ranges: Sequence[np.ndarray], positions: np.ndarray, threads: int | None = None):
    """Yield this process's part (`positions` of each global batch) of the batches `ranges`, in
    order, loading up to `threads` batches at once in background threads while the devices work."""
    return prefetch_map(lambda r: local_batch(source, r, positions), list(ranges), threads)
