"""Segmenters of the scenes world.

- `ToySegmenter`: the trained `toy_segmenter` network behind the Segmenter protocol (argmax per
  category, mapped to SCENE_LABELS ids).
- `SceneTruthSegmenter`: the exact ground truth of a `Scenes` dataset, for dissecting with
  labels that are right by construction. It serves images and their segmentations by index,
  and also answers `segment(images)` for images it has served (matched by content).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.data.scenes import SCENE_LABELS, Scenes
from jaxdissect.segment.base import SegmentLabels
from jaxdissect.models import load


def category_label_ids(labels: SegmentLabels = SCENE_LABELS) -> list[np.ndarray]:
    """Per category, the global label id of each class index (index 0 = none -> id 0)."""
    return [np.asarray([0] + [i for i, c in enumerate(labels.categories) if c == cat], np.int32)
            for cat in labels.category_names]


def _check_images(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"segment: expected NHWC RGB images, got shape {images.shape}")
    return images


class ToySegmenter:
    """The trained toy segmenter: images in [-1, 1] NHWC -> int32 (N, 4, H/ds, W/ds)."""

    labels = SCENE_LABELS

    def __init__(self, model=None):
        if model is None:
            model = load("toy_segmenter")
        if model.kind != "segmenter":
            raise ValueError(f"ToySegmenter needs a segmenter model, got {model.name!r} ({model.kind})")
        self.model = model
        self._ids = tuple(jnp.asarray(a) for a in category_label_ids(self.labels))
        self._run = jax.jit(self._segment, static_argnames=("out_hw",))

    def logits(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """Per-category logits at half the input resolution."""
        return self.model.module.apply(self.model.variables, _check_images(images))

    def _segment(self, variables, images, out_hw):
        outs = self.model.module.apply(variables, images)
        chans = []
        for logit, ids in zip(outs, self._ids):
            logit = jax.image.resize(logit, (logit.shape[0], *out_hw, logit.shape[-1]), "bilinear")
            chans.append(ids[jnp.argmax(logit, axis=-1)])
        return jnp.stack(chans, axis=1).astype(jnp.int32)

    def segment(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        images = _check_images(images)
        if downsample < 1 or images.shape[1] % downsample or images.shape[2] % downsample:
            raise ValueError(f"segment: downsample {downsample} must divide the image size {images.shape[1:3]}")
        out_hw = (images.shape[1] // downsample, images.shape[2] // downsample)
        return self._run(self.model.variables, images.astype(jnp.float32), out_hw)


def subsample_labels(seg: np.ndarray, downsample: int) -> np.ndarray:
    """(..., H, W) label maps at 1/downsample resolution: the label at each cell's centre pixel."""
    if downsample == 1:
        return seg
    o = downsample // 2
    return seg[..., o::downsample, o::downsample]


class SceneTruthSegmenter:
    """Exact labels of a Scenes dataset: `segment_indices(indices)` by index, or `segment(images)`
    for images this object served through `images(indices)` (matched by their bytes)."""

    labels = SCENE_LABELS

    def __init__(self, dataset: Scenes | None = None):
        self.dataset = dataset if dataset is not None else Scenes("val", 1000)
        self._known: dict[bytes, int] = {}

    @staticmethod
    def _key(image_uint8: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(image_uint8).tobytes()).digest()

    def images(self, indices: Sequence[int]) -> np.ndarray:
        """Images (N, H, W, 3) in [-1, 1] float32, remembered for `segment`."""
        b = self.dataset.batch(indices)
        for i, img in zip(indices, b["image"]):
            self._known[self._key(img)] = int(i)
        return b["image"].astype(np.float32) / 127.5 - 1.0

    def segment_indices(self, indices: Sequence[int], downsample: int = 1) -> np.ndarray:
        return subsample_labels(self.dataset.batch(indices)["segmentation"], downsample)

    def segment(self, images, downsample: int = 1) -> np.ndarray:
        imgs = np.asarray(_check_images(images))
        u8 = np.clip(np.rint((imgs + 1.0) * 127.5), 0, 255).astype(np.uint8)
        idx = []
        for n, img in enumerate(u8):
            i = self._known.get(self._key(img))
            if i is None:
                raise KeyError(f"SceneTruthSegmenter: image {n} of the batch is not an image of {self.dataset!r} "
                               "served by .images(); the ground truth exists only for the dataset's own images "
                               "(use segment_indices)")
            idx.append(i)
        return self.segment_indices(idx, downsample)
