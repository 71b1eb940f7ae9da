"""CLIP (Radford et al. 2021) in Flax with the OpenAI original's layer names, and `clip_vit_b32`.

Module paths equal the original's state-dict prefixes: `visual.conv1`, `visual.class_embedding`,
`visual.positional_embedding`, `visual.ln_pre`, `visual.transformer.resblocks.N.{ln_1, attn,
ln_2, mlp.c_fc, mlp.c_proj}`, `visual.ln_post`, `visual.proj`, `token_embedding`,
`positional_embedding`, `transformer.resblocks.N...`, `ln_final`, `text_projection`,
`logit_scale`. `attn` is torch's nn.MultiheadAttention (one `in_proj` for q, k, v and an
`out_proj`); the MLP uses quick_gelu; the text transformer is causal and pools the features
of the end-of-text token (the highest token id in each row, as the original does).
Images are NHWC at `image_resolution`, normalized with CLIP's mean/std (`CLIP_NORMALIZATION`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models import registry
from weight_conversion.keymaps import clip as clip_keymap

CLIP_NORMALIZATION = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
# The OpenAI checkpoint of ViT-B/32; the folder name is the file's sha256 (as the original checks it).
VIT_B32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
VIT_B32_URL = f"https://openaipublic.azureedge.net/clip/models/{VIT_B32_SHA256}/ViT-B-32.pt"
VIT_B32_CONFIG = {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
                  "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408, "transformer_width": 512,
                  "transformer_heads": 8, "transformer_layers": 12}


def quick_gelu(x: jax.Array) -> jax.Array:
    """The original's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def layer_norm(name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm (eps 1e-5, two-pass variance)."""
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class MultiheadAttention(nn.Module):
    """Self-attention as torch.nn.MultiheadAttention computes it: one projection to q, k, v
    (`in_proj`), q scaled by head_dim**-0.5, softmax over keys (+ an additive mask), `out_proj`."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        n, length, _ = x.shape
        if self.width % self.heads:
            raise ValueError(f"attention width {self.width} is not divisible by {self.heads} heads")
        d = self.width // self.heads
        qkv = nn.Dense(3 * self.width, name="in_proj")(x)
        q, k, v = (t.reshape(n, length, self.heads, d) for t in jnp.split(qkv, 3, axis=-1))
        logits = jnp.einsum("nqhd,nkhd->nhqk", q * (d ** -0.5), k)
        if mask is not None:
            logits = logits + mask
        out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v).reshape(n, length, self.width)
        return nn.Dense(self.width, name="out_proj")(out)


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.width, name="c_proj")(quick_gelu(nn.Dense(4 * self.width, name="c_fc")(x)))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + MultiheadAttention(self.width, self.heads, name="attn")(layer_norm("ln_1")(x), mask)
        return x + MLP(self.width, name="mlp")(layer_norm("ln_2")(x))


class ResBlocks(nn.Module):
    """The blocks '0' .. 'layers-1' (the original's nn.Sequential `resblocks`)."""

    width: int
    layers: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for i in range(self.layers):
            x = ResidualAttentionBlock(self.width, self.heads, name=str(i))(x, mask)
        return x


class Transformer(nn.Module):
    width: int
    layers: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return ResBlocks(self.width, self.layers, self.heads, name="resblocks")(x, mask)


class VisionTransformer(nn.Module):
    """Patches (conv1, no bias) + class token + positions -> ln_pre -> transformer -> ln_post of
    the class token -> @ proj. Input: normalized NHWC images of side `input_resolution`."""

    input_resolution: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:3] != (self.input_resolution, self.input_resolution):
            raise ValueError(f"CLIP visual: expected NHWC images of {self.input_resolution}x{self.input_resolution}, "
                             f"got shape {x.shape}")
        p, grid = self.patch_size, self.input_resolution // self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, name="conv1")(x)
        x = x.reshape(x.shape[0], grid * grid, self.width)
        scale = self.width ** -0.5
        cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
        pos = self.param("positional_embedding", nn.initializers.normal(scale), (grid * grid + 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x], axis=1) + pos
        x = layer_norm("ln_pre")(x)
        x = Transformer(self.width, self.layers, self.heads, name="transformer")(x)
        x = layer_norm("ln_post")(x[:, 0])
        proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))
        return x @ proj


def causal_mask(length: int) -> jax.Array:
    """Additive mask: -inf above the diagonal (a token sees itself and the tokens before it)."""
    return jnp.where(jnp.triu(jnp.ones((length, length), bool), 1), -jnp.inf, 0.0).astype(jnp.float32)


class TextTransformer(nn.Module):
    """The text tower with the original's names, as a submodule-free block of a parent: used by
    `CLIP` (names at the top level, as in the original) and by the toy CLIP."""

    context_length: int
    vocab_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    causal: bool = True

    def setup(self):
        self.token_embedding = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02))
        self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                               (self.context_length, self.width))
        self.transformer = Transformer(self.width, self.layers, self.heads)
        self.ln_final = layer_norm(None)
        self.text_projection = self.param("text_projection", nn.initializers.normal(self.width ** -0.5),
                                          (self.width, self.output_dim))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return encode_text_with(self, tokens)


def encode_text_with(m, tokens: jax.Array) -> jax.Array:
    """The original's encode_text over a module `m` holding its text layers."""
    if tokens.ndim != 2 or tokens.shape[1] != m.context_length:
        raise ValueError(f"CLIP text: expected token ids of shape (N, {m.context_length}), got {tokens.shape}")
    x = m.token_embedding(tokens) + m.positional_embedding
    x = m.transformer(x, causal_mask(m.context_length) if getattr(m, "causal", True) else None)
    x = m.ln_final(x)
    eot = jnp.argmax(tokens, axis=-1)  # the end-of-text token has the highest id
    return x[jnp.arange(x.shape[0]), eot] @ m.text_projection


class CLIP(nn.Module):
    """OpenAI CLIP with a ViT image tower. `encode_image(images)`, `encode_text(tokens)`;
    `__call__(images, tokens=None)` -> (image features, text features) runs both (tokens=None
    feeds one row of zeros, so that `init` creates every parameter from an image alone)."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    def setup(self):
        self.visual = VisionTransformer(self.image_resolution, self.vision_patch_size, self.vision_width,
                                        self.vision_layers, self.vision_width // 64, self.embed_dim)
        self.token_embedding = nn.Embed(self.vocab_size, self.transformer_width,
                                        embedding_init=nn.initializers.normal(0.02))
        self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                               (self.context_length, self.transformer_width))
        self.transformer = Transformer(self.transformer_width, self.transformer_layers, self.transformer_heads)
        self.ln_final = layer_norm(None)
        self.text_projection = self.param("text_projection", nn.initializers.normal(self.transformer_width ** -0.5),
                                          (self.transformer_width, self.embed_dim))
        self.logit_scale = self.param("logit_scale", lambda _: jnp.asarray(np.log(1 / 0.07), jnp.float32))

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.visual(images)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return encode_text_with(self, tokens)

    def __call__(self, images: jax.Array, tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if tokens is None:
            tokens = jnp.zeros((1, self.context_length), jnp.int32)
        return self.encode_image(images), self.encode_text(tokens)


def build_clip(config: Mapping[str, Any]) -> CLIP:
    c = {**VIT_B32_CONFIG, **dict(config)}
    return CLIP(**{k: int(c[k]) for k in VIT_B32_CONFIG})


def clip_layer_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The image tower's layers (the dissectable ones): its residual blocks, in forward order."""
    layers = int({**VIT_B32_CONFIG, **dict(config)}["vision_layers"])
    return ("visual.ln_pre",) + tuple(f"visual.transformer.resblocks.{i}" for i in range(layers)) + ("visual.ln_post",)


KEYMAP = clip_keymap.KEYMAP

VIT_B32_SPEC = registry.register(registry.ModelSpec(
    name="clip_vit_b32", kind="clip", build=build_clip, default_config=dict(VIT_B32_CONFIG),
    input_size=(224, 224), normalization=CLIP_NORMALIZATION,
    default_layer="visual.transformer.resblocks.11", layer_names=clip_layer_names(VIT_B32_CONFIG),
    layer_names_for=clip_layer_names, url=VIT_B32_URL, sha256_prefix=VIT_B32_SHA256,
    config_from_torch=KEYMAP.config_from_torch, convert=KEYMAP.convert))
