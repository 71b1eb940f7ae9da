"""Key map: the original's VGG16 Places365 state dict -> jaxdissect.models.vgg.VGG16 variables.

Keys 'features.convX_Y.weight/bias' -> params/features/convX_Y/conv, 'classifier.fc6|fc7.*' ->
params/classifier/fc6|fc7/fc, 'classifier.fc8a.*' -> params/classifier/fc8a. The Flax model
flattens in PyTorch's (C, H, W) order, so fc6 needs no row permutation. The conv stages
(`stages`, the model's (stage, number of convs, channels) list) are passed in by
jaxdissect.models.vgg through `keymap(stages)`.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from weight_conversion.keymaps import common

MODEL = "vgg16_places"


def config_from_torch(state: Mapping[str, np.ndarray]) -> dict:
    """{'num_classes'} read from fc8a's weight."""
    return {"num_classes": int(common.require(state, "classifier.fc8a.weight", MODEL, ndim=2).shape[0])}


def entries(config: Mapping[str, Any], stages: Sequence[tuple[int, int, int]]) -> list[common.Entry]:
    """Every checkpoint key of the model with its expected shape and Flax destination."""
    out, in_ch = [], 3
    for stage, n, ch in stages:
        for i in range(1, n + 1):
            name = f"conv{stage}_{i}"
            out += common.conv(f"features.{name}", ("features", name, "conv"), ch, in_ch, 3)
            in_ch = ch
    out += common.linear("classifier.fc6", ("classifier", "fc6", "fc"), 4096, 512 * 7 * 7)
    out += common.linear("classifier.fc7", ("classifier", "fc7", "fc"), 4096, 4096)
    out += common.linear("classifier.fc8a", ("classifier", "fc8a"), int(config["num_classes"]), 4096)
    return out


def convert(state: Mapping[str, np.ndarray], config: Mapping[str, Any],
            stages: Sequence[tuple[int, int, int]]) -> dict:
    """The Flax variables {'params': ...} of VGG16 from a PyTorch state dict."""
    return common.apply_keymap(state, entries(config, stages), MODEL)


def keymap(stages: Sequence[tuple[int, int, int]]) -> common.KeyMap:
    """The key map bound to the model's conv stages."""
    return common.KeyMap(config_from_torch, functools.partial(entries, stages=stages),
                         functools.partial(convert, stages=stages))
