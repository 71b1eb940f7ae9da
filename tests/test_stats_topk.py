"""TopK against an exact numpy selection, with global indices and deterministic ties."""
import numpy as np
import pytest
import jax

from jaxdissect.stats import TopK
from stats_helpers import assert_trees_equal, merge_all, run_sharded


def numpy_topk(values, indices, k, largest=True):
    """Reference: per unit, sort by (value desc | asc, index asc) and keep k."""
    out_v, out_i = [], []
    for u in range(values.shape[1]):
        key = -values[:, u] if largest else values[:, u]
        order = np.lexsort((indices, key))[:k]
        out_v.append(values[order, u])
        out_i.append(indices[order])
    return np.stack(out_v), np.stack(out_i)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_numpy_with_ties_and_global_indices(largest):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, size=(500, 7)).astype(np.float32)  # many ties
    indices = rng.permutation(10_000)[:500].astype(np.int32)  # global ids, not row numbers
    state = TopK.create(7, k=25, largest=largest)
    for chunk in np.array_split(np.arange(500), 9):
        state = state.update(values[chunk], indices[chunk])
    got_v, got_i = state.result()
    want_v, want_i = numpy_topk(values, indices, 25, largest)
    np.testing.assert_array_equal(np.asarray(got_v), want_v)
    np.testing.assert_array_equal(np.asarray(got_i), want_i)
    assert int(state.count) == 500


def test_result_independent_of_split_and_order():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 5, size=(400, 3)).astype(np.float32)
    indices = np.arange(400, dtype=np.int32)
    whole = TopK.create(3, 10).update(values, indices)
    perm = rng.permutation(400)
    for parts in (2, 4, 8):
        states = [TopK.create(3, 10).update(values[c], indices[c]) for c in np.array_split(perm, parts)]
        assert_trees_equal(merge_all(states).result(), whole.result())
        assert_trees_equal(merge_all(states[::-1]).result(), whole.result())


def test_merge_across_simulated_devices():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(64, 5)).astype(np.float32)
    indices = np.arange(64, dtype=np.int32)
    merged = run_sharded(lambda v, i: TopK.create(5, 6).update(v, i).all_reduce("data"), values, indices)
    assert_trees_equal(merged.result(), TopK.create(5, 6).update(values, indices).result())


def test_fewer_samples_than_k_and_masking():
    state = TopK.create(2, k=4).update(np.array([[1.0, 2.0], [3.0, 0.5], [9.0, 9.0]], np.float32),
                                       np.array([10, 11, 12]), mask=np.array([True, True, False]))
    v, i = state.result()
    np.testing.assert_array_equal(np.asarray(i), [[11, 10, -1, -1], [10, 11, -1, -1]])
    assert np.isneginf(np.asarray(v)[:, 2:]).all()


def test_nan_and_shape_errors():
    x = np.ones((3, 2), np.float32)
    x[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TopK.create(2, 2).update(x, np.arange(3))
    state = jax.jit(lambda s, x, i: s.update(x, i))(TopK.create(2, 2), x, np.arange(3))
    np.testing.assert_array_equal(np.asarray(state.result()[1])[0], [0, 2])
    with pytest.raises(ValueError, match="indices"):
        TopK.create(2, 2).update(np.ones((3, 2)), np.arange(4))
