"""QuantileSketch against exact numpy ranks on adversarial streams."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from jaxdissect.stats import QuantileSketch
from jaxdissect.stats.accuracy import adversarial_streams, max_rank_errors, rank_error

N = 2_000_000  # values per unit: far more than the state could hold verbatim
BATCHES = (65_536, 123_457, 7, 250_000, 1)  # varying sizes, cycled


def feed(sketch: QuantileSketch, data: np.ndarray) -> QuantileSketch:
    i, b = 0, 0
    while i < len(data):
        size = BATCHES[b % len(BATCHES)]
        sketch = sketch.update(data[i:i + size])
        i, b = i + size, b + 1
    return sketch


@pytest.fixture(scope="module")
def streams_and_sketch():
    data = adversarial_streams(N)
    sketch = feed(QuantileSketch.create(data.shape[1]), data)
    return np.sort(data, axis=0), sketch


def test_rank_error_within_bounds_on_adversarial_streams(streams_and_sketch):
    sorted_data, sketch = streams_and_sketch
    qs = [0.5, 0.99, 0.995]
    got = np.asarray(sketch.quantiles(qs))
    errors = max_rank_errors(sorted_data, got, qs)
    assert (errors <= np.array([5e-4, 1e-4, 1e-4])).all(), errors


def test_state_size_is_bounded_and_independent_of_count(streams_and_sketch):
    _, sketch = streams_and_sketch
    assert sketch.state_bytes_per_unit <= 256 * 1024
    small = QuantileSketch.create(6).update(np.ones((10, 6), np.float32))
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, sketch)


def test_min_max_count_exact(streams_and_sketch):
    sorted_data, sketch = streams_and_sketch
    np.testing.assert_array_equal(np.asarray(sketch.min()), sorted_data[0])
    np.testing.assert_array_equal(np.asarray(sketch.max()), sorted_data[-1])
    assert int(sketch.count) == N
    np.testing.assert_array_equal(np.asarray(sketch.unit_counts()), np.full(6, N))


def test_matches_numpy_when_values_are_sparse():
    # Every distinct value has its own bin: readouts equal numpy's linear quantiles, up to the
    # float32 arithmetic of the fractional rank q * (n - 1) (about 3e-5 of a value spacing here).
    rng = np.random.default_rng(1)
    data = (rng.integers(-50, 50, size=(999, 3)) * 0.25).astype(np.float32)
    q = np.linspace(0, 1, 41)
    got = np.asarray(QuantileSketch.create(3).update(data).quantiles(q))
    np.testing.assert_allclose(got, np.quantile(data.astype(np.float64), q, axis=0).T, rtol=0, atol=2e-5)


def test_normalize_inverts_quantiles(streams_and_sketch):
    _, sketch = streams_and_sketch
    q = np.array([0.01, 0.3, 0.5, 0.9, 0.99, 0.995])
    values = sketch.quantiles(q)
    ranks = np.asarray(sketch.normalize(values))
    for unit in (0, 1, 2):  # continuous streams: the round trip is close
        np.testing.assert_allclose(ranks[unit], q, atol=1e-4)


def test_normalize_matches_empirical_cdf():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(100_000, 2)).astype(np.float32)
    sketch = QuantileSketch.create(2).update(data)
    probe = np.array([[-1.0, 0.0, 0.5, 2.0], [-3.0, -0.1, 0.1, 9.0]], np.float32)
    got = np.asarray(sketch.normalize(probe))
    want = np.stack([(data[:, u][None, :] <= probe[u][:, None]).mean(1) for u in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_merge_of_split_streams_is_bit_identical():
    data = adversarial_streams(60_000, seed=3)
    whole = QuantileSketch.create(6).update(data)
    q = [0.0, 0.01, 0.5, 0.99, 0.995, 1.0]
    want = np.asarray(whole.quantiles(q))
    for parts in (2, 4, 8):
        chunks = np.array_split(data, parts)
        states = [QuantileSketch.create(6).update(c) for c in chunks]
        merged = states[0]
        for s in states[1:]:
            merged = merged.merge(s)
        np.testing.assert_array_equal(np.asarray(merged.quantiles(q)), want)
        # associativity: a different bracketing gives the same state
        alt = states[-1]
        for s in reversed(states[:-1]):
            alt = s.merge(alt)
        for a, b in zip(jax.tree.leaves(alt), jax.tree.leaves(merged)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_merge_across_simulated_devices_with_shard_map():
    devices = jax.devices()[:4]
    assert len(devices) == 4, "tests/conftest.py should provide simulated CPU devices"
    mesh = jax.make_mesh((4,), ("data",), devices=devices)
    data = adversarial_streams(4 * 5_000, seed=4)
    P = jax.sharding.PartitionSpec

    def per_device(x):
        return QuantileSketch.create(6, resolution=64).update(x).all_reduce("data")

    sharded = jax.device_put(data, jax.sharding.NamedSharding(mesh, P("data")))
    merged = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P()))(sharded)
    whole = QuantileSketch.create(6, resolution=64).update(data)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mask_excludes_rows():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(1000, 2)).astype(np.float32)
    mask = rng.random(1000) < 0.6
    a = QuantileSketch.create(2).update(data, mask)
    b = QuantileSketch.create(2).update(data[mask])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_raises_eagerly_and_is_counted_under_jit():
    data = np.ones((5, 3), np.float32)
    data[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        QuantileSketch.create(3).update(data)
    state = jax.jit(lambda s, x: s.update(x))(QuantileSketch.create(3), data)
    np.testing.assert_array_equal(np.asarray(state.nan_count), [0, 1, 0])
    np.testing.assert_array_equal(np.asarray(state.unit_counts()), [5, 4, 5])
    assert np.isfinite(np.asarray(state.quantiles([0.5]))).all()


def test_empty_units_and_bad_arguments():
    s = QuantileSketch.create(2)
    assert np.isnan(np.asarray(s.quantiles([0.5]))).all()
    with pytest.raises(ValueError, match="power of two"):
        QuantileSketch.create(2, resolution=100)
    with pytest.raises(ValueError, match="shape"):
        s.update(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="merge"):
        s.merge(QuantileSketch.create(2, resolution=64))


def test_resolution_is_honoured():
    # A finer resolution is more accurate on a smooth stream that fills whole bins.
    rng = np.random.default_rng(6)
    data = rng.uniform(1.0, 1.02, size=(200_000, 1)).astype(np.float32)
    sorted_col = np.sort(data[:, 0])
    errors = []
    for res in (4, 64, 1024):
        v = float(QuantileSketch.create(1, resolution=res).update(data).quantiles([0.99])[0, 0])
        errors.append(rank_error(sorted_col, v, 0.99))
    assert errors[0] > errors[2]
    assert errors[2] <= 1e-4
