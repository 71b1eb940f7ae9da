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
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.edit import Replace


@dataclasses.dataclass(frozen=True)
class Stroke:
    """A painted region (H, W) in [0, 1] at image resolution, a concept name, and on/off."""

    mask: np.ndarray
    concept: str
    on: bool = True


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
        from jaxdissect.capture import layer_shapes

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
                             jax.ShapeDtypeStruct((1, int(model.z_dim)), jnp.float32))
        self.image_hw = tuple(out.shape[1:3])

    @classmethod
    def from_dissection(cls, model, result, quantile: float = 0.995, **kw) -> "Painter":
        """From a dissect() LayerResult: its IoU and the quantile sketch in its stats folder."""
        from jaxdissect import stats

        sketch = stats.load(os.path.join(result.directory, "stats", "quantiles"))
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
        units = self.units_for(stroke.concept)
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
        from jaxdissect.capture import capture

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


def z_for_seed(seed: int, z_dim: int) -> np.ndarray:
    """The z of sample `seed` of the original's z sequence (numpy RandomState(1)), shape (1, z_dim)."""
    from jaxdissect.data.zdataset import standard_z_sample

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return standard_z_sample(seed + 1, z_dim)[seed:seed + 1]


__all__ = ["Painter", "Stroke", "compose", "rect_mask", "z_for_seed"]
