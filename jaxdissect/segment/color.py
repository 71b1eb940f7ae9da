"""The color segmenter: a deep-stem ResNet-18 with dilated last stages (output stride 8) and a
PPM decoder (the inference path of CSAIL's ppm_deepsup), driven by a labels.json that names the
labels, their categories (each with its own softmax and optional mask label) and the image format.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.segment.base import SegmentLabels
from jaxdissect.segment.prroi import adaptive_avg_pool2d, resize_bilinear
from jaxdissect.segment.upp import ConvBN, DeepStemResNet, _check_images, batchnorm, conv, read_model_folder
from weight_conversion.keymaps import segmenters as keymaps

COLOR_URL = "https://dissect.csail.mit.edu/models/segmodel/color-resnet18dilated-ppm_deepsup/"
COLOR_FILES = ("encoder_epoch_20.pth", "decoder_epoch_20.pth", "labels.json")
COLOR_DIRNAME = "color-resnet18dilated-ppm_deepsup"


@dataclasses.dataclass(frozen=True)
class ColorConfig:
    """Sizes of the color network; the defaults are the published model's (save for num_class)."""

    num_class: int
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    stem_widths: tuple[int, ...] = (64, 64, 128)
    planes: tuple[int, ...] = (64, 128, 256, 512)
    ppm_dim: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)


class PPMBranches(nn.Module):
    """Per scale: adaptive average pool, 1x1 conv ('i.1'), BN ('i.2'), ReLU, upsample."""

    features: int
    pool_scales: Sequence[int]

    @nn.compact
    def __call__(self, x):
        size = x.shape[1:3]
        return [resize_bilinear(ConvBN(self.features, 1, conv_name="1", bn_name="2", name=str(i))(
            adaptive_avg_pool2d(x, (s, s))), size) for i, s in enumerate(self.pool_scales)]


class ConvLast(nn.Module):
    """conv3x3 ('0') - BN ('1') - ReLU - Dropout (identity at inference) - 1x1 with bias ('4')."""

    features: int
    classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(batchnorm("1")(conv(self.features, 3, name="0")(x)))
        return conv(self.classes, 1, bias=True, name="4")(x)


class PPMDecoder(nn.Module):
    """Pyramid pooling over the last stage, then the classifier: raw logits at stride 8, NHWC."""

    num_class: int
    ppm_dim: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)

    @nn.compact
    def __call__(self, conv_out):
        conv5 = conv_out[-1]
        pooled = PPMBranches(self.ppm_dim, self.pool_scales, name="ppm")(conv5)
        return ConvLast(self.ppm_dim, self.num_class, name="conv_last")(jnp.concatenate([conv5] + pooled, -1))


class ColorNet(nn.Module):
    """Encoder ('encoder', ResNet-18 dilated) + decoder ('decoder', PPM)."""

    config: ColorConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        feats = DeepStemResNet("basic", c.stage_sizes, c.stem_widths, c.planes, dilated=True, name="encoder")(x)
        return PPMDecoder(c.num_class, c.ppm_dim, c.pool_scales, name="decoder")(feats)


@dataclasses.dataclass(frozen=True)
class ColorLabelPlan:
    """labels.json turned into static index lists."""

    labels: SegmentLabels
    category_channels: tuple[tuple[int, ...], ...]  # per category: its model channels
    category_ids: tuple[tuple[int, ...], ...]  # per category: channel position -> label id
    category_masks: tuple[tuple[int, int] | None, ...]  # per category: (category, position) of its mask label
    bgr: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    segsizes: tuple[int, ...]


def color_label_plan(meta: Mapping[str, Any]) -> ColorLabelPlan:
    """The original SemanticSegmenter's label numbering from labels.json: '-' is 0, then every
    non-internal label name once, in channel order."""
    for key in ("labels", "categories", "imageformat"):
        if key not in meta:
            raise KeyError(f"labels.json has no {key!r} entry (keys: {sorted(meta)})")
    chan_labels = meta["labels"]
    cat_names = [c["name"] for c in meta["categories"]]
    label_ids: dict[str, int] = {"-": 0}
    names, cats = ["-"], ["-"]
    for lab in chan_labels:
        if lab.get("category") not in cat_names:
            raise KeyError(f"label {lab.get('name')!r} has category {lab.get('category')!r}, "
                           f"not one of {cat_names}")
        if lab.get("internal") or lab["name"] in label_ids:
            continue
        label_ids[lab["name"]] = len(names)
        names.append(lab["name"])
        cats.append(lab["category"])
    channels = {c: tuple(i for i, lab in enumerate(chan_labels) if lab["category"] == c) for c in cat_names}
    position = {}
    for c, chans in channels.items():
        for k, i in enumerate(chans):
            position[chan_labels[i]["name"]] = (cat_names.index(c), k)
    masks = []
    for c in meta["categories"]:
        m = c.get("mask")
        if m is not None and m not in position:
            raise KeyError(f"category {c['name']!r} is masked by {m!r}, which is not a label")
        masks.append(position[m] if m is not None else None)
    fmt = meta["imageformat"]
    return ColorLabelPlan(
        SegmentLabels(tuple(names), tuple(cats), tuple(cat_names)),
        tuple(channels[c] for c in cat_names),
        tuple(tuple(label_ids.get(chan_labels[i]["name"], 0) for i in channels[c]) for c in cat_names),
        tuple(masks), fmt.get("byteorder", "RGB") == "BGR",
        tuple(float(v) for v in fmt["mean"]), tuple(float(v) for v in fmt["stdev"]),
        tuple(int(s) for s in meta.get("segsizes") or (256,)))


@functools.partial(jax.jit, static_argnames="config")
def color_logits(variables: Any, x: jax.Array, *, config: ColorConfig) -> jax.Array:
    """Raw logits (NHWC, stride 8) of ColorNet for a normalized, sized input."""
    return ColorNet(config).apply(variables, x)


def color_preprocess(images: jax.Array, plan: ColorLabelPlan) -> jax.Array:
    """[-1, 1] RGB -> optional BGR flip, then ((x + 1) / 2 - mean) / std."""
    x = images.astype(jnp.float32)
    if plan.bgr:
        x = x[..., ::-1]
    return ((x + 1.0) / 2.0 - jnp.asarray(plan.mean)) / jnp.asarray(plan.std)


def _color_probs(variables, images, config, plan, segsizes, seg_shape):
    x = color_preprocess(images, plan)
    total = 0.0
    for s in segsizes:
        raw = ColorNet(config).apply(variables, adaptive_avg_pool2d(x, (s, s)))
        probs = jax.nn.softmax(resize_bilinear(raw, seg_shape), -1)
        per_cat = jnp.zeros_like(probs)
        for chans in plan.category_channels:  # each category its own softmax, on top
            idx = np.asarray(chans)
            per_cat = per_cat.at[..., idx].set(jax.nn.softmax(probs[..., idx], -1))
        total = total + per_cat
    return total


@functools.partial(jax.jit, static_argnames=("config", "plan", "segsizes", "seg_shape"))
def color_predict(variables: Any, images: jax.Array, *, config: ColorConfig, plan: ColorLabelPlan,
                  segsizes: tuple[int, ...], seg_shape: tuple[int, int]) -> jax.Array:
    """Per-category probabilities summed over the sizes, NHWC."""
    return _color_probs(variables, images, config, plan, segsizes, seg_shape)


def color_labels_from_probs(probs: jax.Array, plan: ColorLabelPlan) -> jax.Array:
    """Per category the argmax among its channels as a label id, 0 where its mask label is not
    the argmax of the mask's category; int32 (N, categories, H, W)."""
    argmaxes = [jnp.argmax(probs[..., np.asarray(c)], -1) for c in plan.category_channels]
    chans = []
    for ids, mask, am in zip(plan.category_ids, plan.category_masks, argmaxes):
        out = jnp.asarray(ids, jnp.int32)[am]
        if mask is not None:
            out = jnp.where(argmaxes[mask[0]] == mask[1], out, 0)
        chans.append(out)
    return jnp.stack(chans, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "plan", "segsizes", "downsample"))
def color_segment(variables: Any, images: jax.Array, *, config: ColorConfig, plan: ColorLabelPlan,
                  segsizes: tuple[int, ...], downsample: int) -> jax.Array:
    """The whole color segmentation of NHWC [-1, 1] images, (N, categories, H // ds, W // ds)."""
    seg_shape = (images.shape[1] // downsample, images.shape[2] // downsample)
    return color_labels_from_probs(_color_probs(variables, images, config, plan, segsizes, seg_shape), plan)


class SemanticSegmenter:
    """A labels.json-driven segmenter (the original's SemanticSegmenter, used for colors).

    segment(images NHWC in [-1, 1], downsample) -> int32 (N, categories, H // ds, W // ds): per
    category the argmax among its labels, zeroed where the category's mask label is not predicted.
    """

    def __init__(self, variables: Any, meta: Mapping[str, Any], config: ColorConfig | Mapping,
                 segsizes: Sequence[int] | None = None):
        self.config = config if isinstance(config, ColorConfig) else ColorConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        self.meta = dict(meta)
        self.plan = color_label_plan(meta)
        if len(meta["labels"]) != self.config.num_class:
            raise ValueError(f"color weights have {self.config.num_class} classes but labels.json "
                             f"lists {len(meta['labels'])} labels")
        self.segsizes = tuple(int(s) for s in segsizes) if segsizes else self.plan.segsizes
        self.labels = self.plan.labels
        self.variables = variables

    def logits(self, variables: Any, x: jax.Array) -> jax.Array:
        """Raw logits (NHWC, stride 8) for an already normalized, already sized input."""
        return color_logits(variables, x, config=self.config)

    def preprocess(self, images: jax.Array) -> jax.Array:
        """[-1, 1] RGB -> optional BGR flip, then ((x + 1) / 2 - mean) / std."""
        return color_preprocess(images, self.plan)

    def predict(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        """Summed-over-sizes per-category probabilities, (N, H // ds, W // ds, channels)."""
        _check_images(images)
        seg_shape = (images.shape[1] // downsample, images.shape[2] // downsample)
        return color_predict(self.variables, images, config=self.config, plan=self.plan,
                             segsizes=self.segsizes, seg_shape=seg_shape)

    def labels_from_probs(self, probs: jax.Array) -> jax.Array:
        """Per-category argmax translated to label ids and masked, (N, categories, H, W) int32."""
        return color_labels_from_probs(probs, self.plan)

    def segment(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        """NHWC float images in [-1, 1] -> int32 (N, categories, H // downsample, W // downsample)."""
        _check_images(images)
        return color_segment(self.variables, images, config=self.config, plan=self.plan,
                             segsizes=self.segsizes, downsample=downsample)

    @classmethod
    def from_state_dicts(cls, encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray],
                         meta: Mapping[str, Any], **kwargs) -> "SemanticSegmenter":
        """From the original's encoder/decoder state dicts (numpy arrays) and labels.json data."""
        config = ColorConfig(**keymaps.color_config_from_torch(encoder, decoder))
        return cls(keymaps.convert_color(encoder, decoder, dataclasses.asdict(config)), meta, config, **kwargs)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, **kwargs) -> "SemanticSegmenter":
        """From a folder holding encoder_epoch_20.pth, decoder_epoch_20.pth and labels.json."""
        enc, dec, meta = read_model_folder(directory, COLOR_FILES)
        return cls.from_state_dicts(enc, dec, meta, **kwargs)
