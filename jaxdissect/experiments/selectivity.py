"""Single-unit class selectivity (the original's classifier unit plots): how a unit's peak
activation is spread over the classes, and which classes it serves.

Input: each image's peak activation per unit (the spatial max, as the dissection's top-k uses)
and its class. Per class: mean, standard error and count; per unit the class selectivity index
of Morcos et al. 2018 ("On the importance of single directions for generalization"):

    SI = (mu_max - mu_rest) / (mu_max + mu_rest)

with mu_max the largest class mean and mu_rest the mean of the other classes' means (each class
weighted equally, classes without images left out). For non-negative activations (post-ReLU
peaks) SI lies in [0, 1]: 0 when every class has the same mean, 1 when only one class excites the
unit. It is NaN where it is undefined: a unit that never fires (0 / 0) or with a negative class
mean (pre-ReLU activations), or with fewer than two classes present.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassSelectivity:
    """Per-class statistics of per-image peaks, and each unit's selectivity."""

    class_names: tuple[str, ...]
    counts: np.ndarray  # (classes,) images per class
    means: np.ndarray  # (classes, units) mean peak; NaN for a class without images
    ses: np.ndarray  # (classes, units) standard error of the mean (ddof 1); 0 for one image, NaN for none
    index: np.ndarray  # (units,) selectivity index (see module doc)
    top_class: np.ndarray  # (units,) class with the largest mean (-1: no images, or every class alike)

    @property
    def num_units(self) -> int:
        return self.means.shape[1]

    def class_order(self, unit: int) -> np.ndarray:
        """Class ids with images, by descending mean peak of `unit` (ties by class id)."""
        present = np.flatnonzero(self.counts > 0)
        return present[np.argsort(-self.means[present, unit], kind="stable")]


def selectivity_index(means: np.ndarray) -> np.ndarray:
    """(units,) SI from class means (classes, units); NaN rows (classes without images) are left out."""
    means = np.asarray(means, np.float64)
    present = ~np.isnan(means[:, 0]) if means.size else np.zeros(means.shape[0], bool)
    m = means[present]
    out = np.full(means.shape[1], np.nan)
    if m.shape[0] < 2:
        return out
    top = m.max(0)
    rest = (m.sum(0) - top) / (m.shape[0] - 1)
    denom = top + rest
    ok = (m.min(0) >= 0) & (denom > 0)
    out[ok] = (top[ok] - rest[ok]) / denom[ok]
    return out


def class_selectivity(peaks: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                      class_names: Sequence[str] | None = None) -> ClassSelectivity:
    """Per-class means, standard errors and the selectivity index of peaks (images, units) given
    class labels (images,) in 0 .. num_classes - 1 (default: max label + 1)."""
    peaks = np.asarray(peaks, np.float64)
    labels = np.asarray(labels)
    if peaks.ndim != 2:
        raise ValueError(f"peaks must be (images, units), got shape {peaks.shape}")
    if labels.shape != (peaks.shape[0],):
        raise ValueError(f"labels must be one class per image, shape ({peaks.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if np.isnan(peaks).any():
        raise ValueError(f"peaks contain {int(np.isnan(peaks).sum())} NaN values")
    names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    counts = np.bincount(labels, minlength=num_classes)
    units = peaks.shape[1]
    sums = np.zeros((num_classes, units))
    np.add.at(sums, labels, peaks)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        sq = np.zeros((num_classes, units))
        np.add.at(sq, labels, (peaks - means[labels]) ** 2)
        var = sq / np.maximum(counts - 1, 1)[:, None]
        ses = np.where(counts[:, None] > 1, np.sqrt(var / counts[:, None]), 0.0)
    means[counts == 0] = np.nan
    ses[counts == 0] = np.nan
    index = selectivity_index(means)
    filled = np.where(np.isnan(means), -np.inf, means)
    flat = filled.max(0) == np.where(np.isnan(means), np.inf, means).min(0)  # no class stands out
    top = np.where(counts.any() & ~flat, np.argmax(filled, 0), -1)
    return ClassSelectivity(names, counts, means, ses, index, top.astype(np.int64))


@dataclasses.dataclass(frozen=True)
class UnitPlotData:
    """What the selectivity plot of one unit draws, classes in plot order (best first)."""

    unit: int
    classes: tuple[str, ...]  # shown classes, by descending mean
    class_ids: np.ndarray  # (shown,)
    means: np.ndarray  # (shown,)
    ses: np.ndarray  # (shown,)
    counts: np.ndarray  # (shown,)
    points_x: np.ndarray  # (points,) jittered x position (class rank + jitter) of each shown image
    points_y: np.ndarray  # (points,) the image's peak
    index: float  # the unit's selectivity index
    classes_total: int  # classes with images (some may not be shown)


def unit_plot_data(sel: ClassSelectivity, peaks: np.ndarray, labels: np.ndarray, unit: int,
                   max_classes: int = 30, jitter: float = 0.3, seed: int = 0) -> UnitPlotData:
    """The data of one unit's plot: its `max_classes` best classes sorted by mean, and every image
    of those classes as a point at the class's rank plus uniform jitter (seeded)."""
    if not 0 <= unit < sel.num_units:
        raise ValueError(f"unit {unit} out of range 0..{sel.num_units - 1}")
    order = sel.class_order(unit)
    shown = order[:max_classes]
    peaks, labels = np.asarray(peaks), np.asarray(labels)
    rank = np.full(len(sel.class_names), -1)
    rank[shown] = np.arange(len(shown))
    on = rank[labels] >= 0
    rng = np.random.default_rng(seed)
    xs = rank[labels[on]] + rng.uniform(-jitter, jitter, int(on.sum()))
    return UnitPlotData(unit, tuple(sel.class_names[c] for c in shown), shown, sel.means[shown, unit],
                        sel.ses[shown, unit], sel.counts[shown], xs, peaks[on, unit].astype(np.float64),
                        float(sel.index[unit]), len(order))
