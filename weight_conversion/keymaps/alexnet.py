"""Key map: the original's AlexNet Places365 state dict -> jaxdissect.models.alexnet.AlexNet variables.

Keys 'convN.weight/bias' -> params/convN/conv (grouped kernels keep their (I/groups) depth),
'fc6|fc7.*' -> params/fc6|fc7/fc, 'fc8.*' -> params/fc8. The Flax model flattens in PyTorch's
(C, H, W) order, so fc6 needs no row permutation.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from weight_conversion.keymaps import common

MODEL = "alexnet_places"


def config_from_torch(state: Mapping[str, np.ndarray]) -> dict:
    """{'num_classes'} read from fc8's weight."""
    return {"num_classes": int(common.require(state, "fc8.weight", MODEL, ndim=2).shape[0])}


def entries(config: Mapping[str, Any], convs: Mapping[str, tuple]) -> list[common.Entry]:
    """Every checkpoint key of the model with its expected shape and Flax destination."""
    out, in_ch = [], 3
    for name, (ch, k, _, _, groups) in convs.items():
        out += common.conv(name, (name, "conv"), ch, in_ch, k, groups=groups)
        in_ch = ch
    out += common.linear("fc6", ("fc6", "fc"), 4096, 256 * 6 * 6)
    out += common.linear("fc7", ("fc7", "fc"), 4096, 4096)
    out += common.linear("fc8", ("fc8",), int(config["num_classes"]), 4096)
    return out


def convert(state: Mapping[str, np.ndarray], config: Mapping[str, Any], convs: Mapping[str, tuple]) -> dict:
    """The Flax variables {'params': ...} of AlexNet from a PyTorch state dict."""
    return common.apply_keymap(state, entries(config, convs), MODEL)


def keymap(convs: Mapping[str, tuple]) -> common.KeyMap:
    """The key map bound to the model's conv layout."""
    return common.KeyMap(config_from_torch, functools.partial(entries, convs=convs),
                         functools.partial(convert, convs=convs))
