"""Key map: the original's Torch7-converted ResNet152 Places365 state dict ->
jaxdissect.models.resnet152.ResNet152 variables.

The Flax module paths equal the state-dict prefixes ('4.0.0.0.0' -> params/4/0/0/0/0), so the map
is: conv '.weight' -> 'kernel' (OIHW -> HWIO); BN '.weight/.bias' -> params 'scale/bias',
'.running_mean/.running_var' -> batch_stats 'mean/var' ('num_batches_tracked' is ignored);
'10.1.*' Linear -> params/10/1 (transposed). The stage names ('4'..'7') and the default block
counts are passed in by jaxdissect.models.resnet152 through `keymap(stage_names, default_blocks)`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

import numpy as np

from weight_conversion.keymaps import common

MODEL = "resnet152_places"


def config_from_torch(state: Mapping[str, np.ndarray], stage_names: Sequence[str]) -> dict:
    """{'num_classes', 'width', 'blocks'} read from the stem conv, the head and the block keys."""
    width = int(common.require(state, "0.weight", MODEL, ndim=4).shape[0])
    num_classes = int(common.require(state, "10.1.weight", MODEL, ndim=2).shape[0])
    blocks = []
    for stage in stage_names:
        pattern = re.compile(rf"^{stage}\.(\d+)\.0\.0\.0\.weight$")
        found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
        if not found:
            common.require(state, f"{stage}.0.0.0.0.weight", MODEL)  # raises, naming the key
        blocks.append(max(found) + 1)
    return {"num_classes": num_classes, "width": width, "blocks": blocks}


def entries(config: Mapping[str, Any], stage_names: Sequence[str], default_blocks: Sequence[int]) -> list[common.Entry]:
    """Every checkpoint key of the model with its expected shape and Flax destination."""
    w = int(config.get("width", 64))
    blocks = [int(b) for b in config.get("blocks", default_blocks)]
    out = common.conv("0", ("0",), w, 3, 7, bias=False) + common.batchnorm("1", ("1",), w)
    in_ch = w
    for s, (stage, n) in enumerate(zip(stage_names, blocks)):
        mid = w * 2 ** s
        for b in range(n):
            p = f"{stage}.{b}.0"
            for idx, (o, i, k) in {"0": (mid, in_ch, 1), "3": (mid, mid, 3), "6": (4 * mid, mid, 1)}.items():
                out += common.conv(f"{p}.0.{idx}", (*p.split("."), "0", idx), o, i, k, bias=False)
                bn = str(int(idx) + 1)
                out += common.batchnorm(f"{p}.0.{bn}", (*p.split("."), "0", bn), o)
            if b == 0:
                out += common.conv(f"{p}.1.0", (*p.split("."), "1", "0"), 4 * mid, in_ch, 1, bias=False)
                out += common.batchnorm(f"{p}.1.1", (*p.split("."), "1", "1"), 4 * mid)
            in_ch = 4 * mid
    out += common.linear("10.1", ("10", "1"), int(config.get("num_classes", 365)), in_ch)
    return out


def convert(state: Mapping[str, np.ndarray], config: Mapping[str, Any], stage_names: Sequence[str],
            default_blocks: Sequence[int]) -> dict:
    """The Flax variables {'params', 'batch_stats'} of ResNet152 from a PyTorch state dict."""
    return common.apply_keymap(state, entries(config, stage_names, default_blocks), MODEL)


def keymap(stage_names: Sequence[str], default_blocks: Sequence[int]) -> common.KeyMap:
    """The key map bound to the model's stage names and default block counts."""
    facts = {"stage_names": tuple(stage_names), "default_blocks": tuple(default_blocks)}
    return common.KeyMap(functools.partial(config_from_torch, stage_names=facts["stage_names"]),
                         functools.partial(entries, **facts), functools.partial(convert, **facts))
