"""Key map: OpenAI CLIP (ViT image tower) state dict -> jaxdissect.models.clip.CLIP variables.

The sizes are read from the checkpoint as the original's `build_model` reads them (widths from
conv1 / ln_final, depths from the block keys, patch size from conv1, resolution from the
positional embedding, heads = width // 64). The Flax paths equal the state-dict keys
('visual.transformer.resblocks.0.attn.in_proj_weight' -> params/visual/transformer/resblocks/
0/attn/in_proj/kernel). Linear and in_proj weights are transposed; conv1 goes OIHW -> HWIO;
class/positional embeddings, `visual.proj`, `text_projection` and `logit_scale` are copied.
The TorchScript archive's extra entries 'input_resolution', 'context_length' and 'vocab_size'
(which the original also drops) are ignored. Imports nothing of jaxdissect.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from weight_conversion.keymaps import common

MODEL = "clip_vit_b32"
DROPPED = ("input_resolution", "context_length", "vocab_size")


def _count_blocks(state: Mapping[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not found:
        common.require(state, f"{prefix}0.attn.in_proj_weight", MODEL)  # raises, naming the key
    return max(found) + 1


def config_from_torch(state: Mapping[str, np.ndarray]) -> dict:
    """The CLIP module's sizes, read from the checkpoint."""
    conv1 = common.require(state, "visual.conv1.weight", MODEL, ndim=4)
    pos = common.require(state, "visual.positional_embedding", MODEL, ndim=2)
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise common.KeyMapError(f"checkpoint does not match model {MODEL}: 'visual.positional_embedding' has "
                                 f"{pos.shape[0]} rows, not a square grid plus the class token")
    text_pos = common.require(state, "positional_embedding", MODEL, ndim=2)
    return {"embed_dim": int(common.require(state, "text_projection", MODEL, ndim=2).shape[1]),
            "image_resolution": int(conv1.shape[-1] * grid),
            "vision_layers": _count_blocks(state, "visual.transformer.resblocks."),
            "vision_width": int(conv1.shape[0]),
            "vision_patch_size": int(conv1.shape[-1]),
            "context_length": int(text_pos.shape[0]),
            "vocab_size": int(common.require(state, "token_embedding.weight", MODEL, ndim=2).shape[0]),
            "transformer_width": int(common.require(state, "ln_final.weight", MODEL, ndim=1).shape[0]),
            "transformer_heads": int(common.require(state, "ln_final.weight", MODEL, ndim=1).shape[0]) // 64,
            "transformer_layers": _count_blocks(state, "transformer.resblocks.")}


def _norm(key: str, path: tuple[str, ...], n: int) -> list[common.Entry]:
    return [common.Entry(f"{key}.weight", (n,), ("params", *path, "scale")),
            common.Entry(f"{key}.bias", (n,), ("params", *path, "bias"))]


def _blocks(prefix: str, path: tuple[str, ...], width: int, layers: int) -> list[common.Entry]:
    out = []
    for i in range(layers):
        k, p = f"{prefix}.resblocks.{i}", (*path, "resblocks", str(i))
        out += [common.Entry(f"{k}.attn.in_proj_weight", (3 * width, width), ("params", *p, "attn", "in_proj", "kernel"),
                             common.dense_kernel),
                common.Entry(f"{k}.attn.in_proj_bias", (3 * width,), ("params", *p, "attn", "in_proj", "bias"))]
        out += common.linear(f"{k}.attn.out_proj", (*p, "attn", "out_proj"), width, width)
        out += _norm(f"{k}.ln_1", (*p, "ln_1"), width) + _norm(f"{k}.ln_2", (*p, "ln_2"), width)
        out += common.linear(f"{k}.mlp.c_fc", (*p, "mlp", "c_fc"), 4 * width, width)
        out += common.linear(f"{k}.mlp.c_proj", (*p, "mlp", "c_proj"), width, 4 * width)
    return out


def entries(config: Mapping[str, Any]) -> list[common.Entry]:
    """Every checkpoint key of the model with its expected shape and Flax destination."""
    c = {k: int(v) for k, v in config.items() if isinstance(v, (int, np.integer))}
    vw, tw, e = c["vision_width"], c["transformer_width"], c["embed_dim"]
    grid = c["image_resolution"] // c["vision_patch_size"]
    out = common.conv("visual.conv1", ("visual", "conv1"), vw, 3, c["vision_patch_size"], bias=False)
    out += [common.Entry("visual.class_embedding", (vw,), ("params", "visual", "class_embedding")),
            common.Entry("visual.positional_embedding", (grid * grid + 1, vw), ("params", "visual", "positional_embedding"))]
    out += _norm("visual.ln_pre", ("visual", "ln_pre"), vw)
    out += _blocks("visual.transformer", ("visual", "transformer"), vw, c["vision_layers"])
    out += _norm("visual.ln_post", ("visual", "ln_post"), vw)
    out += [common.Entry("visual.proj", (vw, e), ("params", "visual", "proj")),
            common.Entry("token_embedding.weight", (c["vocab_size"], tw), ("params", "token_embedding", "embedding")),
            common.Entry("positional_embedding", (c["context_length"], tw), ("params", "positional_embedding"))]
    out += _blocks("transformer", ("transformer",), tw, c["transformer_layers"])
    out += _norm("ln_final", ("ln_final",), tw)
    out += [common.Entry("text_projection", (tw, e), ("params", "text_projection")),
            common.Entry("logit_scale", (), ("params", "logit_scale"))]
    return out


def convert(state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
    """The Flax variables {'params': ...} of CLIP from an OpenAI CLIP state dict."""
    state = {k: v for k, v in state.items() if k not in DROPPED}
    variables = common.apply_keymap(state, entries(config), MODEL)
    # apply_keymap's contiguous copy makes 0-d arrays 1-d: logit_scale is a scalar
    variables["params"]["logit_scale"] = variables["params"]["logit_scale"].reshape(())
    return variables


KEYMAP = common.KeyMap(config_from_torch, entries, convert)
