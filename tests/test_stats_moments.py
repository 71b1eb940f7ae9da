"""Moments and CrossCovariance against float64 numpy."""
import numpy as np
import pytest
import jax

from jaxdissect.stats import CrossCovariance, Moments
from stats_helpers import merge_all, run_sharded


def data(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(n, 4)) * [1, 10, 0.1, 5] + [0, 1000, -3, 7]).astype(np.float32)
    b = (a[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(n, 3))).astype(np.float32)
    return a, b


def test_moments_match_numpy_and_merge():
    a, _ = data()
    ref = a.astype(np.float64)
    whole = Moments.create(4)
    for chunk in np.array_split(a, 7):
        whole = whole.update(chunk)
    np.testing.assert_allclose(np.asarray(whole.mean()), ref.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(whole.variance()), ref.var(0, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(whole.stdev()), ref.std(0, ddof=1), rtol=1e-4)
    for parts in (2, 4, 8):
        merged = merge_all([Moments.create(4).update(c) for c in np.array_split(a, parts)])
        np.testing.assert_array_equal(np.asarray(merged.count()), np.full(4, len(a)))
        np.testing.assert_allclose(np.asarray(merged.variance()), ref.var(0, ddof=1), rtol=1e-4)
    sharded = run_sharded(lambda x: Moments.create(4).update(x).all_reduce("data"), a)
    np.testing.assert_allclose(np.asarray(sharded.mean()), ref.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded.variance()), ref.var(0, ddof=1), rtol=1e-4)


def test_moments_nan_and_mask():
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [5.0, 6.0]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        Moments.create(2).update(x)
    m = jax.jit(lambda s, x: s.update(x))(Moments.create(2), x)
    np.testing.assert_allclose(np.asarray(m.mean()), [3.0, 4.0])
    np.testing.assert_array_equal(np.asarray(m.nan_count), [1, 0])
    masked = Moments.create(2).update(np.nan_to_num(x), mask=np.array([True, False, True]))
    np.testing.assert_allclose(np.asarray(masked.mean()), [3.0, 4.0])


def test_cross_covariance_matches_numpy():
    a, b = data(1)
    ref = np.cov(a.astype(np.float64), b.astype(np.float64), rowvar=False)[:4, 4:]
    corr = np.corrcoef(a.astype(np.float64), b.astype(np.float64), rowvar=False)[:4, 4:]
    whole = CrossCovariance.create(4, 3)
    for ca, cb in zip(np.array_split(a, 5), np.array_split(b, 5)):
        whole = whole.update(ca, cb)
    np.testing.assert_allclose(np.asarray(whole.covariance()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(whole.correlation()), corr, atol=1e-5)
    np.testing.assert_allclose(np.asarray(whole.variance()[0]), a.astype(np.float64).var(0, ddof=1), rtol=1e-4)
    for parts in (2, 4, 8):
        merged = merge_all([CrossCovariance.create(4, 3).update(x, y)
                            for x, y in zip(np.array_split(a, parts), np.array_split(b, parts))])
        np.testing.assert_allclose(np.asarray(merged.correlation()), corr, atol=1e-5)
    sharded = run_sharded(lambda x, y: CrossCovariance.create(4, 3).update(x, y).all_reduce("data"), a, b)
    np.testing.assert_allclose(np.asarray(sharded.correlation()), corr, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded.covariance()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cross_covariance_constant_unit_correlation_is_zero():
    a = np.ones((10, 1), np.float32)
    b = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(np.asarray(CrossCovariance.create(1, 1).update(a, b).correlation()), [[0.0]])
