"""The original's segmentation networks as registered models, converted from its published files:

- `upp_segmenter`: unified perceptual parsing (ResNet-50 deep stem + UPerNet; objects, parts,
  materials, scenes), from upp-resnet50-upernet/{encoder,decoder}_epoch_40.pth + labels.json;
- `color_segmenter`: ResNet-18 dilated + PPM, from color-resnet18dilated-ppm_deepsup/.

`models.load(name)` gives the bare network (raw logits; layers to capture or dissect), with the
class counts read from labels.json. Labelled segmentations come from
`jaxdissect.segment.load_segmenter('netpqc')`, which wraps these networks.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from jaxdissect.models import registry
from jaxdissect.segment import color, upp
from jaxdissect.segment.merge import ensure_segmenter_files
from weight_conversion.keymaps import segmenters as keymaps

UPP_INPUT_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # inputs are 0..255 BGR less this mean, no std


def _files_folder(dirname: str, url: str, files, folder: str | os.PathLike | None) -> str:
    if folder is not None:
        return os.fspath(folder)
    return ensure_segmenter_files(dirname, url, files)


def upp_original_weights(folder: str | os.PathLike | None = None) -> tuple[Any, dict]:
    """(variables, config) from a folder of the original's UPP files (None: the cached download)."""
    folder = _files_folder(upp.UPP_DIRNAME, upp.UPP_URL, upp.UPP_FILES, folder)
    enc, dec, labeldata = upp.read_model_folder(folder, upp.UPP_FILES)
    config = dataclasses.asdict(upp.UPPConfig(**keymaps.upp_config_from_torch(enc, dec, labeldata)))
    return keymaps.convert_upp(enc, dec, config), config


def color_original_weights(folder: str | os.PathLike | None = None) -> tuple[Any, dict]:
    """(variables, config) from a folder of the original's color files (None: the cached download)."""
    folder = _files_folder(color.COLOR_DIRNAME, color.COLOR_URL, color.COLOR_FILES, folder)
    enc, dec, _ = upp.read_model_folder(folder, color.COLOR_FILES)
    config = dataclasses.asdict(color.ColorConfig(**keymaps.color_config_from_torch(enc, dec)))
    return keymaps.convert_color(enc, dec, config), config


def build_upp(config: Mapping[str, Any]) -> upp.UPPNet:
    """The UPP network for a config dict of UPPConfig's fields."""
    return upp.UPPNet(upp.UPPConfig.from_dict(config))


def build_color(config: Mapping[str, Any]) -> color.ColorNet:
    """The color network for a config dict of ColorConfig's fields."""
    return color.ColorNet(color.ColorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))


_ENCODER_LAYERS = tuple(f"encoder.layer{i}" for i in range(1, 5))

UPP_SPEC = registry.register(registry.ModelSpec(
    name="upp_segmenter", kind="segmenter", build=build_upp,
    # The published architecture; the class counts are placeholders until labels.json is read.
    default_config={"num_object": 1, "num_part": 1, "num_material": 1, "num_scene": 1},
    input_size=(256, 256), normalization={"range": (0, 255), "channel_order": "BGR", "mean": UPP_INPUT_MEAN_BGR},
    default_layer="decoder.conv_fusion",
    layer_names=_ENCODER_LAYERS + ("decoder.ppm_last_conv", "decoder.conv_fusion"),
    original_files=upp_original_weights))

COLOR_SPEC = registry.register(registry.ModelSpec(
    name="color_segmenter", kind="segmenter", build=build_color,
    default_config={"num_class": 1},  # the published architecture; num_class comes from the files
    input_size=(256, 256), normalization={"from_labels_json": "imageformat"},
    default_layer="encoder.layer4", layer_names=_ENCODER_LAYERS,
    original_files=color_original_weights))
