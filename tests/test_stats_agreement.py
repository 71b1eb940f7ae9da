"""MaskAgreement against brute-force numpy: areas, intersections, IoU, merge, devices, save/load."""
import numpy as np
import pytest

from jaxdissect import stats
from jaxdissect.stats import MaskAgreement
from stats_helpers import assert_trees_equal, merge_all, run_sharded


def random_pairs(seed, n=8, h=9, w=7, units=5):
    rng = np.random.default_rng(seed)
    a = rng.random((n, h, w, units)) < 0.3
    # partners: agree with a on a per-unit fraction of pixels, else random
    keep = rng.random((n, h, w, units)) < np.linspace(0.0, 1.0, units)
    b = np.where(keep, a, rng.random((n, h, w, units)) < 0.3)
    a[..., 0] = False  # unit 0 never on in the first set
    return a, b


def test_counts_and_iou_match_numpy():
    a, b = random_pairs(0)
    mask = np.array([True] * 6 + [False, True])
    s = MaskAgreement.create(5)
    for i in range(0, 8, 3):
        s = s.update(a[i:i + 3], b[i:i + 3], mask[i:i + 3])
    am, bm = a[mask], b[mask]
    inter = (am & bm).sum((0, 1, 2))
    area_a, area_b = am.sum((0, 1, 2)), bm.sum((0, 1, 2))
    np.testing.assert_array_equal(np.asarray(s.intersection), inter)
    np.testing.assert_array_equal(np.asarray(s.first_area), area_a)
    np.testing.assert_array_equal(np.asarray(s.second_area), area_b)
    assert int(s.pixels) == 7 * 9 * 7
    np.testing.assert_allclose(np.asarray(s.iou()), inter / (area_a + area_b - inter), rtol=1e-6)
    assert float(s.iou()[0]) == 0.0  # on only in the second set: no agreement
    np.testing.assert_allclose(np.asarray(s.both_fraction()), inter / (7 * 9 * 7), rtol=1e-6)
    fa, fb = area_a / (7 * 9 * 7), area_b / (7 * 9 * 7)
    np.testing.assert_allclose(np.asarray(s.chance_iou()), fa * fb / (fa + fb - fa * fb), rtol=1e-5)
    # agreement grows with the planted fraction of copied pixels
    assert np.all(np.diff(np.asarray(s.iou())[1:]) > 0) and float(s.iou()[-1]) == 1.0


def test_never_on_is_nan_and_bad_shapes_are_named():
    s = MaskAgreement.create(2).update(np.zeros((1, 3, 3, 2), bool), np.zeros((1, 3, 3, 2), bool))
    assert np.isnan(np.asarray(s.iou())).all() and np.isnan(np.asarray(s.chance_iou())).all()
    with pytest.raises(ValueError, match=r"must be \(N, H, W, 2\)"):
        s.update(np.zeros((1, 3, 3, 3), bool), np.zeros((1, 3, 3, 3), bool))
    with pytest.raises(ValueError, match="partner masks"):
        s.update(np.zeros((1, 3, 3, 2), bool), np.zeros((1, 4, 3, 2), bool))


def test_merge_and_devices_exact(tmp_path):
    a, b = random_pairs(1)
    whole = MaskAgreement.create(5).update(a, b)
    for parts in (2, 4, 8):
        states = [MaskAgreement.create(5).update(a[c], b[c]) for c in np.array_split(np.arange(8), parts)]
        assert_trees_equal(merge_all(states), whole)
    sharded = run_sharded(lambda x, y: MaskAgreement.create(5).update(x, y).all_reduce("data"), a, b)
    assert_trees_equal(sharded, whole)
    stats.save(tmp_path / "agree", whole)
    assert_trees_equal(stats.load(tmp_path / "agree"), whole)


def test_chance_iou_is_the_agreement_of_independent_masks():
    # Many independent masks of coverage 0.3 and 0.1: their pooled IoU approaches the chance value.
    rng = np.random.default_rng(2)
    a = rng.random((400, 16, 16, 2)) < np.array([0.3, 0.05])
    b = rng.random((400, 16, 16, 2)) < np.array([0.1, 0.05])
    s = MaskAgreement.create(2).update(a, b)
    np.testing.assert_allclose(np.asarray(s.iou()), np.asarray(s.chance_iou()), rtol=0.03)
    np.testing.assert_allclose(np.asarray(s.chance_iou()), [0.03 / 0.37, 0.0025 / 0.0975], rtol=0.03)
