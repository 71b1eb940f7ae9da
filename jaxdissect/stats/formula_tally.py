"""FormulaTally: the counts that score every one-label extension of formulas of labels at once.

For each unit u, each formula F of its beam and each label L, one pass over unit indicators and
segmentations counts |u & F & L| and |F & L| (beam, labels, units), and |u & F| and |F| (beam,
units). With |u|, |L| and |u & L| (an IoUTally) these give the IoU of F OR L, F AND L and
F AND NOT L for every label without building those formulas' masks (see
jaxdissect.dissect.formulas, which runs the beam search). Formulas are left-deep: a first
label, then (operator, label) steps; a `Beam` holds each unit's formulas as padded arrays.
Plain integer sums: merge and psum are exact.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._labelsets import label_sets, membership, packable
from jaxdissect.stats._util import row_mask
from jaxdissect.stats.counts import dedup_labels

OR, AND, AND_NOT = 0, 1, 2
OPS = ("OR", "AND", "AND NOT")


@struct.dataclass
class Beam:
    """Each unit's beam of formulas as arrays (for the device): empty slots have length 0."""

    leaves: jax.Array  # (units, beam, max_leaves) int32
    ops: jax.Array  # (units, beam, max(max_leaves - 1, 1)) int32
    length: jax.Array  # (units, beam) int32

    @property
    def num_units(self) -> int:
        return self.leaves.shape[0]

    @property
    def width(self) -> int:
        return self.leaves.shape[1]


@struct.dataclass
class FormulaTally:
    """Per unit u, beam formula F and label L: |u & F & L| and |F & L| (beam, labels, units),
    and |u & F|, |F| (beam, units). Plain integer sums: merge and psum are exact."""

    unit_formula_label: jax.Array  # (beam, labels, units) int32
    formula_label: jax.Array  # (beam, labels, units) int32
    unit_formula: jax.Array  # (beam, units) int32
    formula: jax.Array  # (beam, units) int32
    pixels: jax.Array  # () int32

    @classmethod
    def create(cls, num_units: int, num_labels: int, beam_width: int = 5) -> "FormulaTally":
        z3 = lambda: jnp.zeros((beam_width, num_labels, num_units), jnp.int32)  # noqa: E731
        z2 = lambda: jnp.zeros((beam_width, num_units), jnp.int32)  # noqa: E731
        return cls(z3(), z3(), z2(), z2(), jnp.zeros((), jnp.int32))  # distinct buffers (donation)

    @property
    def num_labels(self) -> int:
        return self.formula_label.shape[1]

    def update(self, indicator: jax.Array, labels: jax.Array, beam: Beam, mask: jax.Array | None = None,
               *, max_label_sets: int = 512) -> "FormulaTally":
        """Add unit indicators (N, H, W, units) bool and labels (N, channels, H, W) int for the
        formulas of `beam`; masked images are ignored. Label ids outside [1, labels) never match.

        Pixels are grouped by their label set (up to `max_label_sets` distinct sets per batch;
        a batch with more is counted pixel by pixel: same result, more work)."""
        indicator = jnp.asarray(indicator)
        labels = jnp.asarray(labels)
        width, _, units = self.formula_label.shape
        if indicator.ndim != 4 or indicator.shape[-1] != units:
            raise ValueError(f"FormulaTally.update: indicator must be (N, H, W, {units}), got {indicator.shape}")
        if labels.ndim != 4 or labels.shape[0] != indicator.shape[0] or labels.shape[2:] != indicator.shape[1:3]:
            raise ValueError(f"FormulaTally.update: labels must be (N, channels, H, W) = ({indicator.shape[0]}, L, "
                             f"{indicator.shape[1]}, {indicator.shape[2]}), got {labels.shape}")
        if beam.leaves.shape[:2] != (units, width):
            raise ValueError(f"FormulaTally.update: beam is for {beam.leaves.shape[:2]} (units, width), "
                             f"the tally for ({units}, {width})")
        return _formula_update(self, indicator, labels, beam, row_mask(mask, indicator.shape[0]),
                               max_sets=int(max_label_sets))

    def merge(self, other: "FormulaTally") -> "FormulaTally":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "FormulaTally":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)


def formula_masks(has: jax.Array, beam: Beam) -> jax.Array:
    """has (P, labels + 1) bool per pixel and label -> (P, units, beam) bool masks of the beam's formulas."""
    mask = has[:, beam.leaves[..., 0]]
    for k in range(1, beam.leaves.shape[-1]):
        x = has[:, beam.leaves[..., k]]
        op = beam.ops[..., k - 1]
        combined = jnp.where(op == OR, mask | x, jnp.where(op == AND, mask & x, mask & ~x))
        mask = jnp.where(k < beam.length, combined, mask)
    return mask & (beam.length > 0)


@functools.partial(jax.jit, static_argnames=("max_sets",))
def _formula_update(state: FormulaTally, indicator, labels, beam: Beam, mask, max_sets: int) -> FormulaTally:
    n, h, w, units = indicator.shape
    num_labels = state.num_labels
    valid_px = jnp.broadcast_to(mask[:, None, None], (n, h, w)).reshape(-1)
    lab = jnp.moveaxis(labels, 1, -1).reshape(-1, labels.shape[1]).astype(jnp.int32)
    lab = jnp.where(valid_px[:, None], dedup_labels(lab, num_labels), num_labels)
    on = indicator.reshape(-1, units) & valid_px[:, None]
    if packable(num_labels, lab.shape[1]):
        groups = label_sets(lab, num_labels, max_sets)
        sums = jax.lax.cond(groups.fits, lambda _: _counts_by_sets(on, valid_px, groups, beam, num_labels, max_sets),
                            lambda _: _counts_by_pixels(on, valid_px, lab, beam, num_labels), None)
    else:
        sums = _counts_by_pixels(on, valid_px, lab, beam, num_labels)
    ufl, fl, uf, f = sums
    return FormulaTally(unit_formula_label=state.unit_formula_label + ufl, formula_label=state.formula_label + fl,
                        unit_formula=state.unit_formula + uf, formula=state.formula + f,
                        pixels=state.pixels + valid_px.sum(dtype=jnp.int32))


def _counts_by_sets(on, valid_px, groups, beam: Beam, num_labels: int, max_sets: int):
    """A formula's value depends on a pixel's label set only: evaluate the formulas per set, and
    count per set the pixels and each unit's on pixels (one segment sum over the pixels)."""
    on_per_set = jax.ops.segment_sum(on.astype(jnp.int32), groups.set_id, num_segments=max_sets)  # (M, units)
    pixels_per_set = jax.ops.segment_sum(valid_px.astype(jnp.int32), groups.set_id, num_segments=max_sets)  # (M,)
    has = membership(groups.labels, num_labels)  # (M, labels + 1)
    f = formula_masks(has, beam).astype(jnp.int32)  # (M, units, beam)
    x = has[:, :num_labels].astype(jnp.int32)
    uf_set = f * on_per_set[:, :, None]  # (M, units, beam): on pixels of unit u in set m, if F holds there
    f_set = f * pixels_per_set[:, None, None]
    ufl = jnp.einsum("mub,ml->blu", uf_set, x, preferred_element_type=jnp.int32)
    fl = jnp.einsum("mub,ml->blu", f_set, x, preferred_element_type=jnp.int32)
    return ufl, fl, uf_set.sum(0).T, f_set.sum(0).T


def _counts_by_pixels(on, valid_px, lab, beam: Beam, num_labels: int):
    """Per pixel: the formulas' masks, then one segment sum per channel."""
    units, width = beam.num_units, beam.width
    has = membership(lab, num_labels)  # (P, labels + 1)
    f = formula_masks(has, beam) & valid_px[:, None, None]  # (P, units, beam)
    uf = f & on[:, :, None]
    rows = jnp.concatenate([uf, f], axis=1).reshape(f.shape[0], -1).astype(jnp.int32)  # (P, 2 * units * beam)
    sums = jnp.zeros((num_labels, rows.shape[1]), jnp.int32)
    for c in range(lab.shape[1]):
        sums = sums + jax.ops.segment_sum(rows, lab[:, c], num_segments=num_labels + 1)[:num_labels]
    sums = sums.reshape(num_labels, 2, units, width).transpose(1, 3, 0, 2)  # (2, beam, labels, units)
    totals = rows.sum(0).reshape(2, units, width).transpose(0, 2, 1)  # (2, beam, units)
    return sums[0], sums[1], totals[0], totals[1]
