"""Key maps of the segmenters: the unified-parsing UPerNet (deep-stem ResNet-50 encoder) and the
color ResNet-18-dilated + PPM-deepsup model. Their Flax module paths equal the torch state-dict
prefixes under 'encoder' / 'decoder', so the maps are generated from the module layout: every
torch Conv2d 'a.b.weight' -> params/encoder|decoder/a/b/kernel, every BatchNorm likewise with
params scale/bias and batch_stats mean/var. Configs are plain dicts (the fields of
jaxdissect.segment's UPPConfig / ColorConfig): read from the checkpoints here, passed back in by
the caller to convert."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from weight_conversion.keymaps.common import Entry, apply_keymap, batchnorm, conv, require
from weight_conversion.errors import KeyMapError

# Training-only branches of the color decoder (deep supervision): accepted, never used.
COLOR_TRAINING_ONLY = ("cbr_deepsup.", "conv_last_deepsup.")


def strip_module_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a DataParallel 'module.' prefix when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------------
# Shared pieces

def _conv(key, out_ch, in_ch, k, bias=False, top="encoder"):
    return conv(key, (top, *key.split(".")), out_ch, in_ch, k, bias=bias)


def _bn(key, n, top="encoder"):
    return batchnorm(key, (top, *key.split(".")), n)


def _convbn(key, out_ch, in_ch, k, top, conv_idx="0", bn_idx="1"):
    return (_conv(f"{key}.{conv_idx}", out_ch, in_ch, k, top=top)
            + _bn(f"{key}.{bn_idx}", out_ch, top=top))


def deep_stem_resnet_entries(block: str, stage_sizes, stem_widths, planes) -> list[Entry]:
    """Entries of the deep-stem ResNet encoder ('conv1..3', 'bn1..3', 'layerK.J.*')."""
    entries, cin = [], 3
    for i, w in enumerate(stem_widths, start=1):
        entries += _conv(f"conv{i}", w, cin, 3) + _bn(f"bn{i}", w)
        cin = w
    expansion = 4 if block == "bottleneck" else 1
    for s, (n, p) in enumerate(zip(stage_sizes, planes), start=1):
        for j in range(n):
            pre = f"layer{s}.{j}"
            if block == "bottleneck":
                entries += (_conv(f"{pre}.conv1", p, cin, 1) + _bn(f"{pre}.bn1", p)
                            + _conv(f"{pre}.conv2", p, p, 3) + _bn(f"{pre}.bn2", p)
                            + _conv(f"{pre}.conv3", p * 4, p, 1) + _bn(f"{pre}.bn3", p * 4))
            else:
                entries += (_conv(f"{pre}.conv1", p, cin, 3) + _bn(f"{pre}.bn1", p)
                            + _conv(f"{pre}.conv2", p, p, 3) + _bn(f"{pre}.bn2", p))
            if j == 0 and (s > 1 or cin != p * expansion):
                entries += _convbn(f"{pre}.downsample", p * expansion, cin, 1, "encoder")
            cin = p * expansion
    return entries


def _count_blocks(state, stage: int) -> int:
    n = 0
    while f"layer{stage}.{n}.conv1.weight" in state:
        n += 1
    return n


def resnet_sizes(state: Mapping[str, np.ndarray], model: str) -> dict:
    """stage_sizes, stem_widths, planes read from an encoder state dict."""
    stem = tuple(int(require(state, f"conv{i}.weight", model, 4).shape[0]) for i in (1, 2, 3))
    sizes = tuple(_count_blocks(state, s) for s in (1, 2, 3, 4))
    if 0 in sizes:
        raise KeyMapError(f"checkpoint does not match model {model}: stage layer{sizes.index(0) + 1} "
                          f"has no blocks (no 'layer{sizes.index(0) + 1}.0.conv1.weight')")
    planes = tuple(int(require(state, f"layer{s}.0.conv1.weight", model, 4).shape[0]) for s in (1, 2, 3, 4))
    return {"stage_sizes": sizes, "stem_widths": stem, "planes": planes}


# --------------------------------------------------------------------------------------------
# UPP: deep-stem ResNet-50 + UPerNet

def upernet_entries(config: Mapping[str, Any]) -> list[Entry]:
    """Entries of the UPerNet decoder for a UPP config dict (planes, pool_scales, ppm_dim,
    fpn_dim and the four class counts)."""
    c = config
    fc_dim = c["planes"][-1] * 4
    inplanes = [p * 4 for p in c["planes"]]
    d, f = "decoder", c["fpn_dim"]
    entries = []
    for i in range(len(c["pool_scales"])):
        entries += _convbn(f"ppm_conv.{i}", c["ppm_dim"], fc_dim, 1, d)
    entries += _convbn("ppm_last_conv", f, fc_dim + len(c["pool_scales"]) * c["ppm_dim"], 3, d)
    for i, cin in enumerate(inplanes[:-1]):
        entries += _convbn(f"fpn_in.{i}", f, cin, 1, d)
        entries += _convbn(f"fpn_out.{i}.0", f, f, 3, d)
    entries += _convbn("conv_fusion", f, len(inplanes) * f, 3, d)
    entries += _convbn("scene_head.0", f, f, 3, d) + _conv("scene_head.2", c["num_scene"], f, 1, True, d)
    for head, n in (("object_head", c["num_object"]), ("part_head", c["num_part"]),
                    ("material_head", c["num_material"])):
        entries += _convbn(f"{head}.0", f, f, 3, d) + _conv(f"{head}.1", n, f, 1, True, d)
    return entries


def upp_config_from_torch(encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray],
                          labeldata: Mapping[str, Any] | None = None) -> dict:
    """The UPP config read from the encoder/decoder state dicts' shapes: a dict of UPPConfig
    fields (class counts, fpn/ppm widths, stage sizes, stem widths, planes; the 4 pool scales
    are the published ones)."""
    encoder, decoder = strip_module_prefix(encoder), strip_module_prefix(decoder)
    m = "upp_segmenter"
    sizes = resnet_sizes(encoder, m)
    n_scales = 0
    while f"ppm_conv.{n_scales}.0.weight" in decoder:
        n_scales += 1
    if n_scales != 4:
        raise KeyMapError(f"checkpoint does not match model {m}: expected 4 pyramid pooling scales "
                          f"('ppm_conv.0..3'), found {n_scales}")
    return dict(
        num_object=int(require(decoder, "object_head.1.weight", m, 4).shape[0]),
        num_part=int(require(decoder, "part_head.1.weight", m, 4).shape[0]),
        num_material=int(require(decoder, "material_head.1.weight", m, 4).shape[0]),
        num_scene=int(require(decoder, "scene_head.2.weight", m, 4).shape[0]),
        fpn_dim=int(require(decoder, "fpn_in.0.0.weight", m, 4).shape[0]),
        ppm_dim=int(require(decoder, "ppm_conv.0.0.weight", m, 4).shape[0]),
        **sizes)


def convert_upp(encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray],
                config: Mapping[str, Any]) -> dict:
    """Flax variables {'params', 'batch_stats'} of UPPNet from the two torch state dicts, for a
    config dict of UPPConfig's fields."""
    state = {"encoder." + k: v for k, v in strip_module_prefix(encoder).items()}
    state.update({"decoder." + k: v for k, v in strip_module_prefix(decoder).items()})
    entries = deep_stem_resnet_entries("bottleneck", config["stage_sizes"], config["stem_widths"], config["planes"])
    entries = [_prefixed(e, "encoder") for e in entries] + [_prefixed(e, "decoder") for e in upernet_entries(config)]
    return apply_keymap(state, entries, "upp_segmenter")


def _prefixed(e: Entry, top: str) -> Entry:
    """The entry with its torch key under `top.` (targets already start with `top`)."""
    return Entry(f"{top}.{e.key}", e.shape, e.target, e.transform)


# --------------------------------------------------------------------------------------------
# Color: deep-stem ResNet-18 (dilated) + PPM deepsup

def ppm_deepsup_entries(config: Mapping[str, Any]) -> list[Entry]:
    """Entries of the PPM-deepsup decoder's inference path for a color config dict (planes,
    pool_scales, ppm_dim, num_class)."""
    c = config
    fc_dim, d = c["planes"][-1], "decoder"
    entries = []
    for i in range(len(c["pool_scales"])):
        entries += _convbn(f"ppm.{i}", c["ppm_dim"], fc_dim, 1, d, conv_idx="1", bn_idx="2")
    entries += _conv("conv_last.0", c["ppm_dim"], fc_dim + len(c["pool_scales"]) * c["ppm_dim"], 3, top=d)
    entries += _bn("conv_last.1", c["ppm_dim"], top=d)
    entries += _conv("conv_last.4", c["num_class"], c["ppm_dim"], 1, True, d)
    return entries


def color_config_from_torch(encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray]) -> dict:
    """The color config read from the encoder/decoder state dicts' shapes: a dict of ColorConfig
    fields (num_class, ppm_dim, stage sizes, stem widths, planes)."""
    encoder, decoder = strip_module_prefix(encoder), strip_module_prefix(decoder)
    m = "color_segmenter"
    n_scales = 0
    while f"ppm.{n_scales}.1.weight" in decoder:
        n_scales += 1
    if n_scales != 4:
        raise KeyMapError(f"checkpoint does not match model {m}: expected 4 pyramid pooling scales "
                          f"('ppm.0..3'), found {n_scales}")
    return dict(num_class=int(require(decoder, "conv_last.4.weight", m, 4).shape[0]),
                       ppm_dim=int(require(decoder, "ppm.0.1.weight", m, 4).shape[0]),
                       **resnet_sizes(encoder, m))


def convert_color(encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray],
                  config: Mapping[str, Any]) -> dict:
    """Flax variables of ColorNet for a config dict of ColorConfig's fields; the deep-supervision
    branch (training only) is dropped."""
    state = {"encoder." + k: v for k, v in strip_module_prefix(encoder).items()}
    state.update({"decoder." + k: v for k, v in strip_module_prefix(decoder).items()
                  if not k.startswith(COLOR_TRAINING_ONLY)})
    entries = deep_stem_resnet_entries("basic", config["stage_sizes"], config["stem_widths"], config["planes"])
    entries = [_prefixed(e, "encoder") for e in entries] + [_prefixed(e, "decoder") for e in ppm_deepsup_entries(config)]
    return apply_keymap(state, entries, "color_segmenter")
