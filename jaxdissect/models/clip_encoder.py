"""A CLIP model ready to embed: uint8 images and phrases -> unit-norm features, and the image-text
cosine similarity matrix CLIP-Dissect compares unit activations with.

`ClipEncoder.load('toy_clip' | 'clip_vit_b32', weights=None)` wraps a registered model of kind
'clip' with its preprocessing (resize to the model's input size, its normalization) and its
tokenizer (the toy's word vocabulary, or CLIP's BPE, whose vocabulary file is located at run
time). Also the toy CLIP's measurements: zero-shot scene classification and retrieval.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models import loading, toy_clip
from jaxdissect.models.clip_tokenizer import ClipTokenizer
from jaxdissect.models.registry import LoadedModel


def preprocess(images: Any, size: tuple[int, int], normalization: Mapping[str, Any]) -> jax.Array:
    """uint8 NHWC images -> float NHWC at `size` (area-averaged when shrinking by an integer
    factor, else bicubic), normalized by {'range': (lo, hi)} or {'mean', 'std'} (on [0, 1])."""
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC RGB images, got shape {tuple(x.shape)}")
    x = x.astype(jnp.float32) / 255.0
    h, w = x.shape[1:3]
    if (h, w) != tuple(size):
        fy, fx = h // size[0], w // size[1]
        if fy >= 1 and fx >= 1 and h == fy * size[0] and w == fx * size[1]:
            x = x.reshape(x.shape[0], size[0], fy, size[1], fx, 3).mean(axis=(2, 4))
        else:
            x = jax.image.resize(x, (x.shape[0], *size, 3), "cubic")
    if "range" in normalization:
        lo, hi = normalization["range"]
        return lo + (hi - lo) * x
    mean = jnp.asarray(normalization["mean"], jnp.float32)
    std = jnp.asarray(normalization["std"], jnp.float32)
    return (x - mean) / std


def _normalize(f: jax.Array) -> jax.Array:
    return f / jnp.linalg.norm(f, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ClipEncoder:
    """A loaded CLIP model with its preprocessing and tokenizer."""

    model: LoadedModel
    tokenize: Callable[[Sequence[str]], np.ndarray]
    unknown_words: Callable[[str], list[str]] | None = None  # toy vocabulary check (None: BPE reads anything)

    @staticmethod
    def load(name: str, weights: str | None = None, bpe_vocab: str | None = None) -> "ClipEncoder":
        model = loading.load(name, weights)
        if model.kind != "clip":
            raise ValueError(f"model {name!r} is a {model.kind}, not a CLIP model (kind 'clip')")
        return ClipEncoder.wrap(model, bpe_vocab)

    @staticmethod
    def wrap(model: LoadedModel, bpe_vocab: str | None = None) -> "ClipEncoder":
        if "vocabulary" in model.config:  # the toy: a word vocabulary
            tok = toy_clip.tokenizer_for(model.config)
            return ClipEncoder(model, tok, tok.unknown_words)
        bpe = ClipTokenizer.load(bpe_vocab)
        ctx = int(model.config.get("context_length", 77))
        return ClipEncoder(model, lambda texts: bpe(texts, ctx))

    @functools.cached_property
    def _image_fn(self):
        m = self.model
        return jax.jit(lambda v, x: _normalize(m.module.apply(v, preprocess(x, m.input_size, m.normalization),
                                                               method="encode_image")))

    @functools.cached_property
    def _text_fn(self):
        m = self.model
        return jax.jit(lambda v, t: _normalize(m.module.apply(v, t, method="encode_text")))

    def encode_images(self, images: Any, batch_size: int = 100) -> np.ndarray:
        """Unit-norm image features (N, D) of uint8 NHWC images."""
        images = np.asarray(images)
        out = [np.asarray(self._image_fn(self.model.variables, images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_text(self, phrases: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit-norm text features (N, D) of phrases."""
        tokens = self.tokenize(list(phrases))
        out = [np.asarray(self._text_fn(self.model.variables, jnp.asarray(tokens[i:i + batch_size])))
               for i in range(0, len(tokens), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.get("embed_dim", 512))

    def similarity(self, images: Any, phrases: Sequence[str]) -> np.ndarray:
        """Cosine similarity (images, phrases) of CLIP's features, as CLIP-Dissect uses it."""
        return self.encode_images(images) @ self.encode_text(phrases).T


# ---- measurements of a CLIP on the scenes world ---------------------------------------------
def zero_shot_accuracy(image_features: np.ndarray, class_features: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose most similar class text is their class; class_features (C, D)."""
    return float(np.mean(np.argmax(image_features @ class_features.T, axis=1) == np.asarray(labels)))


def class_text_features(encoder: ClipEncoder, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Per class, the normalized mean of its prompts' features (CLIP's prompt ensembling)."""
    feats = []
    for cls, texts in prompts.items():
        f = encoder.encode_text(list(texts)).mean(0)
        feats.append(f / np.linalg.norm(f))
    return np.stack(feats)


def retrieval_at_k(image_features: np.ndarray, text_features: np.ndarray, relevant: np.ndarray,
                   k: int = 10) -> dict[str, np.ndarray]:
    """Text -> image retrieval. relevant (T, N) bool. Per text: precision@k (share of its k best
    images that are relevant), recall@k (share of its relevant images among its k best) and
    R-precision (precision at k = its number of relevant images)."""
    sims = text_features @ image_features.T  # (T, N)
    order = np.argsort(-sims, axis=1, kind="stable")
    hits = np.take_along_axis(np.asarray(relevant, bool), order, axis=1)
    n_rel = hits.sum(1)
    top = hits[:, :k].sum(1)
    rprec = np.array([hits[t, :max(int(n), 1)].sum() / max(int(n), 1) for t, n in enumerate(n_rel)])
    return {"precision": top / k, "recall": top / np.maximum(n_rel, 1), "r_precision": rprec,
            "relevant": n_rel}
