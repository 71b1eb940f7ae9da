"""Open-vocabulary unit labels (CLIP-Dissect): name each unit with the phrase, from any list,
whose CLIP image-text similarity over the probe images best matches the unit's activations.

    labels = label_units(images, summaries, concepts=None, clip_model="toy_clip")
    labels.top(unit)        # [(phrase, score), ...] best first
    labels.unit_json(unit)  # {'clip_label', 'clip_score', 'clip_top', ...} for report.json

`images`: the probe images (uint8 NHWC, or an iterable of such batches, in the order of the
rows of `summaries`); `summaries`: (images, units) one number per image and unit, e.g.
`unit_summaries(layer_activations, 'max')` (or the spatial mean, CLIP-Dissect's default).
The window probe labels on parts of the images instead, which names objects far more often
when units are local (docs/clip.md):

    labels = label_units(window_crops(images), window_summaries(layer_activations))

`concepts`: None for the scenes world's default list (jaxdissect/data/scene_concepts.txt), a
path to a file with one phrase a line, or a sequence of phrases. Scores come from
`jaxdissect.dissect.clip_scores` (WPMI by default; `method='soft_wpmi'` for CLIP-Dissect's
headline score).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.data.captions import tokenize_words
from jaxdissect.dissect import clip_scores
from jaxdissect.models.clip_encoder import ClipEncoder

DEFAULT_CONCEPTS = "scene_concepts.txt"  # in jaxdissect/data


def load_concepts(source: str | os.PathLike | Sequence[str] | None = None) -> tuple[str, ...]:
    """Concept phrases: the default list (None), a file with one phrase a line (blank lines
    skipped, duplicates kept once, in order), or a sequence of phrases."""
    if source is None:
        text = importlib.resources.files("jaxdissect.data").joinpath(DEFAULT_CONCEPTS).read_text()
        where = f"the default concept list ({DEFAULT_CONCEPTS})"
        lines = text.splitlines()
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"concepts file {path!r}: no such file")
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"concepts file {path!r} is not UTF-8 text ({e})") from None
        where = f"concepts file {path!r}"
    else:
        lines, where = [str(s) for s in source], "the concept list"
    phrases = tuple(dict.fromkeys(" ".join(line.split()) for line in lines if line.strip()))
    if not phrases:
        raise ValueError(f"{where} holds no phrases (expected one phrase a line)")
    return phrases


@jax.jit
def _mean_summary(acts):
    return jnp.mean(acts, axis=(1, 2))


@jax.jit
def _max_summary(acts):
    return jnp.max(acts, axis=(1, 2))


def unit_summaries(activations: Any, mode: str = "mean") -> jax.Array:
    """(N, units) per-image summaries of NHWC layer activations: spatial 'mean' or 'max'
    (CLIP-Dissect's pool modes 'avg' / 'max'); (N, units) input is returned as it is."""
    a = jnp.asarray(activations, jnp.float32)
    if a.ndim == 2:
        return a
    if a.ndim != 4:
        raise ValueError(f"unit_summaries: expected NHWC activations or (images, units), got shape {a.shape}")
    if mode not in ("mean", "max"):
        raise ValueError(f"unit_summaries: mode must be 'mean' or 'max', got {mode!r}")
    return _mean_summary(a) if mode == "mean" else _max_summary(a)


# CLIP-Dissect's probe is whole images; a unit that fires on one object in a scene then shares
# its top images with everything that stands beside that object. Windows of the images (each
# unit's summary taken over the activation cells the window covers) make the probe local:
# half the image's side, every quarter side (3 x 3 windows), as fractions (y0, y1, x0, x1).
HALF_WINDOWS = tuple((y, y + 0.5, x, x + 0.5) for y in (0.0, 0.25, 0.5) for x in (0.0, 0.25, 0.5))
PROBES = ("images", "windows")


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """The cells [a, b) of n that the fraction [lo, hi) of a side covers (at least one)."""
    a = int(np.floor(lo * n + 1e-9))
    return a, max(a + 1, int(np.ceil(hi * n - 1e-9)))


def _pixels(lo: float, hi: float, n: int) -> tuple[int, int]:
    """The pixels [a, b) of a side of n for the fraction [lo, hi): round((hi - lo) * n) of them
    (one size for every window of one size, whatever n), starting at round(lo * n)."""
    size = max(1, int(round((hi - lo) * n)))
    a = min(int(round(lo * n)), n - size)
    return a, a + size


def window_crops(images: np.ndarray, windows=HALF_WINDOWS) -> np.ndarray:
    """(N * len(windows), h, w, 3): every window of every image, image-major (image 0's windows
    first). The windows must all have one pixel size on these images."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"window_crops: expected NHWC images, got shape {images.shape}")
    H, W = images.shape[1:3]
    boxes = [_pixels(y0, y1, H) + _pixels(x0, x1, W) for y0, y1, x0, x1 in windows]
    if len({(b[1] - b[0], b[3] - b[2]) for b in boxes}) != 1:
        raise ValueError(f"window_crops: the windows have different sizes on {H}x{W} images")
    return np.stack([images[:, a:b, c:d] for a, b, c, d in boxes], axis=1).reshape(-1, *[
        boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2], images.shape[3]])


@functools.partial(jax.jit, static_argnames=("windows", "mode"))
def window_summaries(activations: jax.Array, windows=HALF_WINDOWS, mode: str = "max") -> jax.Array:
    """(N * len(windows), units), image-major as window_crops: each unit's spatial max (or mean)
    over the cells of its NHWC activation map that each window covers."""
    h, w = activations.shape[1:3]
    reduce = jnp.max if mode == "max" else jnp.mean
    per = [reduce(activations[:, a:b, c:d].astype(jnp.float32), axis=(1, 2))
           for a, b, c, d in (_span(y0, y1, h) + _span(x0, x1, w) for y0, y1, x0, x1 in windows)]
    return jnp.stack(per, axis=1).reshape(-1, activations.shape[3])


@dataclasses.dataclass(frozen=True)
class ClipLabels:
    """Per-unit scores of every phrase, and how they were made."""

    phrases: tuple[str, ...]
    scores: np.ndarray  # (units, phrases)
    method: str
    clip_model: str

    @property
    def best(self) -> np.ndarray:
        """(units,) index of each unit's best phrase."""
        return np.argmax(self.scores, axis=1)

    def label(self, unit: int) -> str:
        return self.phrases[int(self.best[unit])]

    def top(self, unit: int, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.scores[unit], kind="stable")[:k]
        return [(self.phrases[i], float(self.scores[unit, i])) for i in order]

    def unit_json(self, unit: int, k: int = 3) -> dict:
        """What report.json shows for a unit beside its IoU label."""
        top = self.top(unit, k)
        return {"clip_label": top[0][0], "clip_score": top[0][1],
                "clip_top": [{"label": p, "score": s} for p, s in top]}

    def header_json(self) -> dict:
        return {"clip_model": self.clip_model, "clip_method": self.method, "clip_concepts": len(self.phrases)}


def _image_features(encoder: ClipEncoder, images: Any) -> np.ndarray:
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        return encoder.encode_images(np.asarray(images))
    feats = [encoder.encode_images(np.asarray(b)) for b in images]
    if not feats:
        raise ValueError("no probe images")
    return np.concatenate(feats)


def check_vocabulary(encoder: ClipEncoder, phrases: Sequence[str], where: str = "the concept list") -> None:
    """For a CLIP with a closed word vocabulary (the toy): ValueError naming every phrase with unknown words."""
    if encoder.unknown_words is None:
        return
    bad = [(p, encoder.unknown_words(p)) for p in phrases]
    bad = [(p, ws) for p, ws in bad if ws]
    empty = [p for p in phrases if not tokenize_words(p)]
    if bad or empty:
        parts = [f"{p!r} ({', '.join(ws)})" for p, ws in bad[:20]] + [f"{p!r} (no words)" for p in empty[:5]]
        raise ValueError(f"{len(bad) + len(empty)} phrase(s) of {where} use words that {encoder.model.name} does "
                         f"not know: {'; '.join(parts)}. Its vocabulary is the scenes world's caption words "
                         f"(jaxdissect.data.captions.VOCABULARY).")


def label_units(images: Any, summaries: Any, concepts: str | os.PathLike | Sequence[str] | None = None,
                clip_model: str = "toy_clip", *, method: str = "wpmi", weights: str | None = None,
                bpe_vocab: str | None = None, encoder: ClipEncoder | None = None, **params: Any) -> ClipLabels:
    """Score every unit against every concept phrase with CLIP-Dissect (see the module docstring).
    `params` go to the score function (e.g. top_k, a, lam for soft_wpmi); a top_k larger than
    the number of probe images is lowered to it."""
    phrases = load_concepts(concepts)
    where = f"concepts file {os.fspath(concepts)!r}" if isinstance(concepts, (str, os.PathLike)) else "the concept list"
    encoder = encoder or ClipEncoder.load(clip_model, weights=weights, bpe_vocab=bpe_vocab)
    check_vocabulary(encoder, phrases, where)
    acts = unit_summaries(summaries)
    img = _image_features(encoder, images)
    if img.shape[0] != acts.shape[0]:
        raise ValueError(f"{img.shape[0]} probe images but unit summaries for {acts.shape[0]}: they must match")
    sims = img @ encoder.encode_text(phrases).T
    if method in ("soft_wpmi", "wpmi"):
        default_k = (clip_scores.SOFT_WPMI_DEFAULTS if method == "soft_wpmi" else clip_scores.WPMI_DEFAULTS)["top_k"]
        params["top_k"] = min(int(params.get("top_k", default_k)), int(acts.shape[0]))
    scores = np.asarray(clip_scores.unit_phrase_scores(acts, sims, method, **params))
    return ClipLabels(phrases, scores, method, encoder.model.name)


def names_same_concept(iou_label: str, clip_phrase: str) -> bool:
    """True when the CLIP phrase is the IoU label's concept or a phrase containing it as a word
    ('house' ~ 'red house'; not 'house' ~ 'roof')."""
    return iou_label.lower() in tokenize_words(clip_phrase)


def agreement(iou_labels: Sequence[str], iou: Sequence[float], clip_phrases: Sequence[str],
              min_iou: float = 0.1) -> tuple[int, int]:
    """(units that agree, units compared): units whose IoU exceeds min_iou, agreeing when
    `names_same_concept(IoU label, CLIP label)`."""
    chosen = [i for i, v in enumerate(iou) if v > min_iou]
    return sum(names_same_concept(iou_labels[i], clip_phrases[i]) for i in chosen), len(chosen)
