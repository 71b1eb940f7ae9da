"""The dissection driver: model + data + segmenter -> per-unit thresholds, top images, IoU,
labels, thumbnails and reports, resumable and sharded over every device of every process.

Each image goes through the network, and through the segmenter, at most once:
  1. activations (the one forward): per unit a quantile sketch of the upsampled activations,
     the top images by peak activation with the activation maps of the first few, a NaN/inf
     count; the layers' activations go to an activation cache (TensorStore zarr, in the layer's
     results folder) and the segmentations to a segmentation cache shared by every dissection
     of the same images with the same segmenter ($JAXDISSECT_HOME/segmentations);
  2. thresholds: the sketch's bins narrowed over the cached activations until each threshold is
     the exact 1 - quantile quantile of the upsampled values (usually one pass, at most a few);
  3. IoU: unit x label intersections of the thresholded activations with the segmentations,
     read from the caches;
  4. thumbnails (from the top images' cached maps and the images themselves) and the reports.
Without the activation cache (`activation_cache=False`) passes 2 and 3 run the network again,
with identical results. Every stage's result is stored with the fingerprint of what made it; a
stage whose fingerprint still matches is loaded instead of recomputed, one that does not is
computed again, and a finished results folder made with other settings is refused (or replaced
with `overwrite=True`). Killed runs resume from the last checkpoint of the stage they were in.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from contextlib import ExitStack
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoints, parallel, stats
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text
from jaxdissect.cli import UserError
from jaxdissect.dissect import runstate, sources, steps
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.dissect.outputs import write_layer_outputs
from jaxdissect.dissect.run import DissectRun, result_dir
from jaxdissect.passes import CheckpointPolicy, PassSpec, ResumablePass
from jaxdissect.report.unit_images import thumbnail
from jaxdissect.stats import IoUTally, RefinementPlan, UnitCounts, target_ranks
from jaxdissect.stats.refine import choose_subbins

RESULT_FINGERPRINT = "fingerprint.json"
STAGE_ACTIVATIONS, STAGE_IOU, THRESHOLDS_FILE = "activations", "iou", "thresholds.json"


class FinishedWithOtherSettingsError(UserError):
    """A results folder holds a finished dissection made with other settings."""


@dataclasses.dataclass
class LayerResult:
    """Everything the dissection of one layer produced."""

    layer: str
    directory: str
    thresholds: np.ndarray  # (units,) exact 1 - quantile quantiles of the upsampled activations
    iou: np.ndarray  # (labels, units)
    best_label: np.ndarray  # (units,) label ids
    best_iou: np.ndarray  # (units,)
    topk_indices: np.ndarray  # (units, k)
    label_names: tuple[str, ...]
    label_categories: tuple[str, ...]
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per stage of the run that made it

    def unit_labels(self) -> list[tuple[str, str, float]]:
        return [(self.label_names[l], self.label_categories[l], float(i)) for l, i in zip(self.best_label, self.best_iou)]


# ---------------------------------------------------------------------------------------------
# Stage storage: a folder per stage and layer, written atomically with its fingerprint


def _stats_dir(run: DissectRun, layer: str, stage: str) -> str:
    return os.path.join(run.dirs[layer], "stats", stage)


def _load_stage(run: DissectRun, stage: str, template: Mapping[str, Any], expected: Callable[[str], dict]) -> dict | None:
    """Per layer, the stored states of `stage` if every layer's fingerprint matches, else None."""
    out = {}
    for layer in run.layers:
        loaded = checkpoints.load_states(_stats_dir(run, layer, stage), template[layer])
        if loaded is None or loaded[1].get("fingerprint") != fp.canonical(expected(layer)):
            return None
        out[layer] = loaded
    return out


def _save_stage(run: DissectRun, stage: str, layer: str, states: Mapping[str, Any], fingerprint: dict, **meta) -> None:
    checkpoints.save_states(_stats_dir(run, layer, stage), states, {"fingerprint": fp.canonical(fingerprint), **meta})


# Where a finished layer's statistics live in its results folder (the one place that knows).
STATS_LAYOUT = {
    "quantiles": os.path.join("stats", STAGE_ACTIVATIONS, "quantiles"),  # QuantileSketch, upsampled activations
    "topk": os.path.join("stats", STAGE_ACTIVATIONS, "topk"),  # TopK of per-image peaks
    "top_maps": os.path.join("stats", STAGE_ACTIVATIONS, "top_maps"),  # TopK with the top images' maps
    "nonfinite": os.path.join("stats", STAGE_ACTIVATIONS, "nonfinite"),  # UnitCounts of NaN/inf samples
    "iou": os.path.join("stats", STAGE_IOU, "iou"),  # IoUTally
    "thresholds": os.path.join("stats", THRESHOLDS_FILE),  # the exact thresholds (JSON)
}


def layer_stats(directory: str, which: tuple[str, ...] | None = None) -> dict:
    """The statistics a finished dissection stored for one layer, read from `directory` (its
    results folder): the STATS_LAYOUT keys in `which` (default: all); 'thresholds' as numpy."""
    out = {}
    for key in which or tuple(STATS_LAYOUT):
        path = os.path.join(directory, STATS_LAYOUT[key])
        if key == "thresholds":
            saved = _read_json(path)
            if saved is None:
                raise FileNotFoundError(f"{path!r} is missing (is {directory!r} a finished dissection's folder?)")
            out[key] = np.asarray(saved["thresholds"], np.float32)
        else:
            try:
                out[key] = stats.load(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path!r} is missing (is {directory!r} a finished dissection's folder?)") \
                    from None
    return out


# ---------------------------------------------------------------------------------------------
# Feeding batches: from the source through the network, or from the caches


def _local_positions(run: DissectRun) -> tuple[list, np.ndarray]:
    rows = parallel.local_rows(run.mesh, run.batch_size)
    return rows, np.concatenate([r for _, r in rows])


def _assemble(run: DissectRun, rows, local: Any) -> Any:
    return jax.tree.map(lambda a: parallel.assemble(run.mesh, rows, np.asarray(a), run.batch_size), local)


def _local_parts(array: jax.Array, positions: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
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
class _Replayed:
    """One batch of a replay: activations per layer, validity and global indices (on the mesh)."""

    acts: dict
    ok: jax.Array
    indices: jax.Array
    host_indices: np.ndarray  # this process's rows' sample indices
    host_valid: np.ndarray  # this process's rows that are real samples (not padding)


def _replay(run: DissectRun, ranges, ok_all: np.ndarray, use_cache: bool, forward: Callable,
            extra: Callable[[np.ndarray], Any] | None = None) -> Iterator[tuple[_Replayed, Any]]:
    """The batches `ranges` again: activations read from the caches (or computed by the same
    compiled forward), with `extra(local sample indices)` (e.g. segmentation rows) alongside."""
    rows, positions = _local_positions(run)
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
            _, acts, _ = forward(variables, _assemble(run, rows, inputs))
        else:
            acts = _assemble(run, rows, acts)
        yield _Replayed(acts, _assemble(run, rows, ok), _assemble(run, rows, idx.astype(np.int32)), idx, valid), \
            (None if more is None else _assemble(run, rows, more))


def _sample_ok(run: DissectRun, errors: Mapping[int, str]) -> np.ndarray:
    ok = np.ones(run.num_samples, bool)
    bad = [int(i) for i in errors if int(i) < run.num_samples]
    ok[bad] = False
    return ok


# ---------------------------------------------------------------------------------------------
# Stage 1: activations (the one forward pass)


def _nan_check(run: DissectRun) -> Callable[[dict], None]:
    def check(merged: dict) -> None:
        for layer in run.layers:
            state = merged[layer]
            counts = np.asarray(state.nonfinite.counts) + np.asarray(state.quantiles.nan_count)
            if counts.any():
                units = np.flatnonzero(counts)
                raise FloatingPointError(
                    f"layer {layer} of {run.model.name}: NaN or infinite activations (in the layer or before its "
                    f"activation function) in {len(units)} unit(s), e.g. units {units[:10].tolist()} "
                    f"({int(counts.max())} samples); the model or its weights are broken. Nothing of this pass "
                    "was saved as a result.")
    return check


def _activation_template(run: DissectRun) -> dict:
    c = run.config
    return {l: steps.ActivationStats.create(g.units, c.topk, c.resolution, map_shape=g.shape[:2], map_k=c.strip_images)
            for l, g in run.geometry.items()}


def _stage_states(stats: steps.ActivationStats) -> dict:
    return {"quantiles": stats.quantiles, "topk": stats.topk, "top_maps": stats.top_maps, "nonfinite": stats.nonfinite}


def _from_stage_states(states: Mapping[str, Any]) -> steps.ActivationStats:
    return steps.ActivationStats(states["quantiles"], states["topk"], states["top_maps"], states["nonfinite"])


def stage_activations(run: DissectRun, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Pass 1, or its stored result: ({layer: ActivationStats}, {sample: error message})."""
    template = _activation_template(run)
    stored = _load_stage(run, STAGE_ACTIVATIONS, {l: _stage_states(t) for l, t in template.items()},
                         run.activations_fingerprint)
    caches_ok = not run.config.activation_cache or all(
        run.activation_cache(l).present().all() for l in run.layers)
    if stored is not None and caches_ok:
        errors = {int(k): v for k, v in stored[run.layers[0]][1].get("errors", {}).items()}
        return {l: _from_stage_states(s) for l, (s, _) in stored.items()}, errors
    c = run.config
    seg_cache = run.seg_cache()
    seg_missing = ~_agreed(seg_cache.present())
    images_cache = run.image_cache()
    images_missing = None if images_cache is None else ~_agreed(images_cache.present())
    act_caches = {l: run.activation_cache(l) for l in run.layers} if c.activation_cache else {}
    if parallel.is_primary():
        run.check_disk_space(list(act_caches), int(seg_missing.sum()))
    fingerprint = {"layers": {l: fp.digest(run.activations_fingerprint(l)) for l in run.layers}}
    pending: list = []

    def flush():
        for f in pending:
            f.result()
        pending.clear()

    p = ResumablePass(PassSpec("activations", run.primary_dir, fingerprint, f"pass 1: activations of {len(run.layers)} "
                               f"layer(s){' and segmentations' if seg_missing.any() else ''}"),
                      template, run.mesh, run.num_samples, run.batch_size, policy=_policy(c), progress=c.progress,
                      before_checkpoint=flush, check=_nan_check(run), log=log)
    rows, positions = _local_positions(run)
    forward = run.forward_fn()
    variables = parallel.replicate(run.mesh, run.model.variables)
    segment = None if run.segmenter is None else jax.jit(lambda images: run.segmenter.segment(images, run.downsample))

    def per_device(state, _, acts, pre, indices, ok):
        return {l: steps.update_activation_stats(state[l], acts[l], g.upsample, indices, ok, pre.get(l))
                for l, g in run.geometry.items()}

    step = steps.sharded_pass(per_device, run.mesh, 4)
    for r, batch in p.batches(sources.prefetch(run.source, p.ranges, positions)):
        p.add_errors(batch.errors)
        valid = positions < len(r)
        inputs, ok, idx = (_assemble(run, rows, a) for a in (batch.inputs, batch.ok, batch.indices))
        out, acts, pre = forward(variables, inputs)
        p.state = step(p.state, None, acts, pre, idx, ok)
        for layer, cache in act_caches.items():
            for local, data in _local_parts(acts[layer], positions):
                keep = valid[local]
                pending.append(cache.write(batch.indices[local][keep], data[keep]))
        if seg_missing[r].any():
            if segment is None:
                parts = [(np.arange(len(positions)), run.ground_truth(batch))]
            else:
                parts = _local_parts(segment(run.seg_images(inputs, out)), positions)
            for local, data in parts:
                keep = valid[local]  # unreadable images too: their rows are never used, but complete the cache
                pending.append(seg_cache.write(batch.indices[local][keep], data[keep]))
        if images_missing is not None and images_missing[r].any():
            for local, data in _local_parts(_display(out), positions):
                keep = valid[local]
                if keep.any():
                    thumbs = np.stack([thumbnail(im, c.thumbsize) for im in data[keep]])
                    pending.append(images_cache.write(batch.indices[local][keep], thumbs))
    merged, errors = p.finish()
    readable = run.num_samples - len([i for i in errors if int(i) < run.num_samples])
    if readable == 0:
        first = next(iter(errors.values()), "")
        raise UserError(f"no readable samples in {run.dataset!r}: all {run.num_samples} failed to load "
                        f"(first: {first})")
    if parallel.is_primary():
        for l in run.layers:
            _save_stage(run, STAGE_ACTIVATIONS, l, _stage_states(merged[l]), run.activations_fingerprint(l),
                        errors={str(k): v for k, v in sorted(errors.items())})
            _save_errors(run.dirs[l], errors)
    parallel.barrier("activations-saved")
    p.clear()
    return merged, errors


def _display(output: jax.Array) -> jax.Array:
    """A generator's output in [-1, 1] as uint8 images."""
    return jnp.clip((output + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8)


def _agreed(mask: np.ndarray) -> np.ndarray:
    """Process 0's copy of a host array, on every process (decisions that must agree)."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask))


def _policy(c: DissectConfig) -> CheckpointPolicy:
    return CheckpointPolicy(seconds=c.checkpoint_seconds, every=c.checkpoint_every)


def _save_errors(directory: str, errors: Mapping[int, str]) -> None:
    atomic_write_text(os.path.join(directory, "skipped_images.json"),
                      json.dumps({str(k): v for k, v in sorted(errors.items())}, indent=1, ensure_ascii=True))


def _load_errors(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "skipped_images.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


# ---------------------------------------------------------------------------------------------
# Stage 2: exact thresholds


def _use_cache(run: DissectRun) -> bool:
    return run.config.activation_cache and all(run.activation_cache(l).present().all() for l in run.layers)


def stage_thresholds(run: DissectRun, act: Mapping[str, steps.ActivationStats], ok_all: np.ndarray,
                     log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Per layer, the exact 1 - quantile quantile of the upsampled activations (stored per layer)."""
    q = 1.0 - run.config.quantile
    stored = {}
    for layer in run.layers:
        saved = _read_json(os.path.join(run.dirs[layer], "stats", THRESHOLDS_FILE))
        if saved is None or saved.get("fingerprint") != fp.canonical(run.thresholds_fingerprint(layer)):
            break
        stored[layer] = np.asarray(saved["thresholds"], np.float32)
    else:
        return stored
    total_units = sum(g.units for g in run.geometry.values())
    subbins = choose_subbins(total_units)
    plans, fracs = {}, {}
    for layer in run.layers:
        sketch = act[layer].quantiles
        ranks, frac = target_ranks(np.asarray(sketch.unit_counts()), [q])
        plans[layer], fracs[layer] = RefinementPlan(sketch, ranks, subbins), frac[:, 0]
    plan_file = os.path.join(run.primary_dir, "checkpoints", "refinement.json")
    fingerprint = {l: fp.digest(run.thresholds_fingerprint(l)) for l in run.layers}
    _restore_plans(plans, plan_file, fingerprint)
    use_cache = _use_cache(run)
    forward = run.forward_fn()
    while any(plan.pending for plan in plans.values()):
        number = max(plan.passes for plan in plans.values()) + 1
        empty = {l: plan.state() for l, plan in plans.items() if plan.pending}
        spec = PassSpec(f"refine{number}", run.primary_dir, {"thresholds": fingerprint, "pass": number,
                                                             "intervals": _plans_digest(plans)},
                        f"pass {number + 1}: exact thresholds ({sum(p.pending for p in plans.values())} values to "
                        f"refine{'' if use_cache else ', running the network again'})")
        p = ResumablePass(spec, empty, run.mesh, run.num_samples, run.batch_size, policy=_policy(run.config),
                          progress=run.config.progress, log=log)

        def per_device(state, _, acts, ok):
            return {l: steps.update_refinement(state[l], acts[l], run.geometry[l].upsample, ok) for l in state}

        step = steps.sharded_pass(per_device, run.mesh, 2)
        for _, (item, _) in p.batches(_replay(run, p.ranges, ok_all, use_cache, forward)):
            p.state = step(p.state, None, {l: item.acts[l] for l in empty}, item.ok)
        merged, _ = p.finish()
        for l, state in merged.items():
            plans[l].advance(state)
        if parallel.is_primary():
            _save_plans(plans, plan_file, fingerprint)
        parallel.barrier(f"refine{number}-saved")
        p.clear()
    out = {}
    for layer, plan in plans.items():
        v0, v1 = plan.values[:, 0].astype(np.float64), plan.values[:, 1].astype(np.float64)
        frac = fracs[layer]
        with np.errstate(invalid="ignore"):
            out[layer] = np.where(frac > 0, v0 + frac * (v1 - v0), v0).astype(np.float32)
        sketch_estimate = np.asarray(act[layer].quantiles.quantiles([q]))[:, 0]
        if parallel.is_primary():
            atomic_write_text(os.path.join(run.dirs[layer], "stats", THRESHOLDS_FILE), json.dumps({
                "fingerprint": fp.canonical(run.thresholds_fingerprint(layer)), "quantile": run.config.quantile,
                "level": q, "thresholds": [float(t) for t in out[layer]],
                "sketch_estimates": [float(t) for t in sketch_estimate],
                "refinement_passes": plan.passes}, allow_nan=True))
    parallel.barrier("thresholds-saved")
    if parallel.is_primary() and os.path.exists(plan_file):
        os.remove(plan_file)
    return out


def _plans_digest(plans: Mapping[str, RefinementPlan]) -> str:
    return fp.digest({l: [p.lo.tolist(), p.hi.tolist()] for l, p in plans.items()})


def _save_plans(plans, path: str, fingerprint: dict) -> None:
    data = {"fingerprint": fingerprint, "plans": {l: {"lo": p.lo.tolist(), "hi": p.hi.tolist(),
                                                      "values": [[None if np.isnan(v) else float(v) for v in row]
                                                                 for row in p.values], "passes": p.passes}
                                                  for l, p in plans.items()}}
    atomic_write_text(path, json.dumps(data))


def _restore_plans(plans, path: str, fingerprint: dict) -> None:
    """Continue the refinement where a killed run left it (same fingerprint only)."""
    data = _read_json(path)
    if data is None or data.get("fingerprint") != fingerprint:
        return
    for l, saved in data["plans"].items():
        plan = plans[l]
        plan.lo = np.asarray(saved["lo"], np.int64)
        plan.hi = np.asarray(saved["hi"], np.int64)
        plan.values = np.asarray([[np.nan if v is None else v for v in row] for row in saved["values"]], np.float32)
        plan.passes = int(saved["passes"])


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Stage 3: IoU with the segmentation


def _fill_segmentations(run: DissectRun, log: Callable[[str], None]) -> None:
    """Segment the samples the segmentation cache lacks (after pass 1 it lacks none, unless the
    cache was removed in between)."""
    cache = run.seg_cache()
    missing = ~_agreed(cache.present())
    if not missing.any():
        return
    log(f"segmenting {int(missing.sum())} samples missing from the segmentation cache {cache.path}")
    rows, positions = _local_positions(run)
    forward = run.forward_fn() if run.model.kind == "generator" else None
    segment = None if run.segmenter is None else jax.jit(lambda images: run.segmenter.segment(images, run.downsample))
    variables = parallel.replicate(run.mesh, run.model.variables)
    todo = [r for r in run.ranges() if missing[r].any()]
    for r, batch in zip(todo, sources.prefetch(run.source, todo, positions)):
        valid = positions < len(r)
        if segment is None:
            parts = [(np.arange(len(positions)), run.ground_truth(batch))]
        else:
            inputs = _assemble(run, rows, batch.inputs)
            out = forward(variables, inputs)[0] if forward is not None else None
            parts = _local_parts(segment(run.seg_images(inputs, out)), positions)
        for local, data in parts:
            keep = valid[local]
            cache.write(batch.indices[local][keep], data[keep]).result()
    parallel.barrier("segmentations-filled")


def stage_iou(run: DissectRun, thresholds: Mapping[str, np.ndarray], ok_all: np.ndarray,
              log: Callable[[str], None]) -> dict[str, IoUTally]:
    """Per layer, the IoUTally of the thresholded activations with the segmentation."""
    template = {l: {"iou": IoUTally.create(g.units, len(run.labels))} for l, g in run.geometry.items()}
    stored = _load_stage(run, STAGE_IOU, template, run.iou_fingerprint)
    if stored is not None:
        return {l: s["iou"] for l, (s, _) in stored.items()}
    _fill_segmentations(run, log)
    seg_cache = run.seg_cache()
    empty = {}
    for l, g in run.geometry.items():
        empty[l] = IoUTally.create(g.units, len(run.labels))
        empty[l + "#nonfinite"] = UnitCounts.create(g.units)
    use_cache = _use_cache(run)
    spec = PassSpec("iou", run.primary_dir, {l: fp.digest(run.iou_fingerprint(l)) for l in run.layers},
                    f"last pass: IoU with the {run.seg_name} segmentation")
    p = ResumablePass(spec, empty, run.mesh, run.num_samples, run.batch_size, policy=_policy(run.config),
                      progress=run.config.progress, log=log, check=_iou_nan_check(run))
    thr = parallel.replicate(run.mesh, {l: jnp.asarray(t) for l, t in thresholds.items()})

    def per_device(state, thr, acts, seg, ok):
        new = {}
        for l, g in run.geometry.items():
            new[l] = steps.update_iou(state[l], acts[l], g.upsample, thr[l], seg.astype(jnp.int32), ok)
            new[l + "#nonfinite"] = state[l + "#nonfinite"].update(steps.nonfinite_flags(acts[l]), ok)
        return new

    step = steps.sharded_pass(per_device, run.mesh, 3)
    forward = run.forward_fn()
    for _, (item, seg) in p.batches(_replay(run, p.ranges, ok_all, use_cache, forward, extra=seg_cache.read)):
        p.state = step(p.state, thr, item.acts, seg, item.ok)
    merged, _ = p.finish()
    if parallel.is_primary():
        for l in run.layers:
            _save_stage(run, STAGE_IOU, l, {"iou": merged[l]}, run.iou_fingerprint(l))
    parallel.barrier("iou-saved")
    p.clear()
    return {l: merged[l] for l in run.layers}


def _iou_nan_check(run: DissectRun) -> Callable[[dict], None]:
    def check(merged: dict) -> None:
        for l in run.layers:
            counts = np.asarray(merged[l + "#nonfinite"].counts)
            if counts.any():
                raise FloatingPointError(f"layer {l}: NaN or infinite activations in units "
                                         f"{np.flatnonzero(counts)[:10].tolist()} while computing IoU (the network "
                                         "is not deterministic, or the activation cache is corrupt)")
    return check


# ---------------------------------------------------------------------------------------------
# The driver


def _finished(run: DissectRun, layer: str) -> bool:
    """Whether `layer`'s folder holds a finished dissection with this run's settings; a finished
    one with other settings is refused unless `overwrite` (then its report files are removed)."""
    d = run.dirs[layer]
    if not runstate.is_done(d):
        return False
    stored = _read_json(os.path.join(d, RESULT_FINGERPRINT))
    expected = run.result_fingerprint(layer)
    if stored == fp.canonical(expected):
        return True
    if not run.config.overwrite:
        diff = fp.differences(stored, expected)
        shown = [x for x in diff if x.startswith("summary.")] or diff
        raise FinishedWithOtherSettingsError(
            f"{d} holds a finished dissection made with other settings ({'; '.join(s.replace('summary.', '') for s in shown[:6])}). "
            f"To keep both, pass another --outdir; to replace it, pass --overwrite (stages whose settings did not "
            "change are reused)")
    if parallel.is_primary():
        for name in (runstate.DONE_FILE, RESULT_FINGERPRINT):
            if os.path.exists(os.path.join(d, name)):
                os.remove(os.path.join(d, name))
    return False


def _prepare_outputs(run: DissectRun, layer: str) -> None:
    """Thumbnails made with other settings must not survive into this result."""
    image_dir = os.path.join(run.dirs[layer], "image")
    marker = os.path.join(image_dir, RESULT_FINGERPRINT)
    expected = fp.canonical(run.result_fingerprint(layer))
    if os.path.isdir(image_dir) and _read_json(marker) != expected:
        shutil.rmtree(image_dir)
    os.makedirs(image_dir, exist_ok=True)
    if not os.path.exists(marker):
        atomic_write_text(marker, json.dumps(expected))


def dissect(config: DissectConfig = DissectConfig(), *, model=None, source=None, segmenter=None,
            log: Callable[[str], None] = print) -> list[LayerResult]:
    """Dissect the configured layers; returns one LayerResult per layer (reports written).

    `model` (a LoadedModel), `source` (random access batches, see `sources`) and `segmenter`
    (a Segmenter) replace what the config names, for dissecting your own networks and data."""
    start = time.perf_counter()
    run = DissectRun.create(config, model, source, segmenter)
    primary = parallel.is_primary()
    say = log if primary and config.progress else (lambda _: None)
    with ExitStack() as stack:
        if primary:
            for d in run.dirs.values():
                stack.enter_context(runstate.ExclusiveRun(d))
        parallel.barrier("dissect-locked")
        finished = {l: _finished(run, l) for l in run.layers}
        parallel.barrier("dissect-checked")
        timings = {"setup": time.perf_counter() - start}
        clock = time.perf_counter()
        act, errors = stage_activations(run, say)
        ok_all = _sample_ok(run, errors)
        timings["activations"], clock = time.perf_counter() - clock, time.perf_counter()
        thresholds = stage_thresholds(run, act, ok_all, say)
        timings["thresholds"], clock = time.perf_counter() - clock, time.perf_counter()
        ious = stage_iou(run, thresholds, ok_all, say)
        timings["iou"], clock = time.perf_counter() - clock, time.perf_counter()
        results = []
        for l in run.layers:
            best, best_iou = (np.asarray(a) for a in ious[l].best_label())
            best = np.where(best_iou > 0, best, 0)  # no overlap with any concept: label 0, '-
            _, top_idx = act[l].topk.result()
            results.append(LayerResult(l, run.dirs[l], thresholds[l], np.asarray(ious[l].iou()), best, best_iou,
                                       np.asarray(top_idx), run.labels.names, run.labels.categories, timings))
        elapsed = time.perf_counter() - start
        for r in results:
            if finished[r.layer]:
                if primary:
                    log(f"{run.model.name} {r.layer}: already dissected with these settings; results reused from "
                        f"{os.path.join(r.directory, 'report.html')} (--overwrite recomputes what changed)")
                continue
            if primary:
                _prepare_outputs(run, r.layer)
                write_layer_outputs(run, r, act[r.layer], _load_errors(r.directory), say)
            labelled = r.best_iou > config.miniou
            concepts = len({r.label_names[i] for i in r.best_label[labelled]})
            summary = (f"{run.model.name} {r.layer}: {run.num_samples} samples, {int(labelled.sum())} of "
                       f"{len(labelled)} units labelled with IoU > {config.miniou} ({concepts} concepts), "
                       f"{elapsed:.0f} s -> {os.path.join(r.directory, 'report.html')}")
            if primary:
                atomic_write_text(os.path.join(r.directory, RESULT_FINGERPRINT),
                                  json.dumps(fp.canonical(run.result_fingerprint(r.layer)), indent=1))
                runstate.mark_done(r.directory, summary)
                log(summary)
        timings["outputs"] = time.perf_counter() - clock
        timings["total"] = time.perf_counter() - start
        parallel.barrier("dissect-done")
    return results


__all__ = ["DissectConfig", "LayerResult", "dissect", "result_dir", "stage_activations", "stage_thresholds",
           "stage_iou", "layer_stats", "STATS_LAYOUT", "FinishedWithOtherSettingsError"]
