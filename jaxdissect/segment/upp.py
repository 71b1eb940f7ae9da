"""Unified perceptual parsing (Xiao et al. 2018) in Flax: the deep-stem ResNet-50 encoder, the
UPerNet decoder (PPM with precise RoI pooling, FPN, fusion; object, part, material and scene
heads) and `UnifiedParsingSegmenter`, the original's UPP segmenter with its preprocessing, label
numbering and channel layout (fixed: part groups found by object id; every component quartered).

Module paths equal the PyTorch state-dict prefixes ('encoder.layer1.0.conv1', 'decoder.ppm_conv.0.1'),
so converting a checkpoint is a structural rename (weight_conversion.keymaps.segmenters).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.segment.base import SegmentLabels
from jaxdissect.segment.prroi import adaptive_avg_pool2d, prroi_pool_full, resize_bilinear
from jaxdissect.segment.quad import quad_divide
from weight_conversion import read_pth
from weight_conversion.keymaps import segmenters as keymaps

UPP_URL = "https://dissect.csail.mit.edu/models/segmodel/upp-resnet50-upernet/"
UPP_FILES = ("encoder_epoch_40.pth", "decoder_epoch_40.pth", "labels.json")
UPP_DIRNAME = "upp-resnet50-upernet"
BGR_MEAN = (102.9801, 115.9465, 122.7717)
DEFAULT_PART_OBJECTS = ("sky", "building", "person")


# --------------------------------------------------------------------------------------------
# Building blocks (names mirror torch's nn.Sequential indices)

def conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, bias: bool = False,
         name: str | None = None) -> nn.Conv:
    """A torch-style Conv2d: symmetric padding dilation*(k-1)/2."""
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=[(pad, pad), (pad, pad)],
                   kernel_dilation=dilation, use_bias=bias, name=name)


def batchnorm(name: str | None = None) -> nn.BatchNorm:
    """Inference BatchNorm with torch's epsilon (running statistics in 'batch_stats')."""
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class ConvBN(nn.Module):
    """Conv ('0' or `conv_name`) + BatchNorm ('1' or `bn_name`) + optional ReLU."""

    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    relu: bool = True
    conv_name: str = "0"
    bn_name: str = "1"

    @nn.compact
    def __call__(self, x):
        x = conv(self.features, self.kernel, self.stride, self.dilation, name=self.conv_name)(x)
        x = batchnorm(self.bn_name)(x)
        return nn.relu(x) if self.relu else x


class Wrapped(nn.Module):
    """A one-element Sequential around ConvBN (torch 'fpn_out.i.0.{0,1}')."""

    features: int

    @nn.compact
    def __call__(self, x):
        return ConvBN(self.features, name="0")(x)


class Head(nn.Module):
    """conv3x3-BN-ReLU ('0') then a 1x1 classifier with bias ('1', or '2' after a pool)."""

    features: int
    classes: int
    pool: bool = False

    @nn.compact
    def __call__(self, x):
        x = ConvBN(self.features, name="0")(x)
        if self.pool:
            x = jnp.mean(x, axis=(1, 2), keepdims=True)
        return conv(self.classes, 1, bias=True, name="2" if self.pool else "1")(x)


# --------------------------------------------------------------------------------------------
# Encoder: ResNet with the three-conv "deep stem"

class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    dilation: int = 1
    first_dilation: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x):
        out = nn.relu(batchnorm("bn1")(conv(self.planes, 1, name="conv1")(x)))
        out = conv(self.planes, 3, self.stride, self.first_dilation, name="conv2")(out)
        out = nn.relu(batchnorm("bn2")(out))
        out = batchnorm("bn3")(conv(self.planes * 4, 1, name="conv3")(out))
        if self.downsample:
            x = ConvBN(self.planes * 4, 1, self.stride, relu=False, name="downsample")(x)
        return nn.relu(out + x)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    dilation: int = 1
    first_dilation: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x):
        out = conv(self.planes, 3, self.stride, self.first_dilation, name="conv1")(x)
        out = nn.relu(batchnorm("bn1")(out))
        out = batchnorm("bn2")(conv(self.planes, 3, 1, self.dilation, name="conv2")(out))
        if self.downsample:
            x = ConvBN(self.planes, 1, self.stride, relu=False, name="downsample")(x)
        return nn.relu(out + x)


class Stage(nn.Module):
    """One ResNet stage; blocks are named '0', '1', ... as in torch's Sequential."""

    block: str
    planes: int
    blocks: int
    stride: int
    dilation: int = 1  # dilated stages: the strided conv loses its stride (and gets dilation/2)

    @nn.compact
    def __call__(self, x):
        cls = Bottleneck if self.block == "bottleneck" else BasicBlock
        expansion = 4 if self.block == "bottleneck" else 1
        first_dil = max(self.dilation // 2, 1) if self.dilation > 1 else 1
        stride = 1 if self.dilation > 1 else self.stride
        needs_down = self.stride != 1 or x.shape[-1] != self.planes * expansion
        for i in range(self.blocks):
            x = cls(self.planes, stride if i == 0 else 1, self.dilation,
                    first_dil if i == 0 else self.dilation,
                    downsample=needs_down and i == 0, name=str(i))(x)
        return x


class DeepStemResNet(nn.Module):
    """ResNet with a 3x(conv3x3-BN-ReLU) stem and a max pool, returning the four stage outputs.

    `dilated` gives output stride 8 (layer3 dilation 2, layer4 dilation 4, no strides there),
    as the original's ResnetDilated(dilate_scale=8).
    """

    block: str = "bottleneck"  # or 'basic'
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stem_widths: Sequence[int] = (64, 64, 128)
    planes: Sequence[int] = (64, 128, 256, 512)
    dilated: bool = False

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.stem_widths, start=1):
            x = conv(width, 3, 2 if i == 1 else 1, name=f"conv{i}")(x)
            x = nn.relu(batchnorm(f"bn{i}")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        dilations = (1, 1, 2, 4) if self.dilated else (1, 1, 1, 1)
        outs = []
        for i, (n, p) in enumerate(zip(self.stage_sizes, self.planes)):
            x = Stage(self.block, p, n, 1 if i == 0 else 2, dilations[i], name=f"layer{i + 1}")(x)
            outs.append(x)
        return outs


# --------------------------------------------------------------------------------------------
# UPerNet decoder

class ConvBNList(nn.Module):
    """conv-BN-ReLU per input, named '0'..'k' as torch's ModuleList (`wrap`: each inside a
    one-element Sequential, as fpn_out)."""

    features: int
    kernel: int = 1
    wrap: bool = False

    @nn.compact
    def __call__(self, xs):
        if self.wrap:
            return [Wrapped(self.features, name=str(i))(x) for i, x in enumerate(xs)]
        return [ConvBN(self.features, self.kernel, name=str(i))(x) for i, x in enumerate(xs)]


class UPerNet(nn.Module):
    """UPerNet: PPM over conv5 (precise RoI pooling), FPN, fusion, and four heads.

    Returns raw logits, NHWC: object/part/material at stride 4, scene as (N, classes).
    """

    num_object: int
    num_part: int
    num_material: int
    num_scene: int
    fpn_dim: int = 512
    ppm_dim: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)

    @nn.compact
    def __call__(self, conv_out):
        conv5 = conv_out[-1]
        size = conv5.shape[1:3]
        pooled = [resize_bilinear(prroi_pool_full(conv5, (s, s)), size) for s in self.pool_scales]
        pooled = ConvBNList(self.ppm_dim, name="ppm_conv")(pooled)
        top = ConvBN(self.fpn_dim, name="ppm_last_conv")(jnp.concatenate([conv5] + pooled, -1))
        scene = Head(self.fpn_dim, self.num_scene, pool=True, name="scene_head")(top)[:, 0, 0, :]

        laterals = ConvBNList(self.fpn_dim, name="fpn_in")(conv_out[:-1])
        f, tops = top, [None] * len(laterals)
        for i in reversed(range(len(laterals))):  # top-down: f = lateral + upsampled f
            f = laterals[i] + resize_bilinear(f, laterals[i].shape[1:3])
            tops[i] = f
        features = ConvBNList(self.fpn_dim, wrap=True, name="fpn_out")(tops) + [top]  # P2..P5
        material = Head(self.fpn_dim, self.num_material, name="material_head")(features[0])
        out_size = features[0].shape[1:3]
        fused = jnp.concatenate([features[0]] + [resize_bilinear(p, out_size) for p in features[1:]], -1)
        x = ConvBN(self.fpn_dim, name="conv_fusion")(fused)
        obj = Head(self.fpn_dim, self.num_object, name="object_head")(x)
        part = Head(self.fpn_dim, self.num_part, name="part_head")(x)
        return {"object": obj, "part": part, "material": material, "scene": scene}


@dataclasses.dataclass(frozen=True)
class UPPConfig:
    """Sizes of the UPP network; the defaults are the published model's (save for class counts)."""

    num_object: int
    num_part: int
    num_material: int
    num_scene: int
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    stem_widths: tuple[int, ...] = (64, 64, 128)
    planes: tuple[int, ...] = (64, 128, 256, 512)
    fpn_dim: int = 512
    ppm_dim: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UPPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UPP config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class UPPNet(nn.Module):
    """Encoder + decoder, as the original's SegmentationModule (module paths 'encoder', 'decoder')."""

    config: UPPConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        feats = DeepStemResNet("bottleneck", c.stage_sizes, c.stem_widths, c.planes, name="encoder")(x)
        return UPerNet(c.num_object, c.num_part, c.num_material, c.num_scene, c.fpn_dim, c.ppm_dim,
                       c.pool_scales, name="decoder")(feats)


# --------------------------------------------------------------------------------------------
# Labels: numbering and part groups

@dataclasses.dataclass(frozen=True)
class UPPLabelPlan:
    """How the UPP heads map onto the shared label numbering (all static, computed once)."""

    labels: SegmentLabels
    num_objects: int  # No' = objects without background
    material_offset: int  # No' * mult, added to nonzero material ids
    owners: tuple[int, ...]  # object ids whose parts are reported, in the reported order
    groups: tuple[tuple[int, int], ...]  # per owner: (start, size) of its part logits
    translations: tuple[tuple[int, ...], ...]  # per owner: part position -> shared label id
    quad: bool  # two more channels: the object's top/bottom and left/right halves


def upp_label_plan(labeldata: Mapping[str, Any], quad: bool = False, all_parts: bool = False,
                   part_objects: Sequence[str] | None = None) -> UPPLabelPlan:
    """The original's numbering: 0, objects, [object-t, -l, -b, -r], materials, new part names.

    Part logits come in groups ordered by ascending object id (as the decoder was trained); each
    owner's group is found by its object id (the original used the owner's list position).
    """
    for key in ("object", "material", "object_part"):
        if key not in labeldata:
            raise KeyError(f"labels.json has no {key!r} entry (keys: {sorted(labeldata)})")
    objects = list(labeldata["object"])
    materials = list(labeldata["material"])
    object_part = labeldata["object_part"]
    object_ids = {name: i for i, name in enumerate(objects)}
    for owner in object_part:
        if owner not in object_ids:
            raise KeyError(f"labels.json object_part names {owner!r}, which is not an object")
    mult = 5 if quad else 1
    nobj = len(objects) - 1
    first_part = nobj * mult + 1 + (len(materials) - 1)
    if all_parts:
        owners = list(object_part)
    else:
        owners = list(DEFAULT_PART_OBJECTS if part_objects is None else part_objects)
        missing = [o for o in owners if o not in object_part]
        if missing:
            raise KeyError(f"part objects {missing} have no parts in labels.json "
                           f"(objects with parts: {list(object_part)})")
    # Decoder group layout: ascending object id, each group in its object_part order.
    starts, head = {}, 0
    for oid in sorted(object_ids[o] for o in object_part):
        size = len(object_part[objects[oid]])
        starts[oid] = (head, size)
        head += size
    part_numbers: dict[str, int] = {}
    part_names: list[str] = []
    translations = []
    for owner in owners:
        trans = []
        for part in object_part[owner]:
            if part in object_ids:
                trans.append(object_ids[part])
            else:
                if part not in part_numbers:
                    part_numbers[part] = first_part + len(part_names)
                    part_names.append(part)
                trans.append(part_numbers[part])
        translations.append(tuple(trans))
    names = ["-"] + objects[1:]
    cats = ["-"] + ["object"] * nobj
    if quad:
        for suffix in ("t", "l", "b", "r"):
            names += [f"{o}-{suffix}" for o in objects[1:]]
            cats += ["part"] * nobj
    names += materials[1:]
    cats += ["material"] * (len(materials) - 1)
    names += part_names
    cats += ["part"] * len(part_names)
    labels = SegmentLabels(tuple(names), tuple(cats), ("object", "part", "material"))
    return UPPLabelPlan(labels, nobj, nobj * mult, tuple(object_ids[o] for o in owners),
                        tuple(starts[object_ids[o]] for o in owners), tuple(translations), quad)


def num_part_logits(labeldata: Mapping[str, Any]) -> int:
    """Width of the part head: all parts of all objects with parts."""
    return sum(len(v) for v in labeldata["object_part"].values())


# --------------------------------------------------------------------------------------------
# The segmenter

def upp_preprocess(images: jax.Array) -> jax.Array:
    """[-1, 1] RGB NHWC -> 0..255 BGR minus the BGR mean (no std), as the original."""
    x = (images.astype(jnp.float32) + 1.0) / 2.0 * 255.0
    return x[..., ::-1] - jnp.asarray(BGR_MEAN, jnp.float32)


class UnifiedParsingSegmenter:
    """The UPP segmenter: objects, materials, parts of owner objects, optional quad halves.

    segment(images NHWC in [-1, 1], downsample) -> int32 (N, 3 or 5, H // ds, W // ds):
    channel 0 objects, 1 materials, 2 parts (where the owner object is predicted), 3-4 quads.
    """

    def __init__(self, variables: Any, labeldata: Mapping[str, Any], config: UPPConfig | Mapping,
                 segsizes: Sequence[int] = (256,), segdiv: str | None = None, all_parts: bool = False,
                 part_objects: Sequence[str] | None = None):
        if segdiv not in (None, "quad", "undivided"):
            raise ValueError(f"segdiv must be None or 'quad', got {segdiv!r}")
        self.config = config if isinstance(config, UPPConfig) else UPPConfig.from_dict(config)
        self.labeldata = dict(labeldata)
        c = self.config
        expect = {"num_object": len(labeldata["object"]), "num_material": len(labeldata["material"]),
                  "num_part": num_part_logits(labeldata)}
        if "scene" in labeldata:
            expect["num_scene"] = len(labeldata["scene"])
        for k, v in expect.items():
            if getattr(c, k) != v:
                raise ValueError(f"UPP weights have {getattr(c, k)} {k[4:]} classes but labels.json "
                                 f"lists {v}")
        self.quad = segdiv == "quad"
        self.segsizes = tuple(int(s) for s in segsizes)
        self.plan = upp_label_plan(labeldata, self.quad, all_parts, part_objects)
        self.labels = self.plan.labels
        self.variables = variables

    def logits(self, variables: Any, x: jax.Array) -> dict:
        """Raw head logits (NHWC) for an already preprocessed, already sized input."""
        return upp_logits(variables, x, config=self.config)

    def predict(self, images: jax.Array, downsample: int = 1) -> dict:
        """Summed-over-sizes probabilities, NHWC: 'object', 'material', 'parts' (one per owner)."""
        _check_images(images)
        seg_shape = (images.shape[1] // downsample, images.shape[2] // downsample)
        return upp_predict(self.variables, images, config=self.config, plan=self.plan,
                           segsizes=self.segsizes, seg_shape=seg_shape)

    def labels_from_probs(self, probs: Mapping[str, Any]) -> jax.Array:
        """Argmaxes translated to the shared numbering, (N, L, H, W) int32."""
        return upp_labels_from_probs(probs, self.plan)

    def segment(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        """NHWC float images in [-1, 1] -> int32 (N, L, H // downsample, W // downsample)."""
        _check_images(images)
        return upp_segment(self.variables, images, config=self.config, plan=self.plan,
                           segsizes=self.segsizes, downsample=downsample)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(cls, encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray],
                         labeldata: Mapping[str, Any], **kwargs) -> "UnifiedParsingSegmenter":
        """From the original's encoder/decoder state dicts (numpy arrays) and labels.json data."""
        config = UPPConfig(**keymaps.upp_config_from_torch(encoder, decoder, labeldata))
        variables = keymaps.convert_upp(encoder, decoder, dataclasses.asdict(config))
        return cls(variables, labeldata, config, **kwargs)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, **kwargs) -> "UnifiedParsingSegmenter":
        """From a folder holding encoder_epoch_40.pth, decoder_epoch_40.pth and labels.json."""
        enc, dec, labeldata = read_model_folder(directory, UPP_FILES)
        return cls.from_state_dicts(enc, dec, labeldata, **kwargs)


# Pure, jitted functions: static arguments are hashable configs, so every segmenter with the
# same sizes and labels shares one compilation.

@functools.partial(jax.jit, static_argnames="config")
def upp_logits(variables: Any, x: jax.Array, *, config: UPPConfig) -> dict:
    """Raw head logits (NHWC) of UPPNet for a preprocessed, sized input."""
    return UPPNet(config).apply(variables, x)


def _upp_probs(variables, images, config, plan, segsizes, seg_shape):
    x = upp_preprocess(images)
    probs = None
    for s in segsizes:
        raw = UPPNet(config).apply(variables, adaptive_avg_pool2d(x, (s, s)))
        obj = jax.nn.softmax(resize_bilinear(raw["object"], seg_shape), -1)
        mat = jax.nn.softmax(resize_bilinear(raw["material"], seg_shape), -1)
        part = resize_bilinear(raw["part"], seg_shape)
        parts = [jax.nn.softmax(part[..., a:a + n], -1) for a, n in plan.groups]
        cur = {"object": obj, "material": mat, "parts": parts}
        probs = cur if probs is None else jax.tree.map(jnp.add, probs, cur)
    return probs


@functools.partial(jax.jit, static_argnames=("config", "plan", "segsizes", "seg_shape"))
def upp_predict(variables: Any, images: jax.Array, *, config: UPPConfig, plan: UPPLabelPlan,
                segsizes: tuple[int, ...], seg_shape: tuple[int, int]) -> dict:
    """Probabilities summed over the sizes: object, material and the owners' part groups."""
    return _upp_probs(variables, images, config, plan, segsizes, seg_shape)


def upp_labels_from_probs(probs: Mapping[str, Any], plan: UPPLabelPlan) -> jax.Array:
    """Channels 0 objects, 1 materials (0 kept), 2 parts where the owner object is predicted,
    then the quad halves when `plan.quad`; int32 (N, L, H, W)."""
    obj = jnp.argmax(probs["object"], -1).astype(jnp.int32)
    mat = jnp.argmax(probs["material"], -1).astype(jnp.int32)
    mat = jnp.where(mat == 0, 0, mat + plan.material_offset)
    part = jnp.zeros_like(obj)
    for owner, trans, p in zip(plan.owners, plan.translations, probs["parts"]):
        ids = jnp.asarray(trans, jnp.int32)[jnp.argmax(p, -1)]
        part = jnp.where(obj == owner, ids, part)
    chans = [obj, mat, part]
    if plan.quad:
        q = quad_divide(obj, plan.num_objects)
        chans += [q[:, 0], q[:, 1]]
    return jnp.stack(chans, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "plan", "segsizes", "downsample"))
def upp_segment(variables: Any, images: jax.Array, *, config: UPPConfig, plan: UPPLabelPlan,
                segsizes: tuple[int, ...], downsample: int) -> jax.Array:
    """The whole UPP segmentation of NHWC [-1, 1] images, (N, L, H // ds, W // ds) int32."""
    seg_shape = (images.shape[1] // downsample, images.shape[2] // downsample)
    return upp_labels_from_probs(_upp_probs(variables, images, config, plan, segsizes, seg_shape), plan)


def _check_images(images) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"segmenters take NHWC RGB images (N, H, W, 3), got shape {images.shape}")


def read_model_folder(directory: str | os.PathLike, files: Sequence[str]):
    """Read (encoder state dict, decoder state dict, labels.json) from a segmenter folder."""

    directory = os.fspath(directory)
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise FileNotFoundError(f"segmenter folder {directory!r} lacks {', '.join(missing)}")
    enc = read_pth(os.path.join(directory, files[0]))
    dec = read_pth(os.path.join(directory, files[1]))
    path = os.path.join(directory, files[2])
    try:
        with open(path) as f:
            labeldata = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path!r} as JSON: {e}") from None
    return enc, dec, labeldata
