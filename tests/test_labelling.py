"""Labelling rules on planted units and against numpy over the same tally."""
import numpy as np
import pytest

from jaxdissect.dissect.labelling import (NO_LABEL, best_labels, changed, iou_curves, label_units, top_labels)
from jaxdissect.stats import MultiThresholdTally, level_index, threshold_levels


def planted():
    """One channel: label 1 on the left fifth, label 2 on a middle stripe, the rest unlabelled.

    unit 0 fires (1.0) on label 1, with rare spikes (5.0) on unlabelled pixels: its top 1% is
    the spikes only, so at the run's threshold it overlaps no label; at its median it is label 1.
    unit 1 fires exactly on label 2 (and its top 1% is inside label 2).
    unit 2 never fires (all zeros): dead under every rule.
    """
    rng = np.random.default_rng(0)
    n, h, w = 20, 20, 20
    seg = np.zeros((n, 1, h, w), np.int32)
    seg[:, 0, :, :4] = 1
    seg[:, 0, :, 8:12] = 2
    acts = np.zeros((n, h, w, 3), np.float32)
    acts[..., 0] = (seg[:, 0] == 1) * 1.0
    free = np.argwhere(seg[:, 0] == 0)
    spikes = free[rng.choice(len(free), size=int(0.01 * n * h * w), replace=False)]
    acts[spikes[:, 0], spikes[:, 1], spikes[:, 2], 0] = 5.0
    acts[..., 1] = (seg[:, 0] == 2) * (1.0 + rng.random((n, h, w)))
    return acts, seg


def tally_of(acts, seg, levels, num_labels=4):
    thr = np.quantile(acts.reshape(-1, acts.shape[-1]), levels, axis=0).T.astype(np.float32)
    return MultiThresholdTally.create(acts.shape[-1], num_labels, len(levels)).update(acts, thr, seg), thr


def test_low_threshold_unit_labelled_by_iou_best_not_by_iou():
    acts, seg = planted()
    levels = threshold_levels(include=0.01)
    run = level_index(levels, 0.01)
    tally, _ = tally_of(acts, seg, levels)
    by_iou = label_units(tally, "iou", run)
    by_best = label_units(tally, "iou-best", run)
    # unit 0: at the run's threshold only the spikes are on (no label): dead; iou-best finds label 1
    assert int(by_iou.label[0]) == NO_LABEL and float(by_iou.iou[0]) == 0.0
    assert int(by_best.label[0]) == 1 and float(by_best.iou[0]) > 0.9
    assert 1 - levels[int(by_best.level_index[0])] >= 0.2  # a low threshold: the unit's top 20% or more
    # unit 1 is label 2 under every rule (at the run's threshold its top 1% covers a 20th of it); unit 2 is dead under every rule, at the run's threshold
    for rule in ("iou", "iou-best", "iqr", "mi"):
        got = label_units(tally, rule, run)
        assert int(got.label[1]) == 2 and float(got.iou[1]) >= (0.04 if rule == "iou" else 0.5)
        assert int(got.label[2]) == NO_LABEL and float(got.score[2]) == 0 and int(got.level_index[2]) == run
        assert got.rule == rule
    assert int(by_iou.level_index[1]) == run
    assert changed(by_iou, by_best) == 1


def test_rules_equal_numpy_over_the_same_tally():
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 7, size=(6, 2, 12, 12)).astype(np.int32)
    acts = rng.normal(size=(6, 12, 12, 9)).astype(np.float32)
    for u in range(6):  # units tied to labels at various strengths
        acts[..., u] += (u % 3 + 0.5) * (seg[:, u % 2] == u + 1)
    levels = threshold_levels(num=6, include=0.05)
    run = level_index(levels, 0.05)
    tally, _ = tally_of(acts, seg, levels, num_labels=7)
    iou = np.asarray(tally.iou())
    positive = np.asarray(tally.positive())
    scores = {"iou-best": iou, "iqr": np.where(positive, np.asarray(tally.iqr()), 0),
              "mi": np.where(positive, np.asarray(tally.mutual_information()), 0)}
    for rule, score in scores.items():
        got = label_units(tally, rule, run)
        for u in range(9):
            s = score[:, 1:, u]
            best = s.max()
            if best <= 0:
                assert int(got.label[u]) == NO_LABEL
                continue
            lab = np.argmax(s.max(0)) + 1
            t = np.argmax(score[:, lab, u])
            assert (int(got.label[u]), int(got.level_index[u])) == (lab, t), (rule, u)
            np.testing.assert_allclose(float(got.score[u]), best, rtol=1e-6)
            np.testing.assert_allclose(float(got.iou[u]), iou[t, lab, u], rtol=1e-6)
    got = label_units(tally, "iou", run)
    want_label, want_iou = iou[run, 1:].argmax(0) + 1, iou[run, 1:].max(0)
    np.testing.assert_array_equal(np.asarray(got.label), np.where(want_iou > 0, want_label, 0))
    np.testing.assert_allclose(np.asarray(got.iou), want_iou, rtol=1e-6)


def test_best_labels_dead_units_and_curves():
    iou = np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.5], [0.3, 0.0, 0.5]], np.float32)  # (labels, units)
    label, score = best_labels(iou)
    np.testing.assert_array_equal(np.asarray(label), [2, NO_LABEL, 1])  # tie -> lower id
    np.testing.assert_allclose(np.asarray(score), [0.3, 0.0, 0.5])
    acts, seg = planted()
    levels = threshold_levels(num=5)
    tally, _ = tally_of(acts, seg, levels)
    top = np.asarray(top_labels(tally, 2))
    assert top.shape == (3, 2) and top[0, 0] == 1 and top[1, 0] == 2
    curves = np.asarray(iou_curves(tally, top))
    iou = np.asarray(tally.iou())
    assert curves.shape == (3, 2, 5)
    for u in range(3):
        for j in range(2):
            np.testing.assert_array_equal(curves[u, j], iou[:, top[u, j], u])


def test_errors():
    tally = MultiThresholdTally.create(2, 3, 4)
    with pytest.raises(ValueError, match="unknown label rule 'IoU'"):
        label_units(tally, "IoU")
    with pytest.raises(ValueError, match="run_level 4"):
        label_units(tally, "iou", 4)
