"""One mesh over the devices, and moving host batches onto it.

Every pass runs on a 1-D mesh with axis 'data'; one device is the same code path with a mesh of
one. Batches are split over the axis along their first dimension; parameters are replicated.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

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


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> bool:
    """Join a multi-process run when asked to; returns True if jax.distributed was initialized.

    Explicit arguments win; otherwise JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID are read from the environment. `auto` lets JAX detect the cluster (TPU pod
    slices, SLURM, Open MPI). With none of these, nothing happens: one process, local devices."""
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator is None and not auto:
        return False
    if coordinator is not None and (num_processes is None or process_id is None) and not auto:
        raise ValueError("a multi-process run needs the coordinator address, the number of processes and "
                         "this process's id (flags or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True


def add_distributed_flags(parser) -> None:
    """The command-line flags of a multi-process run (--coordinator, --num-processes,
    --process-id, --distributed-auto), shared by every script; see `initialize_from_flags`."""
    g = parser.add_argument_group("several processes (hosts); also read from JAX_COORDINATOR_ADDRESS, "
                                  "JAX_NUM_PROCESSES, JAX_PROCESS_ID")
    g.add_argument("--coordinator", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run, one per host")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes - 1")
    g.add_argument("--distributed-auto", action="store_true",
                   help="let JAX detect the cluster (TPU pod slices, SLURM, Open MPI)")


def initialize_from_flags(args) -> bool:
    """`initialize_distributed` from the flags of `add_distributed_flags` (and the environment)."""
    return initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.distributed_auto)


def is_primary() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_rows(mesh: jax.sharding.Mesh, global_rows: int) -> list[tuple[Any, np.ndarray]]:
    """For each device of this process, in mesh order, the rows of a global batch it holds."""
    sharding = jax.sharding.NamedSharding(mesh, P(DATA_AXIS))
    index_map = sharding.addressable_devices_indices_map((global_rows,))
    order = {d: i for i, d in enumerate(mesh.devices.flat)}
    out = []
    for device in sorted(index_map, key=order.__getitem__):
        sl = index_map[device][0]
        out.append((device, np.arange(global_rows)[sl]))
    return out


def assemble(mesh: jax.sharding.Mesh, rows: list[tuple[Any, np.ndarray]], local: np.ndarray,
             global_rows: int) -> jax.Array:
    """A global array split along the data axis from this process's rows (`local`, ordered as
    `rows`): each process passes only what its own devices hold."""
    sharding = jax.sharding.NamedSharding(mesh, P(DATA_AXIS))
    pieces, start = [], 0
    for device, r in rows:
        pieces.append(jax.device_put(local[start:start + len(r)], device))
        start += len(r)
    return jax.make_array_from_single_device_arrays((global_rows,) + local.shape[1:], sharding, pieces)


def gather(tree: Any) -> Any:
    """Arrays split over the mesh -> the whole arrays as numpy, on every process (an all-gather
    across processes; a plain device_get with one)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def agree(flag: bool) -> bool:
    """Process 0's value of `flag` on every process, for decisions that must be the same
    everywhere (e.g. whether to compute a batch again)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def to_host(tree: Any) -> Any:
    """Replicated arrays -> numpy on every process (reads this process's own copy)."""
    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return np.asarray(a)

    return jax.tree.map(get, tree)


# ---------------------------------------------------------------------------------------------
# Per-device mergeable states (a leading device axis), as every pass keeps them


def merge_over_mesh(stacked: Any, mesh: jax.sharding.Mesh) -> Any:
    """Per-device states (leading device axis) -> their merge, replicated on every device, with
    the states' own collectives (psum for counts, pmin/pmax for extremes, gathers for top-k)."""
    return _merge_fn(mesh)(stacked)


@functools.lru_cache(maxsize=None)
def _merge_fn(mesh: jax.sharding.Mesh) -> Callable:
    """One jitted merge per mesh, so repeated checkpoints do not recompile."""

    def body(state):
        local = jax.tree.map(lambda a: a[0], state)
        return jax.tree.map(lambda s: s.all_reduce("data"), local, is_leaf=_is_state)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P(), check_vma=False))


def _is_state(x) -> bool:
    return hasattr(x, "all_reduce")


def place_first(state: Any, empty: Any, mesh: jax.sharding.Mesh) -> Any:
    """A per-device state array (leading device axis, split over the mesh) whose first device holds
    `state` and every other device `empty` (merge-neutral). Works across processes: each builds
    only its own devices' parts."""
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    n = mesh.size

    def leaf(s, e):
        s, e = np.asarray(s), np.asarray(e)

        def part(index):
            first = index[0].start or 0
            return (s if first == 0 else e)[None]

        return jax.make_array_from_callback((n,) + s.shape, sharding, part)

    return jax.tree.map(leaf, state, empty)


def sharded_pass(per_device: Callable, mesh: jax.sharding.Mesh, num_batch_args: int) -> Callable:
    """Jit a step `per_device(state, replicated, *batch) -> state` over `mesh`'s 'data' axis.

    The state carries a leading device axis (one state per device, never communicated during
    the pass); `replicated` (e.g. variables, thresholds) is the same on every device; the batch
    arguments are split over devices along their first axis. The state is donated."""

    def body(state, replicated, *batch):
        local = jax.tree.map(lambda a: a[0], state)
        new = per_device(local, replicated, *batch)
        return jax.tree.map(lambda a: a[None], new)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P()) + (P("data"),) * num_batch_args,
                       out_specs=P("data"), check_vma=False)
    return jax.jit(fn, donate_argnums=0)
