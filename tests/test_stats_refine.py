"""Exact quantiles: a sketch refined over replayed data equals numpy's quantile of the data."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import QuantileRefinement, QuantileSketch, ReplayMismatchError, exact_quantiles
from jaxdissect.stats.refine import key_values, order_keys


def sketch_of(batches, units):
    s = QuantileSketch.create(units)
    for b in batches:
        s = s.update(b)
    return s


def replayer(batches, calls=None):
    def replay(step, state):
        if calls is not None:
            calls.append(1)
        for b in batches:
            state = step(state, b)
        return state
    return replay


def rank_error(values, t, q):
    """How far the share of values at or below t is from q (0 when t sits between the order
    statistics numpy interpolates)."""
    return abs(np.mean(values <= t) - q)


def test_far_narrow_skewed_tail_cluster_gets_the_exact_threshold():
    # Unit 0: a smooth body near 0 plus a cluster of 0.8% of the values bunched towards 1000 inside
    # +-4 (skewed, so linear interpolation inside the sketch's bin is far off in rank). Unit 1:
    # two clusters, both far from zero and inside one bin each.
    rng = np.random.default_rng(3)
    n = 300_000
    x = np.abs(rng.normal(size=(n, 2))).astype(np.float32)
    k = int(0.008 * n)
    x[:k, 0] = 996 + 8 * rng.uniform(size=k) ** 6
    m = int(0.012 * n)
    x[:m, 1] = 5000 + 30 * rng.uniform(size=m) ** 4
    x[m:2 * m, 1] = -300 - rng.uniform(size=m) ** 3
    rng.shuffle(x, axis=0)
    batches = np.array_split(x, 9)
    sketch = sketch_of(batches, 2)
    for q in (0.995, 0.996, 0.999, 0.0015):
        approx = np.asarray(sketch.quantiles([q]))[:, 0]
        exact = exact_quantiles(sketch, [q], replayer(batches))[:, 0]
        want = np.quantile(x.astype(np.float64), q, axis=0)
        np.testing.assert_allclose(exact, want, rtol=1e-6)
        for u in range(2):
            assert rank_error(x[:, u], exact[u], q) <= 1e-6 + 1 / n
        if q == 0.995:
            # the sketch alone is off by far more than 1e-6 in rank here: the refinement is what fixes it
            assert rank_error(x[:, 0], approx[0], q) > 1e-4


def test_ties_constants_empty_units_and_the_extremes():
    rng = np.random.default_rng(0)
    x = np.zeros((5000, 4), np.float32)
    x[:, 0] = np.round(rng.normal(size=5000), 1)  # many ties
    x[:, 1] = 7.25  # constant
    x[:, 2] = np.maximum(rng.normal(size=5000), 0)  # ReLU zeros
    x[:, 3] = -rng.lognormal(size=5000)  # negative values
    batches = np.array_split(x, 4)
    sketch = sketch_of(batches, 4)
    for q in (0.0, 0.01, 0.5, 0.73, 0.99, 1.0):
        exact = exact_quantiles(sketch, [q], replayer(batches))[:, 0]
        np.testing.assert_allclose(exact, np.quantile(x.astype(np.float64), q, axis=0), rtol=1e-6, atol=1e-12)
    empty = QuantileSketch.create(2)
    assert np.isnan(exact_quantiles(empty, [0.5], replayer([np.zeros((0, 2), np.float32)]))).all()


def test_one_pass_narrows_a_bin_to_one_value_and_passes_are_counted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 3)).astype(np.float32)
    batches = np.array_split(x, 5)
    sketch = sketch_of(batches, 3)
    calls = []
    exact_quantiles(sketch, [0.99], replayer(batches, calls), num_subbins=2**16)
    # a sketch bin spans 2**16 keys at resolution 128: one pass, or two where the two ranks that
    # numpy interpolates between fall in neighbouring bins
    assert 1 <= len(calls) <= 2
    calls.clear()
    exact_quantiles(sketch, [0.99], replayer(batches, calls), num_subbins=2**8)
    assert len(calls) in (2, 3)
    calls.clear()
    exact_quantiles(sketch, [0.99], replayer(batches, calls), num_subbins=2**4)
    assert 4 <= len(calls) <= 9  # 2**16 keys in 4-bit steps; the two ranks may part and take turns


def test_replay_of_other_data_is_an_error_not_a_wrong_threshold():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10_000, 2)).astype(np.float32)
    sketch = sketch_of([x], 2)
    other = x.copy()
    other[:2000] += 0.5  # a stale cache
    with pytest.raises(ReplayMismatchError, match="do not match the sketch"):
        exact_quantiles(sketch, [0.9], replayer([other]))


def test_refinement_state_merges_exactly():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 3)).astype(np.float32)
    keys = np.asarray(order_keys(jnp.asarray(x)))
    lo, hi = keys.min(0) + 100, keys.max(0) - 100
    whole = QuantileRefinement.create(lo, hi, 64).update(x)
    parts = QuantileRefinement.create(lo, hi, 64)
    split = [QuantileRefinement.create(lo, hi, 64).update(b) for b in np.array_split(x, 3)]
    for s in split:
        parts = parts.merge(s)
    np.testing.assert_array_equal(np.asarray(whole.counts), np.asarray(parts.counts))
    np.testing.assert_array_equal(np.asarray(whole.below), np.asarray(parts.below))
    # the counts are a histogram of the keys inside [lo, hi]
    inside = (keys >= lo) & (keys <= hi)
    assert np.asarray(whole.counts).sum() == inside.sum()
    np.testing.assert_array_equal(np.asarray(whole.below), (keys < lo).sum(0))


def test_order_keys_sort_like_floats():
    v = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-38, 2.0, 7e30, np.inf], np.float32)
    k = np.asarray(order_keys(jnp.asarray(v)))
    assert (np.diff(k) >= 0).all() and k[3] == k[4]
    np.testing.assert_array_equal(key_values(k)[[0, 1, 2, 5, 6, 7, 8]], v[[0, 1, 2, 5, 6, 7, 8]])
