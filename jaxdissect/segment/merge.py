"""Merged segmenters and `load_segmenter(name)`, the original's --seg names.

'net' is the unified-parsing segmenter; the letters after it are flags: 'p' all parts (not only
those of sky, building and person), 'q' quad halves of objects, 'c' adds the color segmenter.
'x' (textures) is refused: no texture segmenter weights were ever published. Other names (the
embedded world's 'scenes' / 'toy') are added by `register_segmenter`.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdissect.segment.base import SegmentLabels, Segmenter, merged_labels
from jaxdissect.segment import color, upp
from weight_conversion import cache
from weight_conversion.downloads import download

SEGMENTER_NAMES = ("net", "netp", "netq", "netpq", "netc", "netpc", "netqc", "netpqc")
_EXTRA: dict[str, Callable[..., Segmenter]] = {}


class MergedSegmenter:
    """Several segmenters side by side: their channels concatenated, their nonzero label ids
    shifted past the previous segmenters' labels, label 0 kept as 'no label' (unlike the original)."""

    def __init__(self, segmenters: Sequence[Segmenter]):
        if not segmenters:
            raise ValueError("MergedSegmenter needs at least one segmenter")
        self.segmenters = tuple(segmenters)
        self.labels, self.offsets = merged_labels([s.labels for s in self.segmenters])

    def segment(self, images: jax.Array, downsample: int = 1) -> jax.Array:
        """int32 (N, sum of channels, H // downsample, W // downsample)."""
        outs = []
        for seg, off in zip(self.segmenters, self.offsets):
            s = seg.segment(images, downsample)
            outs.append(jnp.where(s == 0, 0, s + off).astype(jnp.int32))
        return jnp.concatenate(outs, axis=1)


def register_segmenter(name: str, factory: Callable[..., Segmenter]) -> None:
    """Make `load_segmenter(name, **kwargs)` return `factory(**kwargs)` (e.g. 'toy', 'scenes')."""
    _EXTRA[name] = factory


def _flags(name: str) -> set[str]:
    m = re.fullmatch(r"net([pqxc]*)", name)
    if not m or len(set(m.group(1))) != len(m.group(1)):
        known = ", ".join(list(SEGMENTER_NAMES) + sorted(_EXTRA))
        raise ValueError(f"unknown segmenter {name!r}; known segmenters: {known}")
    flags = set(m.group(1))
    if "x" in flags:
        raise ValueError(f"segmenter {name!r} asks for textures ('x'), but no texture segmenter "
                         f"weights were ever published; use a name without 'x' (e.g. 'netpqc')")
    return flags


def ensure_segmenter_files(dirname: str, base_url: str, files: Sequence[str],
                           weights_dir: str | os.PathLike | None = None) -> str:
    """The folder <weights_dir or cache>/<dirname> with `files` in it, downloading missing ones."""
    if weights_dir is None:
        weights_dir = cache.cache_dir() / "segmodel"
    folder = os.path.join(os.fspath(weights_dir), dirname)
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        for f in missing:
            download(base_url + f, os.path.join(folder, f))
    return folder


def load_segmenter(name: str = "netpqc", weights_dir: str | os.PathLike | None = None,
                   segsizes: Sequence[int] = (256,), **kwargs) -> Segmenter:
    """The segmenter for a --seg name; official weights are read from `weights_dir` (holding
    upp-resnet50-upernet/ and color-resnet18dilated-ppm_deepsup/) or downloaded into the cache."""
    if name in _EXTRA:
        return _EXTRA[name](**kwargs)
    flags = _flags(name)
    folder = ensure_segmenter_files(upp.UPP_DIRNAME, upp.UPP_URL, upp.UPP_FILES, weights_dir)
    parts: list[Segmenter] = [upp.UnifiedParsingSegmenter.from_directory(
        folder, segsizes=segsizes, segdiv="quad" if "q" in flags else None, all_parts="p" in flags)]
    if "c" in flags:
        folder = ensure_segmenter_files(color.COLOR_DIRNAME, color.COLOR_URL, color.COLOR_FILES, weights_dir)
        parts.append(color.SemanticSegmenter.from_directory(folder))
    return parts[0] if len(parts) == 1 else MergedSegmenter(parts)


def segmenter_labels(segmenter: Segmenter) -> tuple[list[str], list[tuple[str, str]]]:
    """(label names, [(label, category)]) as the original's load_segmenter returned them."""
    labels: SegmentLabels = segmenter.labels
    return list(labels.names), labels.as_pairs()
