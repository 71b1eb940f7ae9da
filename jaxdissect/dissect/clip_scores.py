"""CLIP-Dissect's unit-to-phrase scores (Oikarinen & Weng, ICLR 2023), pure and jitted.

Inputs: `activations` (N probe images, U units): one summary per image and unit (CLIP-Dissect
uses the spatial mean of the unit's map); `similarity` (N images, C phrases): the cosine
similarity of CLIP's image and text features. Output: (U, C) scores, higher = the phrase
describes the unit better. A unit's label is its argmax over phrases.

- `soft_wpmi` (the paper's choice): P = softmax(a * similarity) over phrases per image. The
  unit's top-k images (by activation, best first) are each taken to be in the unit's concept
  set with a probability falling linearly from p_start to p_end over the ranks:
  p_j = p_start - (j / k)(p_start - p_end). log p(phrase | unit) = sum_j log(1 + p_j (P[i_j] - 1)
  + min_prob); log p(phrase) = log of the mean of p(phrase | unit) over the layer's units; the
  score is log p(phrase | unit) - lam * log p(phrase). Defaults of the published code: k=100,
  a=10, lam=1, p_start=0.998, p_end=0.97, min_prob=1e-7.
- `wpmi`: the same with hard membership (p_j = 1): sum_j log(P[i_j] + min_prob); defaults
  k=28, a=2, lam=0.6.
- `cosine`: cosine over the N images between the unit's activations and the phrase's
  similarities (neither centred, as in the published code).
- `cosine_cubed`: both profiles centred over images, cubed, then cosine (norms clipped at 1e-3).
- `spearman`: Spearman's rank correlation over images (ties get their average rank).
Top-k order of tied activations follows lax.top_k (lowest index first).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

SOFT_WPMI_DEFAULTS = {"top_k": 100, "a": 10.0, "lam": 1.0, "p_start": 0.998, "p_end": 0.97, "min_prob": 1e-7}
WPMI_DEFAULTS = {"top_k": 28, "a": 2.0, "lam": 0.6, "min_prob": 1e-7}


def _check(activations: jax.Array, similarity: jax.Array, top_k: int | None = None) -> None:
    if activations.ndim != 2 or similarity.ndim != 2:
        raise ValueError(f"activations (images, units) and similarity (images, phrases) must be 2-D, got "
                         f"{activations.shape} and {similarity.shape}")
    if activations.shape[0] != similarity.shape[0]:
        raise ValueError(f"activations cover {activations.shape[0]} images but the similarity matrix "
                         f"{similarity.shape[0]}: both must be over the same probe images")
    if top_k is not None and not 1 <= top_k <= activations.shape[0]:
        raise ValueError(f"top_k={top_k} must be between 1 and the number of probe images ({activations.shape[0]})")


def _log_p_given_unit(activations, similarity, top_k, a, log_member):
    """(U, C): sum over each unit's top-k images of log_member(P[image], rank weights)."""
    probs = jax.nn.softmax(a * similarity, axis=1)  # (N, C), over phrases
    _, idx = jax.lax.top_k(activations.T, top_k)  # (U, k), best first

    def one(unit_idx):
        return jnp.sum(log_member(probs[unit_idx]), axis=0)  # (k, C) -> (C,)

    return jax.lax.map(one, idx, batch_size=16)


def _pmi(log_p_d_given_e: jax.Array, lam: float) -> jax.Array:
    log_p_d = jax.nn.logsumexp(log_p_d_given_e, axis=0, keepdims=True) - jnp.log(log_p_d_given_e.shape[0])
    return log_p_d_given_e - lam * log_p_d


@functools.partial(jax.jit, static_argnames=("top_k",))
def soft_wpmi(activations: jax.Array, similarity: jax.Array, top_k: int = 100, a: float = 10.0, lam: float = 1.0,
              p_start: float = 0.998, p_end: float = 0.97, min_prob: float = 1e-7) -> jax.Array:
    """CLIP-Dissect's soft-WPMI scores (U, C); see the module docstring."""
    _check(activations, similarity, top_k)
    p_in = (p_start - jnp.arange(top_k, dtype=jnp.float32) / top_k * (p_start - p_end))[:, None]  # (k, 1)
    member = lambda g: jnp.log(1.0 + p_in * (g - 1.0) + min_prob)  # noqa: E731
    return _pmi(_log_p_given_unit(activations, similarity, top_k, a, member), lam)


@functools.partial(jax.jit, static_argnames=("top_k",))
def wpmi(activations: jax.Array, similarity: jax.Array, top_k: int = 28, a: float = 2.0, lam: float = 0.6,
         min_prob: float = 1e-7) -> jax.Array:
    """CLIP-Dissect's (hard) WPMI scores (U, C)."""
    _check(activations, similarity, top_k)
    member = lambda g: jnp.log(g + min_prob)  # noqa: E731
    return _pmi(_log_p_given_unit(activations, similarity, top_k, a, member), lam)


def _unit_columns(x: jax.Array, min_norm: float = 0.0) -> jax.Array:
    n = jnp.linalg.norm(x, axis=0, keepdims=True)
    return x / (jnp.maximum(n, min_norm) if min_norm else n)


@jax.jit
def cosine(activations: jax.Array, similarity: jax.Array) -> jax.Array:
    """Cosine over images of each unit's activations with each phrase's similarities (U, C)."""
    _check(activations, similarity)
    return _unit_columns(activations).T @ _unit_columns(similarity)


@jax.jit
def cosine_cubed(activations: jax.Array, similarity: jax.Array, min_norm: float = 1e-3) -> jax.Array:
    """Cosine of the centred, cubed profiles (U, C)."""
    _check(activations, similarity)
    a = (activations - activations.mean(0, keepdims=True)) ** 3
    s = (similarity - similarity.mean(0, keepdims=True)) ** 3
    return _unit_columns(a, min_norm).T @ _unit_columns(s, min_norm)


def average_ranks(x: jax.Array) -> jax.Array:
    """Ranks 1..N along axis 0 of each column, ties sharing their average rank (scipy's 'average')."""
    def col(v):
        s = jnp.sort(v)
        lo = jnp.searchsorted(s, v, side="left")
        hi = jnp.searchsorted(s, v, side="right")
        return (lo + hi + 1) / 2.0

    return jax.vmap(col, in_axes=1, out_axes=1)(x)


@jax.jit
def spearman(activations: jax.Array, similarity: jax.Array) -> jax.Array:
    """Spearman's rank correlation over images (U, C); a constant profile scores 0."""
    _check(activations, similarity)

    def standard(r):
        r = r - r.mean(0, keepdims=True)
        n = jnp.linalg.norm(r, axis=0, keepdims=True)
        return jnp.where(n > 0, r / jnp.where(n > 0, n, 1.0), 0.0)

    return standard(average_ranks(activations)).T @ standard(average_ranks(similarity))


SCORE_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "soft_wpmi": soft_wpmi, "wpmi": wpmi, "cosine": cosine, "cosine_cubed": cosine_cubed, "spearman": spearman}


def unit_phrase_scores(activations, similarity, method: str = "soft_wpmi", **params) -> jax.Array:
    """Scores (U, C) of every unit for every phrase with the named method (SCORE_FUNCTIONS)."""
    if method not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown similarity method {method!r}; choose one of {', '.join(SCORE_FUNCTIONS)}")
    return SCORE_FUNCTIONS[method](jnp.asarray(activations, jnp.float32), jnp.asarray(similarity, jnp.float32),
                                   **params)
