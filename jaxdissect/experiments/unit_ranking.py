"""Which units to remove: rankings from single-unit ablation, best-N / curve / random masks,
and unit importance (in how many classes' top units a unit is) against its IoU."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

IMPORTANT_CUTOFF = 4  # a unit is important to a class when it is among the class's 4 most damaging


def own_class(ba: np.ndarray) -> np.ndarray:
    """(classes, n) from (classes, n, classes): entry [c, i] is class c's own metric in [c, i, c]."""
    c = np.arange(ba.shape[0])
    return ba[c, :, c]


def clip_ns(ns: Sequence[int], num_units: int) -> tuple[int, ...]:
    """The unit counts N that make sense for a layer: 1 <= N < num_units, sorted, unique."""
    return tuple(sorted({int(n) for n in ns if 1 <= int(n) < num_units}))


def rank_units(single_unit_ba: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """(classes, units) unit ids per class, the most damaging first: ascending balanced accuracy
    of the class when that unit alone is removed ((units, classes) input), as the original.
    Units of equal BA (typically those whose removal alone flips no prediction) are ordered by
    ascending `tie_break` (units, classes), e.g. the class's mean true-class log-probability with
    the unit removed; without it, or on equal values, by unit id. NaN sorts last."""
    ba = np.asarray(single_unit_ba, np.float64)
    if ba.ndim != 2:
        raise ValueError(f"single_unit_ba must be (units, classes), got shape {ba.shape}")
    second = np.zeros_like(ba) if tie_break is None else np.asarray(tie_break, np.float64)
    if second.shape != ba.shape:
        raise ValueError(f"tie_break must have the shape of single_unit_ba {ba.shape}, got {second.shape}")
    key1 = np.where(np.isnan(ba), np.inf, ba).T
    key2 = np.where(np.isnan(second), np.inf, second).T
    return np.stack([np.lexsort((k2, k1)) for k1, k2 in zip(key1, key2)]).astype(np.int32).reshape(ba.shape[::-1])


def best_n_masks(ranking: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """(classes, len(ns), units) 0/1 masks removing each class's N most damaging units.
    Keeping only those units is `1 - mask`."""
    ranking = np.asarray(ranking)
    classes, units = ranking.shape
    position = np.empty_like(ranking)  # position[c, u]: rank of unit u for class c
    position[np.arange(classes)[:, None], ranking] = np.arange(units)
    ns = np.asarray(ns, np.int64)
    if ns.size and (ns.min() < 0 or ns.max() > units):
        raise ValueError(f"N must lie in 0..{units}, got {ns.tolist()}")
    return (position[:, None, :] < ns[None, :, None]).astype(np.float32)


def curve_masks(order: np.ndarray) -> np.ndarray:
    """(units - 1, units) masks removing the first k units of `order` for k = 1 .. units - 1."""
    order = np.asarray(order)
    units = order.shape[0]
    return best_n_masks(order[None], np.arange(1, units))[0]


def random_masks(ns: Sequence[int], num_units: int, draws: int, seed: int = 0) -> np.ndarray:
    """(len(ns), draws, units) masks each removing N units drawn at random (a control)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(ns), draws, num_units), np.float32)
    for i, n in enumerate(ns):
        for d in range(draws):
            out[i, d, rng.choice(num_units, size=int(n), replace=False)] = 1
    return out


def unit_importance(ranking: np.ndarray, cutoff: int = IMPORTANT_CUTOFF,
                    classes: np.ndarray | None = None) -> np.ndarray:
    """(units,) for each unit, the number of classes (of `classes`, default all) whose `cutoff`
    most damaging units include it."""
    ranking = np.asarray(ranking)
    rows = ranking if classes is None else ranking[np.asarray(classes)]
    return np.bincount(rows[:, :cutoff].ravel(), minlength=ranking.shape[1]).astype(np.int32)


def importance_vs_iou(importance: np.ndarray, best_iou: np.ndarray, top_group: int = 7) -> dict:
    """Mean best IoU with its standard error per importance group 0, 1, ..., top_group - 1 and
    '>= top_group' (the paper's bars). Empty groups give NaN; one unit gives SE 0."""
    importance, best_iou = np.asarray(importance), np.asarray(best_iou, np.float64)
    if importance.shape != best_iou.shape:
        raise ValueError(f"importance {importance.shape} and best_iou {best_iou.shape} must have one entry per unit")
    names, means, ses, counts = [], [], [], []
    for g in range(top_group + 1):
        sel = importance >= g if g == top_group else importance == g
        v = best_iou[sel]
        names.append(f">={g}" if g == top_group else str(g))
        counts.append(int(sel.sum()))
        means.append(float(v.mean()) if v.size else float("nan"))
        ses.append(float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else (0.0 if v.size else float("nan")))
    return {"group": names, "units": counts, "mean_iou": means, "se_iou": ses}


def ranking_from_stage(single_unit: Mapping[str, np.ndarray], tie_break: bool = True) -> np.ndarray:
    """The (classes, units) ranking from a single-unit stage's metrics (row 0 is the baseline)."""
    return rank_units(single_unit["balanced_accuracy"][1:],
                      single_unit["mean_true_logprob"][1:] if tie_break else None)
