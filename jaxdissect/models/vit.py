"""`toy_vit`: a small vision transformer of the scenes world, shipped with trained weights.

128x128 images (ImageNet mean/std) -> `patch_embed` (16x16 patches, an 8x8 grid, NHWC) ->
a class token and learned position embeddings -> `blocks.0` .. `blocks.{depth-1}` (pre-norm
transformer blocks; each block's output is (N, 1 + 64, dim) tokens) -> `norm` -> `head` on
the class token. Inside a block: `blocks.i.attn` (the attention's output after its projection),
`blocks.i.attn.heads` (the heads' outputs before the projection, concatenated: channels
[h * head_dim, (h + 1) * head_dim) are head h), `blocks.i.mlp` and its hidden `blocks.i.mlp.fc1`
(after the GELU). Token layers are dissected through their patch grid (models.views).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.models import registry
from jaxdissect.models.views import LayerView
from jaxdissect.data.scenes import SCENE_CLASSES

VIT_CONFIG = {"num_classes": 8, "patch": 16, "dim": 96, "depth": 6, "heads": 4, "mlp": 192}


class Heads(nn.Module):
    """Multi-head scaled dot-product attention from the fused (N, T, 3 * dim) projections; returns
    the heads' outputs concatenated head by head, (N, T, dim), before the output projection."""

    heads: int

    @nn.compact
    def __call__(self, qkv: jax.Array) -> jax.Array:
        n, t, three_dim = qkv.shape
        dim = three_dim // 3
        q, k, v = jnp.split(qkv.reshape(n, t, 3, self.heads, dim // self.heads), 3, axis=2)
        q, k, v = (a[:, :, 0] for a in (q, k, v))  # (N, T, heads, head_dim)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
        return out.reshape(n, t, dim)


class Attention(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        qkv = nn.Dense(3 * dim, name="qkv")(x)
        return nn.Dense(dim, name="proj")(Heads(self.heads, name="heads")(qkv))


class DenseGELU(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.gelu(nn.Dense(self.features, name="dense")(x))


class Mlp(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(x.shape[-1], name="fc2")(DenseGELU(self.hidden, name="fc1")(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + Attention(self.heads, name="attn")(nn.LayerNorm(name="ln1")(x))
        return x + Mlp(self.mlp, name="mlp")(nn.LayerNorm(name="ln2")(x))


class Blocks(nn.Module):
    """The block stack; block i is the child named 'i', so its layer name is 'blocks.i'."""

    depth: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = Block(self.heads, self.mlp, name=str(i))(x)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> `dim` channels: a stride-p convolution, computed as one
    matmul over the flattened patches (much faster on CPU); the kernel is (p, p, 3, dim) as a Conv's."""

    dim: int
    patch: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, hh, ww, c = x.shape
        p = self.patch
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.dim))
        bias = self.param("bias", nn.initializers.zeros, (self.dim,))
        patches = x.reshape(n, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return jnp.einsum("nhwijc,ijcd->nhwd", patches, kernel.astype(x.dtype)) + bias.astype(x.dtype)


class ToyViT(nn.Module):
    """NHWC normalized images -> scene class logits, through a class token."""

    num_classes: int = 8
    patch: int = 16
    dim: int = 96
    depth: int = 6
    heads: int = 4
    mlp: int = 192

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch
        x = PatchEmbed(self.dim, p, name="patch_embed")(x)
        n, h, w, d = x.shape
        tokens = x.reshape(n, h * w, d)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d))
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)).astype(tokens.dtype), tokens], axis=1)
        tokens = tokens + self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + h * w, d))
        tokens = Blocks(self.depth, self.heads, self.mlp, name="blocks")(tokens)
        return nn.Dense(self.num_classes, name="head")(nn.LayerNorm(name="norm")(tokens)[:, 0])


def build_vit(config: Mapping[str, Any]) -> ToyViT:
    c = {**VIT_CONFIG, **config}
    return ToyViT(num_classes=int(c["num_classes"]), patch=int(c["patch"]), dim=int(c["dim"]),
                  depth=int(c["depth"]), heads=int(c["heads"]), mlp=int(c["mlp"]))


def vit_layer_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The dissectable layers in forward order: the patch grid, then per block its attention's
    heads and output, its MLP's hidden layer and output, and the block's output."""
    depth = int({**VIT_CONFIG, **config}["depth"])
    names = ["patch_embed"]
    for i in range(depth):
        names += [f"blocks.{i}.attn.heads", f"blocks.{i}.attn", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp", f"blocks.{i}"]
    return tuple(names)


def vit_layer_views(config: Mapping[str, Any]) -> dict[str, LayerView]:
    """Every token layer drops the class token; `blocks.i.attn.heads` knows its head count, so
    'blocks.i.attn.heads:head_norms' dissects one unit per head."""
    heads = int({**VIT_CONFIG, **config}["heads"])
    return {name: LayerView(prefix_tokens=1, heads=heads if name.endswith(".heads") else None)
            for name in vit_layer_names(config) if name != "patch_embed"}


def _scene_classes():
    return SCENE_CLASSES


VIT_SPEC = registry.register(registry.ModelSpec(
    name="toy_vit", kind="classifier", build=build_vit, default_config=dict(VIT_CONFIG),
    input_size=(128, 128), normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="blocks.5", layer_names=vit_layer_names(VIT_CONFIG), layer_names_for=vit_layer_names,
    layer_views_for=vit_layer_views, labels=_scene_classes, packaged_weights="weights/toy_vit"))
