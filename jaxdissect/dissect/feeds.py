"""Feeding a pass its batches on every process: this process's rows of each global batch,
assembled onto the mesh, from the source through the network or from the caches."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from jaxdissect import parallel
from jaxdissect.data import sources
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.dissect.run import DissectRun
from jaxdissect.passes import CheckpointPolicy


def local_positions(run: DissectRun) -> tuple[list, np.ndarray]:
    rows = parallel.local_rows(run.mesh, run.batch_size)
    return rows, np.concatenate([r for _, r in rows])


def assemble(run: DissectRun, rows, local: Any) -> Any:
    return jax.tree.map(lambda a: parallel.assemble(run.mesh, rows, np.asarray(a), run.batch_size), local)


def local_parts(array: jax.Array, positions: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(this process's local row numbers, host data) of each addressable shard of a batch-sharded
    array; local rows are ordered as `positions` (the global rows this process holds)."""
    where_local = {int(p): i for i, p in enumerate(positions)}
    out = []
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        data = np.asarray(shard.data)
        out.append((np.asarray([where_local[start + j] for j in range(len(data))], np.int64), data))
    return out


@dataclasses.dataclass
class Replayed:
    """One batch of a replay: activations per layer, validity and global indices (on the mesh)."""

    acts: dict
    ok: jax.Array
    indices: jax.Array
    host_indices: np.ndarray  # this process's rows' sample indices
    host_valid: np.ndarray  # this process's rows that are real samples (not padding)


def use_cache(run: DissectRun) -> bool:
    return run.config.activation_cache and all(run.activation_cache(l).present().all() for l in run.layers)


def replay(run: DissectRun, ranges, ok_all: np.ndarray, use_cache: bool, forward: Callable,
            extra: Callable[[np.ndarray], Any] | None = None) -> Iterator[tuple[Replayed, Any]]:
    """The batches `ranges` again: activations read from the caches (or computed by the same
    compiled forward), with `extra(local sample indices)` (e.g. segmentation rows) alongside."""
    rows, positions = local_positions(run)
    caches = {l: run.activation_cache(l) for l in run.layers} if use_cache else None

    def local(r: np.ndarray):
        valid = positions < len(r)
        idx = np.where(valid, r[np.minimum(positions, len(r) - 1)], r[0])
        ok = ok_all[idx] & valid
        if caches is not None:
            acts = {l: c.read(idx).astype(np.float32) for l, c in caches.items()}
            inputs = None
        else:
            acts, inputs = None, sources.local_batch(run.source, r, positions).inputs
        return idx, valid, ok, acts, inputs, (extra(idx) if extra is not None else None)

    variables = parallel.replicate(run.mesh, run.model.variables)
    for idx, valid, ok, acts, inputs, more in sources.prefetch_map(local, ranges):
        if acts is None:
            _, acts, _ = forward(variables, assemble(run, rows, inputs))
        else:
            acts = assemble(run, rows, acts)
        yield Replayed(acts, assemble(run, rows, ok), assemble(run, rows, idx.astype(np.int32)), idx, valid), \
            (None if more is None else assemble(run, rows, more))


def sample_ok(run: DissectRun, errors: Mapping[int, str]) -> np.ndarray:
    ok = np.ones(run.num_samples, bool)
    bad = [int(i) for i in errors if int(i) < run.num_samples]
    ok[bad] = False
    return ok


def agreed(mask: np.ndarray) -> np.ndarray:
    """Process 0's copy of a host array, on every process (decisions that must agree)."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask))


def checkpoint_policy(c: DissectConfig) -> CheckpointPolicy:
    return CheckpointPolicy(seconds=c.checkpoint_seconds, every=c.checkpoint_every)
