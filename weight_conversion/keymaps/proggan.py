"""Key map: the original's ProgressiveGenerator state dict -> jaxdissect.models.proggan variables.

Keys 'layerN.conv.weight' -> params/layerN/conv/kernel (OIHW -> HWIO), 'layerN.wscale.b' ->
params/layerN/wscale/b, and the same for the output block 'output_RxR'. The sizes come from the
checkpoint like the original's sizes_from_state_dict: z_dim = layer1's in-channels, and the width
at each resolution = the out-channels of layer1, layer3, layer5, ... Checkpoints in the older
naming ('features.N.*', 'output.*') are renamed first, as the original does. The output block's
key 'output_RxR' (R = 4 * 2**(widths - 1)) is the checkpoint's own naming; the converted tree is
checked against the module afterwards (jaxdissect.models.conversion).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from weight_conversion.keymaps import common

MODEL = "proggan"
_OLD = re.compile(r"^features\.(\d+)\.(.*)$")


def _count(state: Mapping[str, Any], key_format: str, start: int) -> int:
    """How many consecutive conv layers `key_format.format(start), ...` the state has."""
    n = 0
    while key_format.format(start + n) in state:
        n += 1
    return n


def output_key(n_resolutions: int) -> str:
    """The output block's name for `n_resolutions` widths (4x4 .. RxR): 'output_RxR'."""
    res = 4 * 2 ** (n_resolutions - 1)
    return f"output_{res}x{res}"


def rename_old_keys(state: Mapping[str, Any]) -> dict:
    """'features.N.x' -> 'layer<N+1>.x' and 'output.x' -> 'output_RxR.x'; other states unchanged."""
    if "features.0.conv.weight" not in state:
        return dict(state)
    n = _count(state, "features.{}.conv.weight", 0)
    output = output_key(n // 2)
    out = {}
    for k, v in state.items():
        m = _OLD.match(k)
        if m:
            k = f"layer{int(m.group(1)) + 1}.{m.group(2)}"
        elif k.startswith("output."):
            k = f"{output}." + k[len("output."):]
        out[k] = v
    return out


def config_from_torch(state: Mapping[str, np.ndarray]) -> dict:
    """{'z_dim', 'channels'} read from the conv weights, as the original's sizes_from_state_dict."""
    state = rename_old_keys(state)
    z_dim = int(common.require(state, "layer1.conv.weight", MODEL, ndim=4).shape[1])
    n = _count(state, "layer{}.conv.weight", 1)
    channels = [int(common.require(state, f"layer{i}.conv.weight", MODEL, ndim=4).shape[0])
                for i in range(1, n + 1, 2)]
    return {"z_dim": z_dim, "channels": channels}


def entries(config: Mapping[str, Any]) -> list[common.Entry]:
    """Every checkpoint key of the generator with its expected shape and Flax destination."""
    channels = [int(c) for c in config["channels"]]
    prev, out = int(config["z_dim"]), []

    def block(name: str, o: int, i: int, k: int) -> None:
        out.extend(common.conv(f"{name}.conv", (name, "conv"), o, i, k, bias=False))
        out.append(common.Entry(f"{name}.wscale.b", (o,), ("params", name, "wscale", "b")))

    block("layer1", channels[0], prev, 4)
    block("layer2", channels[0], channels[0], 3)
    prev = channels[0]
    for j, c in enumerate(channels[1:]):
        block(f"layer{2 * j + 3}", c, prev, 3)
        block(f"layer{2 * j + 4}", c, c, 3)
        prev = c
    block(output_key(len(channels)), 3, prev, 1)
    return out


def convert(state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
    """The Flax variables {'params': ...} of a ProgressiveGenerator from a PyTorch state dict."""
    return common.apply_keymap(rename_old_keys(state), entries(config), MODEL)


KEYMAP = common.KeyMap(config_from_torch, entries, convert)
