"""SampleRecords against numpy: values land at their positions, masked rows and out-of-range
positions are ignored, merges and all-reduces over 1 and 4 simulated devices are exact, and a
saved state loads back bit-exact."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import stats
from jaxdissect.stats import SampleRecords
from stats_helpers import assert_trees_equal, merge_all, run_sharded

N = 13  # samples of the stream


def case(seed, rows=8, shape=(3,), dtype=np.float32):
    """Rows with distinct positions (a permutation's prefix), some masked out."""
    rng = np.random.default_rng(seed)
    positions = rng.permutation(N)[:rows].astype(np.int32)
    if dtype == np.bool_:
        values = rng.random((rows, *shape)) < 0.5
    elif np.issubdtype(dtype, np.integer):
        values = rng.integers(-5, 100, (rows, *shape)).astype(dtype)
    else:
        values = rng.normal(size=(rows, *shape)).astype(dtype)
    mask = rng.random(rows) < 0.75
    return values, positions, mask


def numpy_records(values, positions, mask, shape, dtype):
    expected = np.zeros((N, *shape), dtype)
    filled = np.zeros(N, bool)
    expected[positions[mask]] = values[mask]
    filled[positions[mask]] = True
    return expected, filled


@pytest.mark.parametrize("shape,dtype", [((3,), np.float32), ((), np.int32), ((), np.bool_), ((2, 2), np.float32)])
def test_update_puts_values_at_their_positions(shape, dtype):
    values, positions, mask = case(0, shape=shape, dtype=dtype)
    state = SampleRecords.create(N, shape, dtype)
    for part in np.array_split(np.arange(len(positions)), 3):  # in three batches
        state = state.update(values[part], positions[part], mask[part])
    expected, filled = numpy_records(values, positions, mask, shape, dtype)
    np.testing.assert_array_equal(np.asarray(state.values), expected)
    np.testing.assert_array_equal(np.asarray(state.filled), filled)
    assert state.values.dtype == dtype and state.num_samples == N


def test_out_of_range_positions_are_ignored_and_shapes_checked():
    state = SampleRecords.create(4, (), jnp.int32).update(np.array([7, 8, 9]), np.array([-1, 4, 2]))
    np.testing.assert_array_equal(np.asarray(state.values), [0, 0, 9, 0])
    np.testing.assert_array_equal(np.asarray(state.filled), [False, False, True, False])
    with pytest.raises(ValueError, match="values must be"):
        state.update(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="mask"):
        state.update(np.array([1, 2]), np.array([0, 1]), np.array([True]))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.bool_])
def test_merges_of_disjoint_parts_equal_one_state(dtype):
    values, positions, mask = case(1, rows=12, dtype=dtype)
    whole = SampleRecords.create(N, (3,), dtype).update(values, positions, mask)
    for parts in (1, 2, 4):
        states = [SampleRecords.create(N, (3,), dtype).update(values[c], positions[c], mask[c])
                  for c in np.array_split(np.arange(12), parts)]
        assert_trees_equal(merge_all(states), whole)
    expected, filled = numpy_records(values, positions, mask, (3,), dtype)
    np.testing.assert_array_equal(np.asarray(whole.values), expected)
    np.testing.assert_array_equal(np.asarray(whole.filled), filled)


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.bool_])
def test_all_reduce_over_devices_is_exact(devices, dtype):
    values, positions, mask = case(2, rows=12, dtype=dtype)
    whole = SampleRecords.create(N, (3,), dtype).update(values, positions, mask)
    sharded = run_sharded(lambda v, p, m: SampleRecords.create(N, (3,), dtype).update(v, p, m).all_reduce("data"),
                          values, positions, mask, num_devices=devices)
    assert_trees_equal(sharded, whole)
    expected, _ = numpy_records(values, positions, mask, (3,), dtype)
    np.testing.assert_array_equal(np.asarray(sharded.values), expected)  # bit-exact, floats included


def test_save_load_round_trip_is_bit_exact_and_keeps_updating(tmp_path):
    values, positions, mask = case(3, shape=(2,))
    state = SampleRecords.create(N, (2,), jnp.float32).update(values, positions, mask)
    stats.save(tmp_path / "records", state)
    loaded = stats.load(tmp_path / "records")
    assert type(loaded) is SampleRecords
    assert_trees_equal(loaded, state)
    more = lambda s: s.update(np.ones((2, 2), np.float32), np.array([0, 12]))  # noqa: E731
    assert_trees_equal(more(loaded), more(state))
    flags = SampleRecords.create(N, (), jnp.bool_).update(np.array([True, False]), np.array([3, 5]))
    stats.save(tmp_path / "flags", flags)
    assert_trees_equal(stats.load(tmp_path / "flags"), flags)
