"""Shared helpers for the statistics tests."""
import jax
import numpy as np

P = jax.sharding.PartitionSpec


def run_sharded(per_device, *arrays, num_devices=4):
    """Run per_device(*shards) on `num_devices` simulated devices, rows split over them."""
    devices = jax.devices()[:num_devices]
    assert len(devices) == num_devices, "tests/conftest.py should provide simulated CPU devices"
    mesh = jax.make_mesh((num_devices,), ("data",), devices=devices)
    sharded = [jax.device_put(a, jax.sharding.NamedSharding(mesh, P("data"))) for a in arrays]
    specs = tuple(P("data") for _ in arrays)
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P()))(*sharded)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def merge_all(states):
    out = states[0]
    for s in states[1:]:
        out = out.merge(s)
    return out
