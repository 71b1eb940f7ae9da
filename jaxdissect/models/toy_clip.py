"""`toy_clip`: a small CLIP of the scenes world, shipped with weights trained contrastively on
captions written from each scene's exact composition (jaxdissect.data.captions).

- `visual`: a small CNN over 64x64 images in [-1, 1]: 4x4 patches (conv1), four 3x3 convs
  (conv2 .. conv5, two with stride 2), global mean and max pooling, then `proj`.
- `text`: CLIP's text transformer (token_embedding, positional_embedding,
  transformer.resblocks.N, ln_final, text_projection; causal, pooled at the end-of-text token)
  over a word vocabulary, or with `text_encoder='bow'` a bag of words (mean of the word
  embeddings, a ReLU layer, `text_projection`) for comparison.
`ToyTokenizer` turns phrases into word ids: 0 pads, words are 1..V, then start and end of text
(the end token has the highest id, as in CLIP).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.data.captions import VOCABULARY, tokenize_words
from jaxdissect.models import registry
from jaxdissect.models.clip import TextTransformer

IMAGE_SIZE = 64
CONTEXT_LENGTH = 32
DEFAULT_CONFIG = {"widths": [32, 64, 128], "embed_dim": 128, "text_width": 64, "text_layers": 2,
                  "text_heads": 2, "text_encoder": "transformer", "context_length": CONTEXT_LENGTH,
                  "vocabulary": list(VOCABULARY), "image_size": IMAGE_SIZE}


class ToyTokenizer:
    """Words -> ids for the toy CLIP. Unknown words raise a ValueError naming them."""

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, context_length: int = CONTEXT_LENGTH):
        self.vocabulary = tuple(vocabulary)
        self.ids = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.sot, self.eot = len(self.vocabulary) + 1, len(self.vocabulary) + 2
        self.vocab_size = len(self.vocabulary) + 3
        self.context_length = int(context_length)

    def unknown_words(self, phrase: str) -> list[str]:
        return [w for w in tokenize_words(phrase) if w not in self.ids]

    def __call__(self, phrases: Sequence[str] | str) -> np.ndarray:
        """(N, context_length) int32: start, the words, end, zeros."""
        if isinstance(phrases, str):
            phrases = [phrases]
        out = np.zeros((len(phrases), self.context_length), np.int32)
        for i, p in enumerate(phrases):
            words = tokenize_words(p)
            bad = [w for w in words if w not in self.ids]
            if bad:
                raise ValueError(f"phrase {p!r}: word(s) {', '.join(map(repr, bad))} are not in the toy CLIP's "
                                 f"vocabulary of {len(self.vocabulary)} scene words")
            if not words:
                raise ValueError(f"phrase {p!r} has no words")
            if len(words) + 2 > self.context_length:
                raise ValueError(f"phrase {p!r} has {len(words)} words; the toy CLIP reads at most "
                                 f"{self.context_length - 2}")
            out[i, :len(words) + 2] = [self.sot] + [self.ids[w] for w in words] + [self.eot]
        return out


class ToyVisual(nn.Module):
    """4x4 patches (conv1, stride 4), then 3x3 convs: conv2 (stride 2), conv3, conv4 (stride 2),
    conv5; ReLU after each; global mean and max pooling; `proj` to the joint space."""

    widths: Sequence[int]
    embed_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.widths
        x = nn.relu(nn.Conv(w[0], (4, 4), strides=(4, 4), padding="VALID", name="conv1")(x))
        for i, (ch, stride) in enumerate([(w[1], 2), (w[1], 1), (w[2], 2), (w[2], 1)], 2):
            x = nn.relu(nn.Conv(ch, (3, 3), strides=(stride, stride), padding=1, name=f"conv{i}")(x))
        x = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
        return nn.Dense(self.embed_dim, name="proj")(x)


class BagOfWords(nn.Module):
    """Mean of the embeddings of the words (start, end and padding left out) -> ReLU layer -> projection."""

    vocab_size: int
    width: int
    output_dim: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        emb = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens)
        eot = jnp.max(tokens, axis=-1, keepdims=True)
        words = (tokens > 0) & (tokens < eot - 1)
        x = (emb * words[..., None]).sum(1) / jnp.maximum(words.sum(1, keepdims=True), 1)
        x = nn.relu(nn.Dense(self.width, name="hidden")(x))
        return nn.Dense(self.output_dim, use_bias=False, name="text_projection")(x)


class ToyCLIP(nn.Module):
    """encode_image(images in [-1, 1], 64x64 NHWC), encode_text(token ids); __call__(images,
    tokens=None) -> (image features, text features); features are not normalized."""

    vocab_size: int
    widths: Sequence[int] = (32, 64, 128)
    embed_dim: int = 128
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_encoder: str = "transformer"
    context_length: int = CONTEXT_LENGTH

    def setup(self):
        self.visual = ToyVisual(self.widths, self.embed_dim)
        if self.text_encoder == "transformer":
            self.text = TextTransformer(self.context_length, self.vocab_size, self.text_width, self.text_layers,
                                        self.text_heads, self.embed_dim)
        elif self.text_encoder == "bow":
            self.text = BagOfWords(self.vocab_size, self.text_width, self.embed_dim)
        else:
            raise ValueError(f"unknown text_encoder {self.text_encoder!r}; expected 'transformer' or 'bow'")
        self.logit_scale = self.param("logit_scale", lambda _: jnp.asarray(np.log(1 / 0.07), jnp.float32))

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.visual(images)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return self.text(tokens)

    def __call__(self, images: jax.Array, tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if tokens is None:
            tokens = jnp.zeros((1, self.context_length), jnp.int32).at[:, :2].set(
                jnp.asarray([self.vocab_size - 2, self.vocab_size - 1]))
        return self.encode_image(images), self.encode_text(tokens)


def tokenizer_for(config: Mapping[str, Any]) -> ToyTokenizer:
    return ToyTokenizer(tuple(config.get("vocabulary") or VOCABULARY), int(config.get("context_length", CONTEXT_LENGTH)))


def build_toy_clip(config: Mapping[str, Any]) -> ToyCLIP:
    c = {**DEFAULT_CONFIG, **dict(config)}
    return ToyCLIP(vocab_size=tokenizer_for(c).vocab_size, widths=tuple(int(w) for w in c["widths"]),
                   embed_dim=int(c["embed_dim"]), text_width=int(c["text_width"]), text_layers=int(c["text_layers"]),
                   text_heads=int(c["text_heads"]), text_encoder=str(c["text_encoder"]),
                   context_length=int(c["context_length"]))


TOY_CLIP_SPEC = registry.register(registry.ModelSpec(
    name="toy_clip", kind="clip", build=build_toy_clip, default_config=dict(DEFAULT_CONFIG),
    input_size=(IMAGE_SIZE, IMAGE_SIZE), normalization={"range": (-1, 1)},
    default_layer="visual.conv5", layer_names=tuple(f"visual.conv{i}" for i in range(1, 6)),
    packaged_weights="weights/toy_clip"))
