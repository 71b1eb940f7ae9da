"""A classifier's per-class counts under many unit masks of one layer, over a whole source.

- `MaskTally`: per-mask class counts plus the summed true-class log-probability (additive);
- `sweep_logits` / `mask_counts_step`: capture the layer once per batch and run only the
  network's tail for every mask (vmapped, a chunk at a time), as a step for `steps.sharded_pass`;
- `evaluate_masks`: a set of masks over a source, sharded over a mesh, checkpointed per batch
  so a killed run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect import parallel
from jaxdissect.capturing import capture_fn
from jaxdissect.experiments.class_metrics import ClassCounts
from jaxdissect.experiments.sweep import tail_function
from jaxdissect.parallel import sharded_pass
from jaxdissect.passes import CheckpointPolicy, PassSpec, run_over_source


@struct.dataclass
class MaskTally:
    """Per-mask class counts plus, per class, the summed log-probability the network gives the
    true class on that class's images (a continuous measure that orders units whose removal
    alone flips no prediction). Additive: merges and all-reduces by summing."""

    counts: ClassCounts  # (masks, classes) arrays, (masks,) totals
    logprob: jax.Array  # (masks, classes) float32

    @classmethod
    def create(cls, num_masks: int, num_classes: int) -> "MaskTally":
        zero = ClassCounts.create(num_classes)
        counts = jax.tree.map(lambda a: jnp.zeros((num_masks,) + a.shape, a.dtype), zero)
        return cls(counts, jnp.zeros((num_masks, num_classes), jnp.float32))

    def update(self, logits: jax.Array, labels: jax.Array, ok: jax.Array | None = None) -> "MaskTally":
        """Add logits (masks, N, classes) of one batch with true `labels` (N,)."""
        labels = jnp.asarray(labels, jnp.int32)
        w = jnp.ones(labels.shape, jnp.float32) if ok is None else jnp.asarray(ok, jnp.float32)
        classes = self.logprob.shape[1]
        safe = jnp.clip(labels, 0, classes - 1)

        def one(counts, lp_sum, lg):
            true_lp = jnp.take_along_axis(jax.nn.log_softmax(lg, -1), safe[:, None], -1)[:, 0]
            lp_sum = lp_sum.at[labels].add(jnp.where(w > 0, true_lp, 0.0), mode="drop")
            return counts.update(jnp.argmax(lg, -1), labels, ok), lp_sum

        counts, logprob = jax.vmap(one)(self.counts, self.logprob, logits)
        return MaskTally(counts, logprob)

    def merge(self, other: "MaskTally") -> "MaskTally":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "MaskTally":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def metrics(self) -> dict[str, np.ndarray]:
        """The original's per-class metrics for every mask, plus the mean true-class
        log-probability: {name: (masks, classes)} numpy arrays."""
        out = {k: np.asarray(v) for k, v in jax.vmap(lambda c: c.metrics())(self.counts).items()}
        true = np.asarray(self.counts.true, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mean_true_logprob"] = np.where(true > 0, np.asarray(self.logprob, np.float64) / true, np.nan)
        return out


def sweep_logits(tail: Callable, variables, acts: jax.Array, masks: jax.Array, chunk: int = 32) -> jax.Array:
    """Logits (num_masks, N, classes) of the tail on acts * (1 - mask) for every mask, `chunk`
    masks at a time (vmapped), so memory stays chunk x the batch."""
    num = masks.shape[0]
    pad = (-num) % chunk
    padded = jnp.concatenate([masks, jnp.zeros((pad, masks.shape[1]), masks.dtype)]) if pad else masks
    one = lambda mask: tail(variables, acts * (1 - mask.astype(acts.dtype)))  # noqa: E731
    out = jax.lax.map(jax.vmap(one), padded.reshape(-1, chunk, masks.shape[1]))
    return out.reshape(-1, *out.shape[2:])[:num]


def mask_counts_step(forward: Callable, tail: Callable, model_input: Callable, chunk: int = 32) -> Callable:
    """A batch step `(tally, (variables, masks), inputs, labels, ok) -> tally` for `sharded_pass`.

    `forward(variables, x)` gives the layer's activations (the rest of the network is dead code),
    `tail(variables, acts)` the logits from the layer on, `model_input(inputs)` the normalized
    model input. Each batch runs the head once and the tail once per mask (vmapped, `chunk` masks
    at a time)."""

    def per_device(tally, replicated, inputs, labels, ok):
        variables, masks = replicated
        acts = forward(variables, model_input(inputs))
        return tally.update(sweep_logits(tail, variables, acts, masks, chunk), labels, ok)

    return per_device


def model_input_function(model) -> Callable:
    """uint8 NHWC images -> the model's normalized float input."""
    norm = model.normalization
    mean = jnp.asarray(norm.get("mean", (0.0, 0.0, 0.0)), jnp.float32)
    std = jnp.asarray(norm.get("std", (1.0, 1.0, 1.0)), jnp.float32)
    return lambda inputs: (inputs.astype(jnp.float32) / 255.0 - mean) / std


def layer_forward(model, layer: str) -> Callable:
    """(variables, x) -> the layer's activations (jit drops everything after it)."""
    run = capture_fn(model.module, (layer,))
    return lambda variables, x: run(variables, x, {})[1][layer]


def masks_digest(masks: np.ndarray) -> str:
    """A digest of a mask set, part of a stage's fingerprint."""
    return hashlib.sha1(np.ascontiguousarray(masks, np.float32).tobytes()).hexdigest()


def weights_digest(variables) -> str:
    """A digest of the model's weights, so cached stages of other weights are never reused."""
    h = hashlib.sha1()
    for leaf in jax.tree.leaves(variables):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stage_fingerprint(model, layer: str) -> dict:
    """What a cached stage depends on besides its masks and samples: the model's name, the layer
    and a digest of the weights (so stages of other weights are never reused)."""
    return {"format": 2, "model": model.name, "layer": layer, "weights": weights_digest(model.variables)}


_COUNT_FIELDS = ("true", "pred", "correct", "total")


def tally_arrays(tally: MaskTally) -> dict[str, np.ndarray]:
    """A tally as named numpy arrays (for .npz files); `tally_from_arrays` reads them back."""
    out = {k: np.asarray(getattr(tally.counts, k)) for k in _COUNT_FIELDS}
    out["logprob"] = np.asarray(tally.logprob)
    return out


def tally_from_arrays(z) -> MaskTally:
    return MaskTally(ClassCounts(**{k: jnp.asarray(z[k]) for k in _COUNT_FIELDS}), jnp.asarray(z["logprob"]))


_STEPS: dict[Any, Callable] = {}


def _sweep_step(model, layer: str, chunk: int, mesh) -> Callable:
    """The jitted sharded sweep step over {'tally': MaskTally}, built once per (module, layer,
    input normalization, chunk, mesh)."""
    key = (model.module, layer, json.dumps(model.normalization, sort_keys=True, default=str), chunk, mesh)
    if key not in _STEPS:
        one = mask_counts_step(layer_forward(model, layer), tail_function(model, layer),
                               model_input_function(model), chunk)
        _STEPS[key] = sharded_pass(lambda state, rep, *batch: {"tally": one(state["tally"], rep, *batch)}, mesh, 3)
    return _STEPS[key]


def evaluate_masks(model, layer: str, source, masks: np.ndarray, num_classes: int, *, mesh=None,
                   batch_size: int = 50, chunk: int = 32, checkpoint: str | None = None, name: str = "masks",
                   checkpoint_every: int = 20, fingerprint: dict | None = None, progress: bool = False,
                   desc: str = "masks") -> MaskTally:
    """Per-class counts of the model's predictions on `source` with each of `masks` (M, units)
    applied to `layer` (1 = zero that unit): a MaskTally with (M, classes) arrays.

    Batches are split over `mesh` (default: all devices); each device keeps its own counts, merged
    at the end. With `checkpoint` (a folder) the pass checkpoints into checkpoint/checkpoints/<name>
    every `checkpoint_every` batches and a rerun with the same masks and samples continues from
    there (on any device count or batch size); the caller removes the checkpoint once the result
    is kept."""
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 2:
        raise ValueError(f"masks must be (num_masks, units), got shape {masks.shape}")
    mesh = parallel.make_mesh() if mesh is None else mesh
    batch_size = parallel.padded_batch_size(batch_size, mesh)
    fingerprint = {**(fingerprint or {}), "layer": layer, "masks": masks_digest(masks),
                   "num_masks": int(masks.shape[0]), "samples": len(source)}
    empty = {"tally": MaskTally.create(masks.shape[0], num_classes)}
    step = _sweep_step(model, layer, chunk, mesh)

    def per_batch(batch):
        if batch.labels is None:
            raise ValueError(f"{type(source).__name__} gives no class labels; the ablation needs labelled images")
        return batch.inputs, np.asarray(batch.labels, np.int32), batch.ok

    merged = run_over_source(PassSpec(name, checkpoint, fingerprint, desc), empty, mesh, source, batch_size, step,
                             (model.variables, jnp.asarray(masks)), per_batch,
                             policy=CheckpointPolicy(every=checkpoint_every), progress=progress)
    return merged["tally"]
