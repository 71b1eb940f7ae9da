"""Bincount and IoUTally against brute-force numpy."""
import numpy as np
import pytest

from jaxdissect.stats import Bincount, IoUTally
from stats_helpers import assert_trees_equal, merge_all, run_sharded


def brute_force_iou(indicator, labels, num_labels):
    """Direct transcription: a pixel has label k if any channel equals k (k > 0)."""
    n, h, w, u = indicator.shape
    ind = indicator.reshape(-1, u)
    lab = np.moveaxis(labels, 1, -1).reshape(-1, labels.shape[1])
    iou = np.zeros((num_labels, u))
    inter = np.zeros((num_labels, u), np.int64)
    area = np.zeros(num_labels, np.int64)
    for k in range(1, num_labels):
        has = (lab == k).any(1)
        area[k] = has.sum()
        inter[k] = (ind & has[:, None]).sum(0)
        union = ind.sum(0) + has.sum() - inter[k]
        iou[k] = np.where(union > 0, inter[k] / np.maximum(union, 1), 0)
    return iou, inter, area


def random_case(seed, n=6, h=9, w=7, units=11, channels=3, num_labels=13):
    rng = np.random.default_rng(seed)
    indicator = rng.random((n, h, w, units)) < 0.3
    labels = rng.integers(0, num_labels, size=(n, channels, h, w)).astype(np.int32)
    labels[:, 1] = np.where(rng.random((n, h, w)) < 0.3, labels[:, 0], labels[:, 1])  # repeats
    return indicator, labels


def test_iou_matches_brute_force_exactly():
    indicator, labels = random_case(0)
    state = IoUTally.create(11, 13)
    for i in range(0, 6, 2):
        state = state.update(indicator[i:i + 2], labels[i:i + 2])
    iou, inter, area = brute_force_iou(indicator, labels, 13)
    np.testing.assert_array_equal(np.asarray(state.intersection)[1:], inter[1:])
    np.testing.assert_array_equal(np.asarray(state.label_area)[1:], area[1:])
    np.testing.assert_array_equal(np.asarray(state.unit_area), indicator.reshape(-1, 11).sum(0))
    np.testing.assert_allclose(np.asarray(state.iou()), iou, rtol=1e-6, atol=0)
    best, best_iou = state.best_label()
    np.testing.assert_array_equal(np.asarray(best), iou[1:].argmax(0) + 1)
    np.testing.assert_allclose(np.asarray(best_iou), iou[1:].max(0), rtol=1e-6)
    assert int(state.pixels) == 6 * 9 * 7


def test_iou_merge_and_devices_exact():
    indicator, labels = random_case(1, n=8)
    whole = IoUTally.create(11, 13).update(indicator, labels)
    for parts in (2, 4, 8):
        states = [IoUTally.create(11, 13).update(indicator[c], labels[c])
                  for c in np.array_split(np.arange(8), parts)]
        assert_trees_equal(merge_all(states), whole)
    sharded = run_sharded(lambda i, l: IoUTally.create(11, 13).update(i, l).all_reduce("data"), indicator, labels)
    assert_trees_equal(sharded, whole)


def test_iou_mask_and_out_of_range_labels():
    indicator, labels = random_case(2, n=4)
    labels[0, 0, 0, 0] = 99  # out of range: ignored
    mask = np.array([True, False, True, True])
    a = IoUTally.create(11, 13).update(indicator, labels, mask)
    kept = labels[mask].copy()
    kept[kept >= 13] = 0
    b = IoUTally.create(11, 13).update(indicator[mask], kept)
    assert_trees_equal(a, b)


def test_iou_shape_errors():
    with pytest.raises(ValueError, match="indicator"):
        IoUTally.create(3, 5).update(np.zeros((2, 4, 4, 2), bool), np.zeros((2, 1, 4, 4), np.int32))
    with pytest.raises(ValueError, match="labels"):
        IoUTally.create(3, 5).update(np.zeros((2, 4, 4, 3), bool), np.zeros((2, 1, 5, 4), np.int32))


def test_bincount_matches_numpy():
    rng = np.random.default_rng(3)
    labels = rng.integers(-2, 12, size=(20, 5, 3))
    state = Bincount.create(10)
    for c in np.array_split(labels, 3):
        state = state.update(c)
    ok = labels[(labels >= 0) & (labels < 10)]
    np.testing.assert_array_equal(np.asarray(state.counts), np.bincount(ok, minlength=10))
    assert int(state.out_of_range) == ((labels < 0) | (labels >= 10)).sum()
    np.testing.assert_allclose(np.asarray(state.mean()), np.bincount(ok, minlength=10) / 20)
    halves = merge_all([Bincount.create(10).update(c) for c in np.array_split(labels, 4)])
    assert_trees_equal(halves, state)
