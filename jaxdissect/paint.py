"""Painting with units: switch the units of a concept on (or off) in a painted region of a
generated image, and regenerate.

A `Painter` knows a generator, one of its layers, and that layer's dissection (IoU of every unit
with every label, and each unit's 99.5th-percentile value). A stroke is (mask, concept, on): the
image-resolution mask is averaged over each layer cell, and the concept's best units are set to
their high value (on) or to zero (off) with that cell's painted fraction as the strength, so
unpainted cells stay bit-identical. Strokes compose into one `edit.Replace`, applied inside the
jitted forward through `jaxdissect.capture`.

    painter = Painter.from_dissection(model, result)          # a dissect() LayerResult
    image = painter.render(z, [Stroke(mask, "tree", on=False)])  # uint8 (N, H, W, 3)

Samples are numbered as in the dissection (`ZSequence`: sample k is row k of numpy
RandomState(1)'s normals), within 0 <= seed < SEED_LIMIT. To show what an edit changed, the
result is segmented (`segmentation_view`: each pixel's label from the first segmentation channel
that has one), coloured with `label_colors` and summarised by `label_legend`.
"""
from __future__ import annotations

import colorsys
import dataclasses
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.capturing import capture, layer_shapes
from jaxdissect.dissect.stage_store import layer_stats
from jaxdissect.edit import Replace


SEED_LIMIT = 100_000  # seeds are 0 <= seed < SEED_LIMIT: ten times the original's 10,000 dissection samples


@dataclasses.dataclass(frozen=True)
class Stroke:
    """A painted region (H, W) in [0, 1] at image resolution, a concept name (or explicit unit
    indices, which then replace the concept's best units), and on/off."""

    mask: np.ndarray
    concept: str | None
    on: bool = True
    units: tuple[int, ...] | None = None


def compose(edits: Sequence[Replace]) -> Replace:
    """One Replace equal to applying `edits` in order: x -> x (1 - A) + R A with
    A = 1 - prod(1 - a_k) and R A = sum_k r_k a_k prod_{j > k} (1 - a_j); where A = 0 the
    layer is untouched exactly."""
    if not edits:
        raise ValueError("compose: no edits given")
    if len(edits) == 1:
        return edits[0]
    a_tot = jnp.zeros_like(jnp.asarray(edits[0].ablation, jnp.float32))
    ra = jnp.zeros_like(a_tot)
    for e in edits:
        a = jnp.asarray(e.ablation, jnp.float32)
        a_tot, ra = jnp.broadcast_arrays(a_tot, ra)
        ra = ra * (1 - a) + jnp.asarray(e.replacement, jnp.float32) * a
        a_tot = 1 - (1 - a_tot) * (1 - a)
    r = jnp.where(a_tot > 0, ra / jnp.where(a_tot > 0, a_tot, 1.0), 0.0)
    return Replace(ablation=a_tot, replacement=r)


class Painter:
    """Unit painting on one layer of a generator (see the module docstring)."""

    def __init__(self, model, layer: str, iou: np.ndarray, high: np.ndarray, label_names: Sequence[str],
                 label_categories: Sequence[str] | None = None, units_per_concept: int = 20, min_iou: float = 0.04):
        if model.kind != "generator":
            raise ValueError(f"Painter needs a generator, got {model.name!r} ({model.kind})")
        self.model, self.layer = model, layer
        self.iou = np.asarray(iou, np.float64)
        self.high = np.asarray(high, np.float32).reshape(-1)
        self.label_names = tuple(label_names)
        self.label_categories = tuple(label_categories) if label_categories is not None else ("",) * len(label_names)
        shape = layer_shapes(model, (layer,))[layer]
        self.layer_hw, self.num_units = tuple(shape[1:3]), int(shape[-1])
        if self.iou.shape != (len(self.label_names), self.num_units):
            raise ValueError(f"iou must be (labels, units) = ({len(self.label_names)}, {self.num_units}), "
                             f"got {self.iou.shape}")
        if self.high.shape != (self.num_units,):
            raise ValueError(f"high values must be ({self.num_units},), got {self.high.shape}")
        self.units_per_concept = min(units_per_concept, self.num_units)
        self.min_iou = min_iou
        out = jax.eval_shape(lambda v, z: model.module.apply(v, z), model.variables,
                             model.abstract_input())
        self.image_hw = tuple(out.shape[1:3])

    @classmethod
    def from_dissection(cls, model, result, quantile: float = 0.995, **kw) -> "Painter":
        """From a dissect() LayerResult: its IoU and the quantile sketch in its stats folder."""
        sketch = layer_stats(result.directory)["quantiles"]
        high = np.asarray(sketch.quantiles([quantile]))[:, 0]
        return cls(model, result.layer, result.iou, high, result.label_names, result.label_categories, **kw)

    # ---- concepts ----------------------------------------------------------------------------
    def concepts(self) -> list[dict]:
        """Concepts some unit is labelled with (best IoU > min_iou), by category then name:
        [{'name', 'category', 'units', 'iou'}] with the concept's best units."""
        best = self.iou[1:].argmax(0) + 1
        best_iou = self.iou[best, np.arange(self.num_units)]
        ids = sorted({int(b) for b, v in zip(best, best_iou) if v > self.min_iou},
                     key=lambda i: (self.label_categories[i], self.label_names[i]))
        return [{"name": self.label_names[i], "category": self.label_categories[i],
                 "units": self.units_for(self.label_names[i]).tolist(),
                 "iou": float(self.iou[i].max())} for i in ids]

    def units_for(self, concept: str) -> np.ndarray:
        """The concept's best units by IoU."""
        if concept not in self.label_names or concept == self.label_names[0]:
            raise KeyError(f"unknown concept {concept!r}; concepts: {', '.join(c['name'] for c in self.concepts())}")
        row = self.iou[self.label_names.index(concept)]
        return np.argsort(-row, kind="stable")[:self.units_per_concept]

    def check_units(self, units: Sequence[int]) -> np.ndarray:
        """Explicit unit indices, checked: a non-empty list of distinct ints in [0, num_units)."""
        units = list(units)
        if not units:
            raise ValueError("units must name at least one unit")
        seen = set()
        for u in units:
            if isinstance(u, bool) or not isinstance(u, (int, np.integer)):
                raise ValueError(f"units must be integers, got {u!r}")
            if not 0 <= u < self.num_units:
                raise ValueError(f"unknown unit {u}: layer {self.layer} has units 0..{self.num_units - 1}")
            if u in seen:
                raise ValueError(f"unit {u} is given twice")
            seen.add(int(u))
        return np.asarray(units, np.int64)

    def stroke_units(self, stroke: Stroke) -> np.ndarray:
        """The units a stroke switches: its explicit units, else its concept's best units."""
        if stroke.units is not None:
            return self.check_units(stroke.units)
        if stroke.concept is None:
            raise ValueError("a stroke needs a concept or units")
        return self.units_for(stroke.concept)

    # ---- edits -------------------------------------------------------------------------------
    def layer_mask(self, mask: np.ndarray) -> np.ndarray:
        """Image-resolution mask (H, W) -> painted fraction of each layer cell (h, w)."""
        mask = np.asarray(mask, np.float32)
        if mask.shape != self.image_hw:
            raise ValueError(f"mask must have the image's shape {self.image_hw}, got {mask.shape}")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1]")
        h, w = self.layer_hw
        H, W = self.image_hw
        if H % h or W % w:
            raise ValueError(f"image size {self.image_hw} is not a multiple of the layer size {self.layer_hw}")
        return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3))

    def stroke_edit(self, stroke: Stroke) -> Replace:
        """The edit of one stroke: the concept's units set to high (on) or 0 (off), weighted by coverage."""
        units = self.stroke_units(stroke)
        unit_mask = np.zeros(self.num_units, np.float32)
        unit_mask[units] = 1.0
        values = self.high * unit_mask if stroke.on else np.zeros(self.num_units, np.float32)
        where = self.layer_mask(stroke.mask)[..., None] * unit_mask
        return Replace(ablation=jnp.asarray(where), replacement=jnp.asarray(values))

    def edit(self, strokes: Sequence[Stroke]) -> Replace | None:
        """All strokes as one edit (None without strokes)."""
        return compose([self.stroke_edit(s) for s in strokes]) if strokes else None

    def render(self, z, strokes: Sequence[Stroke] = ()) -> np.ndarray:
        """uint8 images (N, H, W, 3) of z with the strokes applied at the layer."""
        z = jnp.asarray(z, jnp.float32)
        if z.ndim == 1:
            z = z[None]
        e = self.edit(strokes)
        out, _ = capture(self.model, z, (), edits=None if e is None else {self.layer: e})
        return np.asarray(jnp.clip((out + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


def rect_mask(image_hw: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """A (H, W) mask painted over [y0, y1) x [x0, x1)."""
    m = np.zeros(image_hw, np.float32)
    m[y0:y1, x0:x1] = 1.0
    return m


class ZSequence:
    """The original's z sequence (numpy RandomState(1) normals, `z_dim` per sample), sample by
    sample, without materialising the samples before `seed`: it generates in chunks of `every`
    samples and remembers the generator's state at each chunk start, so memory stays small and a
    seed revisited costs at most one chunk. Seeds must lie in 0 <= seed < limit. Thread-safe."""

    def __init__(self, z_dim: int, limit: int = SEED_LIMIT, every: int = 1024):
        if z_dim < 1 or limit < 1 or every < 1:
            raise ValueError(f"ZSequence needs z_dim, limit, every >= 1, got {z_dim}, {limit}, {every}")
        self.z_dim, self.limit, self.every = int(z_dim), int(limit), int(every)
        self._states = [np.random.RandomState(1).get_state()]  # state at the start of chunk k
        self._lock = threading.Lock()

    def check(self, seed) -> int:
        """`seed` as an int, or a ValueError naming the range."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r:.60}")
        if not 0 <= seed < self.limit:
            raise ValueError(f"seed must lie in 0 <= seed < {self.limit}, got {seed}")
        return int(seed)

    def __call__(self, seed: int) -> np.ndarray:
        """(1, z_dim) float32: sample `seed` of the sequence."""
        seed = self.check(seed)
        chunk, row = divmod(seed, self.every)
        rs = np.random.RandomState()
        with self._lock:
            while len(self._states) <= chunk:  # walk forward from the last remembered chunk
                rs.set_state(self._states[-1])
                rs.standard_normal(self.every * self.z_dim)
                self._states.append(rs.get_state())
            rs.set_state(self._states[chunk])
        rs.standard_normal(row * self.z_dim)
        return rs.standard_normal(self.z_dim).astype(np.float32)[None]


def z_for_seed(seed: int, z_dim: int, limit: int = SEED_LIMIT) -> np.ndarray:
    """The z of sample `seed` of the original's z sequence (numpy RandomState(1)), shape (1, z_dim);
    0 <= seed < limit."""
    return ZSequence(z_dim, limit)(seed)


# ---- the segmentation view ---------------------------------------------------------------------
def segmentation_view(segmenter, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> int32 (N, H, W): each pixel's label in the first channel of
    the segmenter's multi-label map that has one (0 where none has)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"segmentation_view takes uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # the displayed pixels, back in [-1, 1]
    seg = np.asarray(segmenter.segment(jnp.asarray(x), 1))
    if seg.ndim != 4 or seg.shape[0] != images.shape[0] or seg.shape[2:] != images.shape[1:3]:
        raise ValueError(f"the segmenter gave shape {seg.shape} for images {images.shape}; expected (N, L, H, W)")
    return primary_labels(seg)


def primary_labels(seg: np.ndarray) -> np.ndarray:
    """(..., L, H, W) multi-label maps -> (..., H, W): the label of the first channel that has one."""
    seg = np.asarray(seg)
    out = seg[..., -1, :, :]
    for c in range(seg.shape[-3] - 2, -1, -1):
        out = np.where(seg[..., c, :, :] != 0, seg[..., c, :, :], out)
    return out.astype(np.int32)


def label_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours for label ids 0..n-1; 0 ('no label') is black. Hues step by
    the golden ratio, saturation and value cycle, so neighbouring ids look different."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(1, n):
        h = (k * 0.6180339887498949) % 1.0
        s, v = (0.55, 0.85, 0.7)[k % 3], (0.95, 0.75, 0.6)[(k // 3) % 3]
        out[k] = np.round(np.asarray(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return out


def label_legend(before: np.ndarray, after: np.ndarray, names: Sequence[str], categories: Sequence[str],
                 colors: np.ndarray) -> list[dict]:
    """The labels of two label maps of one size, with each one's pixel share before and after:
    [{'id', 'label', 'category', 'color': '#rrggbb', 'before', 'after'}], the largest change
    first, then the largest share after."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"label maps differ in shape: {before.shape} vs {after.shape}")
    n = len(names)
    if before.size and (min(before.min(), after.min()) < 0 or max(before.max(), after.max()) >= n):
        raise ValueError(f"label ids must lie in 0..{n - 1}")
    cb = np.bincount(before.ravel(), minlength=n) / max(before.size, 1)
    ca = np.bincount(after.ravel(), minlength=n) / max(after.size, 1)
    ids = sorted(np.flatnonzero((cb > 0) | (ca > 0)), key=lambda i: (-abs(ca[i] - cb[i]), -ca[i], i))
    return [{"id": int(i), "label": "no label" if i == 0 else names[i], "category": "" if i == 0 else categories[i],
             "color": "#%02x%02x%02x" % tuple(int(c) for c in colors[i]), "before": float(cb[i]),
             "after": float(ca[i])} for i in ids]


__all__ = ["Painter", "Stroke", "ZSequence", "SEED_LIMIT", "compose", "rect_mask", "z_for_seed", "segmentation_view",
           "primary_labels", "label_colors", "label_legend"]
