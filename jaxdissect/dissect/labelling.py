"""Labelling rules: which concept names a unit, from a MultiThresholdTally (pure, jit-able).

    rule        a unit's label is the label with the best ...
    iou         IoU at the run's one threshold (the original's rule; the default)
    iou-best    IoU at the best of the T thresholds for that label (a per-label threshold)
    iqr         information quality ratio (MI / joint entropy) at that label's best threshold
    mi          mutual information at that label's best threshold

`iqr` and `mi` follow GAN dissection's `--quantile_threshold iqr`: maximize the score over the
threshold levels per (label, unit), then over labels. Mutual information is symmetric, so a
unit that avoids a label scores too; like GAN dissection (which keeps only pairs where unit and
label mostly agree) only positively associated pairs, P(unit & label) > P(unit) P(label),
count here.

A unit with no label at IoU > 0 under its rule (or, for iqr / mi, no positively associated
label) is dead: it gets NO_LABEL (= 0, the '-' entry of every label list), score 0, IoU 0, and
the run's threshold. Ties go to the lower label id and the lower threshold level.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats import MultiThresholdTally

NO_LABEL = 0
RULES = ("iou", "iou-best", "iqr", "mi")


@struct.dataclass
class UnitLabels:
    """Each unit's label under one rule, all (units,)."""

    label: jax.Array  # int32 label id; NO_LABEL (0) for a dead unit
    score: jax.Array  # float32 the rule's score (IoU, IQR or MI); 0 for a dead unit
    iou: jax.Array  # float32 IoU of the label at the chosen threshold; 0 for a dead unit
    level_index: jax.Array  # int32 index of the chosen threshold level (the run's for iou and dead units)
    rule: str = struct.field(pytree_node=False, default="iou")

    @property
    def dead(self) -> jax.Array:
        return self.label == NO_LABEL


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown label rule {rule!r}; expected one of {', '.join(RULES)}")
    return rule


def best_labels(iou: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(labels, units) IoU -> each unit's best label and its IoU, (units,) each; NO_LABEL and 0
    for a unit whose IoU is 0 with every label. Row 0 (no label) is never chosen."""
    iou = jnp.asarray(iou)[1:]
    best = jnp.argmax(iou, axis=0)
    score = jnp.take_along_axis(iou, best[None], 0)[0]
    alive = score > 0
    return jnp.where(alive, best + 1, NO_LABEL).astype(jnp.int32), jnp.where(alive, score, 0.0)


def label_units(tally: MultiThresholdTally, rule: str = "iou", run_level: int = 0) -> UnitLabels:
    """Label every unit under `rule`; `run_level` indexes the run's own threshold among the T
    (see stats.level_index), used by rule 'iou' and for dead units."""
    check_rule(rule)
    if not 0 <= run_level < tally.num_thresholds:
        raise ValueError(f"run_level {run_level} is not one of the {tally.num_thresholds} threshold levels")
    return _label_units(tally, rule, int(run_level))


@functools.partial(jax.jit, static_argnames=("rule", "run_level"))
def _label_units(tally: MultiThresholdTally, rule: str, run_level: int) -> UnitLabels:
    iou = tally.iou()  # (T, labels, units)
    units = tally.num_units
    if rule == "iou":
        label, best = best_labels(iou[run_level])
        return UnitLabels(label, best, best, jnp.full((units,), run_level, jnp.int32), rule)
    if rule == "iou-best":
        score = iou
    elif rule == "iqr":
        score = jnp.where(tally.positive(), tally.iqr(), 0.0)
    else:
        score = jnp.where(tally.positive(), tally.mutual_information(), 0.0)
    score = score.at[:, 0].set(0.0)
    level = jnp.argmax(score, axis=0)  # (labels, units): each label's best threshold
    per_label = jnp.take_along_axis(score, level[None], 0)[0]
    label = jnp.argmax(per_label[1:], axis=0) + 1
    chosen = jnp.take_along_axis(level, label[None], 0)[0]
    best = jnp.take_along_axis(per_label, label[None], 0)[0]
    best_iou = iou[chosen, label, jnp.arange(units)]
    alive = (best > 0) & (best_iou > 0)
    return UnitLabels(label=jnp.where(alive, label, NO_LABEL).astype(jnp.int32),
                      score=jnp.where(alive, best, 0.0), iou=jnp.where(alive, best_iou, 0.0),
                      level_index=jnp.where(alive, chosen, run_level).astype(jnp.int32), rule=rule)


def iou_curves(tally: MultiThresholdTally, labels: jax.Array) -> jax.Array:
    """IoU versus threshold level of given labels per unit: labels (units, k) -> (units, k, T)."""
    iou = tally.iou()  # (T, labels, units)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.moveaxis(iou[:, labels, jnp.arange(tally.num_units)[:, None]], 0, -1)


def top_labels(tally: MultiThresholdTally, k: int = 3) -> jax.Array:
    """Each unit's k labels of highest IoU at any threshold level, best first: (units, k) int32
    (for the IoU-versus-threshold curves of the report)."""
    best = tally.iou().max(0)[1:]  # (labels - 1, units)
    return (jax.lax.top_k(best.T, min(k, best.shape[0]))[1] + 1).astype(jnp.int32)


def changed(a: UnitLabels, b: UnitLabels) -> int:
    """How many units have a different label (NO_LABEL included) under two rules."""
    return int(jnp.sum(a.label != b.label))
