"""One mesh over the devices, and moving host batches onto it.

Every pass runs on a 1-D mesh with axis 'data'; one device is the same code path with a mesh of
one. Batches are split over the axis along their first dimension; parameters are replicated.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

P = jax.sharding.PartitionSpec
DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A mesh over the first `num_devices` devices (default: all devices of all processes)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, but {len(devices)} are available: {devices}")
        devices = devices[:num_devices]
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(mesh: jax.sharding.Mesh, *arrays: Any) -> list[jax.Array]:
    """Put host arrays on the mesh, split along their first axis."""
    sharding = jax.sharding.NamedSharding(mesh, P(DATA_AXIS))
    return [jax.device_put(a, sharding) for a in arrays]


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
    """Put a pytree on every device of the mesh."""
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, P()))


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """The smallest multiple of the device count that holds `batch_size` samples."""
    n = mesh.size
    return -(-batch_size // n) * n
