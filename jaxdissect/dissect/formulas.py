"""Compositional labels: formulas of labels joined by OR, AND, AND NOT, found by beam search.

Following compositional explanations (Mu & Andreas, NeurIPS 2020), a unit may be described
better by a formula such as `(water OR river) AND NOT blue` than by one label. Formulas are
left-deep (`Formula`): a first label, then (operator, label) steps applied left to right; the
length is the number of labels. A formula's IoU with a unit is |unit & formula| / |unit |
formula| over all pixels of the dataset, the unit being on above its (run) threshold.

Beam search (`search_formulas`): the beam starts as each unit's `beam_width` best single labels
(IoU > 0); each step extends every beam formula F by every label L and operator, and keeps the
best `beam_width` formulas among the old beam and the new ones (formulas equal up to reordering
of an operator's operands count once; a label already in F is not added again). A step needs
one pass over the data, counting for every unit u, beam formula F and label L

    |u & F & L|, |F & L|  (FormulaTally, (beam, labels, units))  and  |u & F|, |F|  ((beam, units)),

from which, with |u|, |L| and |u & L| of the run's IoUTally, come the IoU of F OR L, F AND L and
F AND NOT L for all labels at once, without building the candidates' masks:

    F OR L:       |u & (F | L)| = |u & F| + |u & L| - |u & F & L|,   |F | L| = |F| + |L| - |F & L|
    F AND L:      |u & F & L|,                                        |F & L|
    F AND NOT L:  |u & F| - |u & F & L|,                              |F| - |F & L|

`FormulaTally` (jaxdissect.stats.formula_tally) is a mergeable state like IoUTally (pure update,
psum merge; `beam_arrays` makes its Beam argument from Formula lists): run it sharded
inside any pass that replays unit indicators and segmentations; `replay_counter` runs it over
an iterable of batches on one device. The scoring and the beam live on the host (small arrays).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats import IoUTally
from jaxdissect.stats.formula_tally import AND, AND_NOT, OPS, OR, Beam, FormulaTally, formula_masks

DEFAULT_BEAM_WIDTH = 5
__all__ = ["Formula", "FormulaResult", "search_formulas", "replay_counter", "beam_arrays", "Beam", "FormulaTally",
           "formula_masks", "OR", "AND", "AND_NOT", "OPS", "DEFAULT_BEAM_WIDTH"]


@dataclasses.dataclass(frozen=True)
class Formula:
    """A left-deep formula: leaves[0], then ops[i] applied with leaves[i + 1], left to right."""

    leaves: tuple[int, ...]
    ops: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.leaves or len(self.ops) != len(self.leaves) - 1:
            raise ValueError(f"a formula needs n labels and n - 1 operators, got {self.leaves} and {self.ops}")
        if any(op not in (OR, AND, AND_NOT) for op in self.ops):
            raise ValueError(f"unknown operator in {self.ops}; operators are {OPS}")

    def __len__(self) -> int:
        return len(self.leaves)

    def then(self, op: int, label: int) -> "Formula":
        return Formula(self.leaves + (int(label),), self.ops + (int(op),))

    def format(self, names: Sequence[str] | None = None) -> str:
        """'(water OR river) AND NOT blue' (names[label], or the ids without names)."""
        name = (lambda i: str(i)) if names is None else (lambda i: names[i])
        text = name(self.leaves[0])
        for i, (op, label) in enumerate(zip(self.ops, self.leaves[1:])):
            text = f"{'(' + text + ')' if i else text} {OPS[op]} {name(label)}"
        return text

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str, names: Sequence[str]) -> "Formula":
        """The inverse of `format` for left-deep formulas of label names."""
        index = {n: i for i, n in enumerate(names)}

        def label(name: str) -> int:
            if name not in index:
                raise ValueError(f"unknown label {name!r} in formula {text!r}")
            return index[name]

        m = re.fullmatch(r"\((.*)\) (AND NOT|AND|OR) (.+)", text)
        if m:
            return cls.parse(m.group(1), names).then(OPS.index(m.group(2)), label(m.group(3)))
        m = re.fullmatch(r"(.+?) (AND NOT|AND|OR) (.+)", text)
        if m:
            return Formula((label(m.group(1)),)).then(OPS.index(m.group(2)), label(m.group(3)))
        return Formula((label(text),))

    def key(self):
        """A canonical form: equal for formulas that differ only in the order of the operands of
        a chain of ORs or of ANDs (AND NOT L is the operand NOT L of an AND chain)."""
        node = self.leaves[0]
        for op, label in zip(self.ops, self.leaves[1:]):
            kind = "OR" if op == OR else "AND"
            operand = ("NOT", label) if op == AND_NOT else label
            members = node[1] if isinstance(node, tuple) and node[0] == kind else frozenset([node])
            node = (kind, members | {operand})
        return node

    def evaluate(self, has: Callable[[int], np.ndarray]) -> np.ndarray:
        """The formula's mask, given `has(label)` -> a boolean mask of that label (numpy)."""
        mask = np.asarray(has(self.leaves[0]), bool)
        for op, label in zip(self.ops, self.leaves[1:]):
            x = np.asarray(has(label), bool)
            mask = mask | x if op == OR else (mask & x if op == AND else mask & ~x)
        return mask


def beam_arrays(beams: Sequence[Sequence[Formula]], beam_width: int, max_leaves: int) -> Beam:
    """Each unit's list of formulas -> a Beam of padded arrays (for FormulaTally.update)."""
    units = len(beams)
    leaves = np.zeros((units, beam_width, max_leaves), np.int32)
    ops = np.zeros((units, beam_width, max(max_leaves - 1, 1)), np.int32)
    length = np.zeros((units, beam_width), np.int32)
    for u, beam in enumerate(beams):
        if len(beam) > beam_width:
            raise ValueError(f"unit {u} has {len(beam)} formulas, more than the beam width {beam_width}")
        for b, f in enumerate(beam):
            if len(f) > max_leaves:
                raise ValueError(f"formula {f} is longer than {max_leaves} labels")
            leaves[u, b, :len(f)] = f.leaves
            ops[u, b, :len(f.ops)] = f.ops
            length[u, b] = len(f)
    return Beam(jnp.asarray(leaves), jnp.asarray(ops), jnp.asarray(length))


# ---------------------------------------------------------------------------------------------
# The search (host side)


@dataclasses.dataclass
class FormulaResult:
    """Per unit: the best formula and its IoU, the best single label and its IoU, the final beam."""

    formulas: list[Formula | None]  # None for a unit with no label at IoU > 0
    iou: np.ndarray  # (units,) float64
    single_label: np.ndarray  # (units,) int32, 0 = no label
    single_iou: np.ndarray  # (units,) float64
    beams: list[list[tuple[Formula, float]]]  # per unit, best first

    def format(self, names: Sequence[str] | None = None) -> list[str]:
        """Each unit's formula as text ('-' for none)."""
        return ["-" if f is None else f.format(names) for f in self.formulas]


def _iou(inter: np.ndarray, unit_area, area) -> np.ndarray:
    union = unit_area + area - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def search_formulas(single: IoUTally, count: Callable[[Beam], FormulaTally], max_length: int,
                    beam_width: int = DEFAULT_BEAM_WIDTH) -> FormulaResult:
    """Beam search for each unit's best formula of up to `max_length` labels.

    `single`: the IoUTally of the unit indicators (at the run's threshold) with the labels;
    `count(beam)`: one pass over the same indicators and labels -> FormulaTally for that beam
    (e.g. `replay_counter(batches)`, or a sharded pass). It is called max_length - 1 times."""
    if max_length < 1:
        raise ValueError(f"formula length must be >= 1, got {max_length}")
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1, got {beam_width}")
    unit_area = np.asarray(single.unit_area, np.int64)
    label_area = np.asarray(single.label_area, np.int64)
    unit_label = np.asarray(single.intersection, np.int64)  # (labels, units)
    num_labels, units = unit_label.shape
    single_iou = _iou(unit_label, unit_area[None], label_area[:, None])
    single_iou[0] = 0.0
    beams: list[list[tuple[Formula, float]]] = []
    for u in range(units):
        order = np.argsort(-single_iou[:, u], kind="stable")
        beams.append([(Formula((int(k),)), float(single_iou[k, u])) for k in order[:beam_width]
                      if single_iou[k, u] > 0])
    best_single = np.asarray([b[0][0].leaves[0] if b else 0 for b in beams], np.int32)
    best_single_iou = np.asarray([b[0][1] if b else 0.0 for b in beams])
    for _ in range(max_length - 1):
        if not any(beams):
            break
        tally = count(beam_arrays([[f for f, _ in b] for b in beams], beam_width, max(max_length - 1, 1)))
        if tally.formula_label.shape != (beam_width, num_labels, units):
            raise ValueError(f"count returned a FormulaTally of shape {tally.formula_label.shape}, expected "
                             f"{(beam_width, num_labels, units)}")
        beams = [_extend(beams[u], u, tally, unit_area[u], label_area, unit_label[:, u], beam_width, max_length)
                 for u in range(units)]
    formulas = [b[0][0] if b else None for b in beams]
    iou = np.asarray([b[0][1] if b else 0.0 for b in beams])
    return FormulaResult(formulas, iou, best_single, best_single_iou, beams)


def _extend(beam, u, tally: FormulaTally, unit_area, label_area, unit_label, width, max_length):
    """Score every extension of unit u's beam by one label and keep the best `width` formulas."""
    ufl = np.asarray(tally.unit_formula_label[:, :, u], np.int64)  # (beam, labels)
    fl = np.asarray(tally.formula_label[:, :, u], np.int64)
    uf = np.asarray(tally.unit_formula[:, u], np.int64)[:, None]
    f = np.asarray(tally.formula[:, u], np.int64)[:, None]
    scores = np.zeros((width, len(label_area), 3))  # (beam slot, label, operator)
    scores[..., OR] = _iou(uf + unit_label[None] - ufl, unit_area, f + label_area[None] - fl)
    scores[..., AND] = _iou(ufl, unit_area, fl)
    scores[..., AND_NOT] = _iou(uf - ufl, unit_area, f - fl)
    scores[len(beam):] = 0  # empty slots
    scores[:, 0] = 0  # label 0 is no label
    for b, (formula, _) in enumerate(beam):
        scores[b, list(formula.leaves)] = 0  # a label already in the formula adds nothing
        if len(formula) >= max_length:
            scores[b] = 0
    flat = np.flatnonzero(scores.reshape(-1) > 0)
    # Candidates: the old beam first, then the extensions in (slot, label, operator) order; a
    # stable sort by score keeps that order among equal scores.
    pool_scores = np.concatenate([np.asarray([s for _, s in beam]), scores.reshape(-1)[flat]])
    seen, kept = set(), []
    for i in np.argsort(-pool_scores, kind="stable"):
        if i < len(beam):
            formula = beam[i][0]
        else:
            b, label, op = np.unravel_index(flat[i - len(beam)], scores.shape)
            formula = beam[b][0].then(int(op), int(label))
        key = formula.key()
        if key not in seen:
            seen.add(key)
            kept.append((formula, float(pool_scores[i])))
            if len(kept) == width:
                break
    return kept


def replay_counter(batches: Callable[[], Iterable[tuple]], num_labels: int, beam_width: int = DEFAULT_BEAM_WIDTH
                   ) -> Callable[[Beam], FormulaTally]:
    """A `count` for search_formulas on one device: `batches()` yields (indicator (N, H, W, units)
    bool, labels (N, channels, H, W)[, mask (N,)]) each time it is called."""
    step = jax.jit(lambda state, beam, *batch: state.update(*batch[:2], beam, *batch[2:]), donate_argnums=0)

    def count(beam: Beam) -> FormulaTally:
        state = FormulaTally.create(beam.num_units, num_labels, beam.width)
        for batch in batches():
            state = step(state, beam, *batch)
        return state

    return count


def formula_result_json(result: FormulaResult) -> dict:
    """A FormulaResult as JSON data (formulas as label ids and operators, IoUs as floats)."""
    def f(formula):
        return None if formula is None else {"leaves": list(formula.leaves), "ops": list(formula.ops)}

    return {"formulas": [f(x) for x in result.formulas], "iou": [float(v) for v in result.iou],
            "single_label": [int(v) for v in result.single_label], "single_iou": [float(v) for v in result.single_iou],
            "beams": [[{"formula": f(x), "iou": float(s)} for x, s in beam] for beam in result.beams]}


def formula_result_from_json(data: dict) -> FormulaResult:
    """The inverse of `formula_result_json`."""
    def f(d):
        return None if d is None else Formula(tuple(d["leaves"]), tuple(d["ops"]))

    return FormulaResult([f(x) for x in data["formulas"]], np.asarray(data["iou"], np.float64),
                         np.asarray(data["single_label"], np.int32), np.asarray(data["single_iou"], np.float64),
                         [[(f(b["formula"]), float(b["iou"])) for b in beam] for beam in data["beams"]])
