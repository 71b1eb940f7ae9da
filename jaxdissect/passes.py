"""One resumable pass over batches: fingerprinted checkpoints, resume, merges across devices and
processes, progress. Every pass of the dissection and of the experiments runs through it.

    run = ResumablePass(PassSpec("pass1", folder, fingerprint, "pass 1/3"), empty_states, mesh,
                        num_samples, batch_size)
    for r, batch in run.batches(load(run.ranges)):          # r: the batch's sample indices
        run.state = step(run.state, ...)                    # per-device states (leading device axis)
        run.add_errors(batch.errors)
    merged, errors = run.finish()                           # merged on the host
    run.clear()                                             # once the result is saved

States are kept per device (one per device, never communicated during the pass) and merged with
their own collectives at checkpoints and at the end, so results do not depend on the device
count. A checkpoint holds the merged states, the number of samples done (a prefix of the
dataset) and the pass's fingerprint; it is resumed only by a pass with the same fingerprint (a
pass with other settings discards it, saying what differs), on any number of devices or
processes and with any batch size: the remaining samples are batched from where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdissect import checkpoints, parallel, stats
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_directory, existing_version
from jaxdissect.data.sources import prefetch


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When a pass checkpoints: every `every` batches if set, else every `seconds` (process 0's clock)."""

    seconds: float = 120.0
    every: int | None = None

    def due(self, batches_done: int, last_save: float) -> bool:
        if self.every:
            return batches_done % self.every == 0
        return parallel.agree(time.monotonic() - last_save >= self.seconds)


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """What a pass is: its name (the checkpoint's folder name), the folder its checkpoints go
    in, the fingerprint of everything its result depends on, and the progress bar's label."""

    name: str
    directory: str | None  # None: a pass that keeps no checkpoints
    fingerprint: Mapping[str, Any]
    description: str = ""

    @property
    def checkpoint_dir(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, "checkpoints", self.name)


class ResumablePass:
    """A pass in progress; see the module docstring."""

    def __init__(self, spec: PassSpec, empty: Mapping[str, Any], mesh: jax.sharding.Mesh, num_samples: int,
                 batch_size: int, *, policy: CheckpointPolicy = CheckpointPolicy(), progress: bool = True,
                 before_checkpoint: Callable[[], None] | None = None,
                 check: Callable[[dict], None] | None = None, log: Callable[[str], None] = print):
        self.spec, self.mesh, self.policy = spec, mesh, policy
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.before_checkpoint, self.check = before_checkpoint, check
        self.samples_done, self.errors, states = 0, {}, dict(empty)
        loaded = None if spec.directory is None else checkpoints.load_states(spec.checkpoint_dir, empty)
        if loaded is not None:
            saved, meta = loaded
            if meta.get("fingerprint") == fp.canonical(spec.fingerprint) and meta.get("samples_done", -1) <= num_samples:
                states, self.samples_done = saved, int(meta["samples_done"])
                self.errors = {int(k): v for k, v in meta.get("errors", {}).items()}
            elif parallel.is_primary():
                diff = "; ".join(fp.differences(meta.get("fingerprint"), spec.fingerprint)[:6])
                log(f"{spec.description or spec.name}: not resuming the checkpoint in {spec.checkpoint_dir}, made with "
                    f"other settings ({diff}); starting this pass again")
        self.state = {k: parallel.place_first(states[k], empty[k], mesh) for k in empty}
        self.ranges = [np.arange(s, min(s + self.batch_size, self.num_samples))
                       for s in range(self.samples_done, self.num_samples, self.batch_size)]
        self._bar = tqdm(total=self.num_samples, desc=spec.description or spec.name, unit="img",
                         disable=not (progress and parallel.is_primary()), dynamic_ncols=True)
        self._bar.update(self.samples_done)
        self._last_save = time.monotonic()

    def add_errors(self, errors: Mapping[int, str]) -> None:
        """Record unreadable samples (global index -> message) seen in a batch."""
        self.errors.update({int(k): v for k, v in errors.items()})

    def batches(self, items: Iterable[Any]) -> Iterator[tuple[np.ndarray, Any]]:
        """Pair the items (one per batch of `self.ranges`) with their sample indices, and
        checkpoint between them when due."""
        for b, (r, item) in enumerate(zip(self.ranges, items)):
            yield r, item
            self._bar.update(len(r))
            done = int(r[-1]) + 1
            if b + 1 < len(self.ranges) and self.policy.due(b + 1, self._last_save):
                self.checkpoint(done)

    def merged(self) -> dict:
        """The states merged over every device, on the host (a collective: every process calls it)."""
        return parallel.to_host(parallel.merge_over_mesh(self.state, self.mesh))

    def checkpoint(self, samples_done: int) -> None:
        """Merge, check, and have process 0 save the states with their progress and fingerprint."""
        if self.spec.directory is None:
            return
        if self.before_checkpoint is not None:
            self.before_checkpoint()
        merged = self.merged()
        if self.check is not None:
            self.check(merged)
        errors = gather_errors(self.errors, f"{self.spec.name}-{samples_done}")
        if parallel.is_primary():
            checkpoints.save_states(self.spec.checkpoint_dir, merged,
                                    {"samples_done": samples_done, "fingerprint": fp.canonical(self.spec.fingerprint),
                                     "errors": errors})
        parallel.barrier(f"checkpoint-{self.spec.name}-{samples_done}")
        self._last_save = time.monotonic()

    def finish(self) -> tuple[dict, dict[int, str]]:
        """(merged states on the host, every process's unreadable samples). The checkpoint stays
        until `clear()` (call it once the result is saved)."""
        self._bar.close()
        if self.before_checkpoint is not None:
            self.before_checkpoint()
        merged = self.merged()
        if self.check is not None:
            self.check(merged)
        errors = gather_errors(self.errors, f"{self.spec.name}-end")
        return merged, {int(k): v for k, v in errors.items()}

    def clear(self) -> None:
        """Remove the pass's checkpoint (process 0)."""
        if parallel.is_primary() and self.spec.directory is not None:
            checkpoints.remove(self.spec.checkpoint_dir)


def gather_errors(errors: Mapping[int, str], tag: str) -> dict[str, str]:
    """Every process's unreadable-sample messages, on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return {str(k): v for k, v in errors.items()}
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps({str(k): v for k, v in errors.items()}).encode(), np.uint8)
    size = multihost_utils.process_allgather(np.array([len(blob)]))
    padded = np.zeros(int(size.max()), np.uint8)
    padded[:len(blob)] = blob
    every = multihost_utils.process_allgather(padded)
    out = {}
    for n, row in zip(np.asarray(size).reshape(-1), np.asarray(every).reshape(len(size), -1)):
        out.update(json.loads(bytes(row[:n]).decode()))
    return out


# ---------------------------------------------------------------------------------------------
# Finished results of named stages, and a whole pass over a source


class StageStore:
    """Finished results of named stages, each in `<directory>/stages/<name>/` with the
    fingerprint of what made it: states (statistics states, dataclasses of them, any pytree)
    and plain numpy arrays (one .npz), written atomically together. A stage whose stored
    fingerprint differs counts as absent."""

    _ARRAYS = "arrays.npz"

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, "stages", name)

    def load(self, name: str, fingerprint: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> dict | None:
        """The stage's results if stored with this fingerprint, else None. States other than
        statistics states (e.g. composite ones) need their `template` (empty states)."""
        meta = checkpoints.load_meta(self.path(name))
        if meta is None or meta.get("fingerprint") != fp.canonical(fingerprint):
            return None
        folder = existing_version(self.path(name))
        arrays = {}
        if os.path.isfile(os.path.join(folder, self._ARRAYS)):
            with np.load(os.path.join(folder, self._ARRAYS)) as z:
                arrays = {k: z[k] for k in z.files}
        if template is not None:
            states = checkpoints.read_states(folder, template, ignore=(self._ARRAYS,))
            return None if states is None else {**states, **arrays}
        out = dict(arrays)
        for key in sorted(os.listdir(folder)):
            if os.path.isdir(os.path.join(folder, key)):
                out[key] = stats.load(os.path.join(folder, key))
        return out

    def save(self, name: str, fingerprint: Mapping[str, Any], results: Mapping[str, Any]) -> None:
        """Store the stage's results (call it on process 0) with its fingerprint, replacing what was there."""
        arrays = {k: v for k, v in results.items() if isinstance(v, (np.ndarray, np.generic))}
        states = {k: v for k, v in results.items() if k not in arrays}
        with atomic_directory(self.path(name)) as tmp:
            checkpoints.write_states(tmp, states)
            if arrays:
                np.savez(os.path.join(tmp, self._ARRAYS), **arrays)
            with open(os.path.join(tmp, checkpoints.META_FILE), "w") as f:
                json.dump({"fingerprint": fp.canonical(fingerprint)}, f, indent=1)


def run_over_source(spec: PassSpec, empty: Mapping[str, Any], mesh: jax.sharding.Mesh, source: Any, batch_size: int,
                    step: Callable, replicated: Any, batch_args: Callable[[Any], Sequence[Any]], *,
                    policy: CheckpointPolicy = CheckpointPolicy(), progress: bool = True,
                    stop_after: int | None = None, log: Callable[[str], None] = print) -> dict | None:
    """A whole resumable pass of `step` (a `sharded_pass`: (states, replicated, *batch) ->
    states) over `source`, whose batches `batch_args(batch)` turns into the step's host arrays
    (this process's rows); returns the merged states, leaving the checkpoint for the caller to
    clear once the result is stored. `stop_after` batches (for tests of resuming) checkpoints
    and returns None, like a run killed there."""
    run = ResumablePass(spec, empty, mesh, len(source), batch_size, policy=policy, progress=progress, log=log)
    rows = parallel.local_rows(mesh, batch_size)
    positions = np.concatenate([r for _, r in rows])
    replicated = parallel.replicate(mesh, replicated)
    for b, (r, batch) in enumerate(run.batches(prefetch(source, run.ranges, positions))):
        run.add_errors(getattr(batch, "errors", {}) or {})
        args = [parallel.assemble(mesh, rows, np.asarray(a), batch_size) for a in batch_args(batch)]
        run.state = step(run.state, replicated, *args)
        if stop_after is not None and b + 1 >= stop_after and b + 1 < len(run.ranges):
            run.checkpoint(int(r[-1]) + 1)
            return None
    merged, _ = run.finish()
    return merged
