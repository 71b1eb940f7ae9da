"""Stage 3, labels: the unit x label intersections at every threshold level (one pass over the
cached activations and segmentations), from which every labelling rule reads; optionally
compositional formulas (one more pass per formula length) and open-vocabulary phrases."""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text
from jaxdissect.dissect import steps
from jaxdissect.data import sources
from jaxdissect.dissect.clip_labels import HALF_WINDOWS, ClipLabels, window_crops, window_summaries
from jaxdissect.dissect.clip_labels import label_units as clip_label_units
from jaxdissect.dissect.feeds import agreed, assemble, checkpoint_policy, local_parts, local_positions, replay, use_cache
from jaxdissect.dissect.run import DissectRun
from jaxdissect.dissect.formulas import FormulaResult, formula_result_from_json, formula_result_json, search_formulas
from jaxdissect.dissect.stage_store import CLIP_FILE, FORMULAS_FILE, STAGE_IOU, load_stage, read_json, save_stage
from jaxdissect.passes import PassSpec, ResumablePass
from jaxdissect.stats import FormulaTally, IoUTally, MultiThresholdTally, UnitCounts, level_index, threshold_levels


def fill_segmentations(run: DissectRun, log: Callable[[str], None]) -> None:
    """Segment the samples the segmentation cache lacks (after pass 1 it lacks none, unless the
    cache was removed in between)."""
    cache = run.seg_cache()
    missing = ~agreed(cache.present())
    if not missing.any():
        return
    log(f"segmenting {int(missing.sum())} samples missing from the segmentation cache {cache.path}")
    rows, positions = local_positions(run)
    forward = run.forward_fn() if run.model.kind == "generator" else None
    segment = None if run.segmenter is None else jax.jit(lambda images: run.segmenter.segment(images, run.downsample))
    variables = parallel.replicate(run.mesh, run.model.variables)
    todo = [r for r in run.ranges() if missing[r].any()]
    for r, batch in zip(todo, sources.prefetch(run.source, todo, positions)):
        valid = positions < len(r)
        if segment is None:
            parts = [(np.arange(len(positions)), run.ground_truth(batch))]
        else:
            inputs = assemble(run, rows, batch.inputs)
            out = forward(variables, inputs)[0] if forward is not None else None
            parts = local_parts(segment(run.seg_images(inputs, out)), positions)
        for local, data in parts:
            keep = valid[local]
            cache.write(batch.indices[local][keep], data[keep]).result()
    parallel.barrier("segmentations-filled")


def label_levels(run: DissectRun) -> tuple[np.ndarray, int]:
    """The threshold levels (ascending quantile levels 1 - q) of the labelling tally, and the
    index of the run's own level 1 - quantile among them."""
    levels = threshold_levels(run.config.label_levels, include=run.config.quantile)
    return levels, level_index(levels, run.config.quantile)


def level_thresholds(sketch, exact: np.ndarray, levels: np.ndarray, run_level: int) -> np.ndarray:
    """(units, T) thresholds at every level: exact at the run's level, the sketch's estimates
    (within a bin of relative width 1/resolution) elsewhere, kept non-decreasing along T."""
    thr = np.array(sketch.quantiles(levels), np.float32)
    exact = np.asarray(exact, np.float32)
    thr[:, run_level] = exact
    thr[:, :run_level] = np.minimum(thr[:, :run_level], exact[:, None])
    thr[:, run_level + 1:] = np.maximum(thr[:, run_level + 1:], exact[:, None])
    return np.maximum.accumulate(thr, axis=1)


def stage_iou(run: DissectRun, act: Mapping[str, steps.ActivationStats], thresholds: Mapping[str, np.ndarray],
              ok_all: np.ndarray, log: Callable[[str], None]) -> dict[str, MultiThresholdTally]:
    """Per layer, the MultiThresholdTally of the thresholded activations with the segmentation
    at every labelling level (the IoUTally at the run's own threshold is its `.at(run_level)`)."""
    levels, run_level = label_levels(run)
    template = {l: {"multi": MultiThresholdTally.create(g.units, len(run.labels), len(levels)),
                    "iou": IoUTally.create(g.units, len(run.labels))} for l, g in run.geometry.items()}
    stored = load_stage(run, STAGE_IOU, template, run.iou_fingerprint)
    if stored is not None:
        return {l: s["multi"] for l, (s, _) in stored.items()}
    fill_segmentations(run, log)
    seg_cache = run.seg_cache()
    empty = {}
    for l, g in run.geometry.items():
        empty[l] = MultiThresholdTally.create(g.units, len(run.labels), len(levels))
        empty[l + "#nonfinite"] = UnitCounts.create(g.units)
    cached = use_cache(run)
    spec = PassSpec("iou", run.primary_dir, {l: fp.digest(run.iou_fingerprint(l)) for l in run.layers},
                    f"last pass: IoU with the {run.seg_name} segmentation at {len(levels)} threshold levels")
    p = ResumablePass(spec, empty, run.mesh, run.num_samples, run.batch_size, policy=checkpoint_policy(run.config),
                      progress=run.config.progress, log=log, check=_iou_nan_check(run))
    thr = parallel.replicate(run.mesh, {l: jnp.asarray(level_thresholds(act[l].quantiles, t, levels, run_level))
                                        for l, t in thresholds.items()})

    def per_device(state, thr, acts, seg, ok):
        new = {}
        for l, g in run.geometry.items():
            new[l] = state[l].update(g.upsample(acts[l]), thr[l], seg.astype(jnp.int32), ok)
            new[l + "#nonfinite"] = state[l + "#nonfinite"].update(steps.nonfinite_flags(acts[l]), ok)
        return new

    step = steps.sharded_pass(per_device, run.mesh, 3)
    forward = run.forward_fn()
    for _, (item, seg) in p.batches(replay(run, p.ranges, ok_all, cached, forward, extra=seg_cache.read)):
        p.state = step(p.state, thr, item.acts, seg, item.ok)
    merged, _ = p.finish()
    if parallel.is_primary():
        for l in run.layers:
            save_stage(run, STAGE_IOU, l, {"multi": merged[l], "iou": merged[l].at(run_level)}, run.iou_fingerprint(l),
                        levels=[float(v) for v in levels], run_level=run_level)
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


def stage_formulas(run: DissectRun, act: Mapping[str, steps.ActivationStats], thresholds: Mapping[str, np.ndarray],
                   tallies: Mapping[str, MultiThresholdTally], ok_all: np.ndarray,
                   log: Callable[[str], None]) -> dict[str, FormulaResult]:
    """Per layer, each unit's best formula of up to --formula-length concepts (beam search; one
    resumable pass over the caches per added concept), stored in stats/formulas.json."""
    c = run.config
    _, run_level = label_levels(run)
    out, todo = {}, []
    for layer in run.layers:
        saved = read_json(os.path.join(run.dirs[layer], "stats", FORMULAS_FILE))
        if saved is not None and saved.get("fingerprint") == fp.canonical(run.formulas_fingerprint(layer)):
            out[layer] = formula_result_from_json(saved)
        else:
            todo.append(layer)
    if not todo:
        return out
    seg_cache = run.seg_cache()
    cached = use_cache(run)
    forward = run.forward_fn()
    thr = parallel.replicate(run.mesh, {l: jnp.asarray(thresholds[l]) for l in todo})
    step_number = {}

    def per_device(state, replicated, acts, seg, ok):
        thr, beams = replicated
        return {l: state[l].update(run.geometry[l].upsample(acts[l]) > thr[l], seg.astype(jnp.int32), beams[l], ok)
                for l in state}

    step = steps.sharded_pass(per_device, run.mesh, 3)

    def counter(layer: str) -> Callable:
        def count(beam) -> FormulaTally:
            """One resumable pass over the caches counting `layer`'s formulas of this beam."""
            number = step_number[layer] = step_number.get(layer, 0) + 1
            empty = {layer: FormulaTally.create(run.geometry[layer].units, len(run.labels), c.beam_width)}
            spec = PassSpec(f"formulas{number}", run.primary_dir,
                            {"formulas": fp.digest(run.formulas_fingerprint(layer)),
                             "beam": fp.digest([np.asarray(x).tolist() for x in jax.tree.leaves(beam)])},
                            f"{layer} formulas: pass {number} of {c.formula_length - 1} (beam {c.beam_width})")
            p = ResumablePass(spec, empty, run.mesh, run.num_samples, run.batch_size, policy=checkpoint_policy(c),
                              progress=c.progress, log=log)
            rep = parallel.replicate(run.mesh, ({layer: thr[layer]}, {layer: beam}))
            for _, (item, seg) in p.batches(replay(run, p.ranges, ok_all, cached, forward, extra=seg_cache.read)):
                p.state = step(p.state, rep, {layer: item.acts[layer]}, seg, item.ok)
            merged, _ = p.finish()
            p.clear()
            return merged[layer]
        return count

    for layer in todo:
        result = search_formulas(tallies[layer].at(run_level), counter(layer), c.formula_length, c.beam_width)
        out[layer] = result
        if parallel.is_primary():
            atomic_write_text(os.path.join(run.dirs[layer], "stats", FORMULAS_FILE), json.dumps(
                {"fingerprint": fp.canonical(run.formulas_fingerprint(layer)), **formula_result_json(result)}))
    parallel.barrier("formulas-saved")
    return out


def stage_clip(run: DissectRun, log: Callable[[str], None]) -> dict[str, ClipLabels]:
    """Per layer, open-vocabulary labels (CLIP-Dissect) from each image's unit summary and the
    CLIP model's image-text similarities over the same images; stored in stats/clip.json."""
    c = run.config
    out, todo = {}, []
    for layer in run.layers:
        saved = read_json(os.path.join(run.dirs[layer], "stats", CLIP_FILE))
        if saved is not None and saved.get("fingerprint") == fp.canonical(run.clip_fingerprint(layer)):
            out[layer] = ClipLabels(tuple(saved["phrases"]), np.asarray(saved["scores"], np.float32), saved["method"],
                                    saved["clip_model"])
        else:
            todo.append(layer)
    if not todo:
        return out
    where = "image" if c.clip_probe == "images" else "window (3x3 windows of half the image's side per image)"
    log(f"open-vocabulary labels with {run.clip_model} ({c.clip_method}, per-{where} {c.clip_summary} of each unit)")
    def probe_images():
        """The dissection's images (a generator's generated ones), batch by batch, in sample order."""
        if run.model.kind == "generator":
            cache = run.image_cache()
            return (cache.read(r) for r in run.ranges())
        return (b.inputs for b in sources.prefetch_map(run.source.load, run.ranges()))

    for layer in todo:
        if c.clip_probe == "windows":
            images = (window_crops(np.asarray(b)) for b in probe_images())
            summaries = unit_window_summaries(run, layer, c.clip_summary)
        else:
            images, summaries = probe_images(), unit_summaries_from_cache(run, layer, c.clip_summary)
        labels = clip_label_units(images, summaries, concepts=c.concepts, clip_model=run.clip_model,
                                  method=c.clip_method)
        out[layer] = labels
        if parallel.is_primary():
            atomic_write_text(os.path.join(run.dirs[layer], "stats", CLIP_FILE), json.dumps(
                {"fingerprint": fp.canonical(run.clip_fingerprint(layer)), "phrases": list(labels.phrases),
                 "scores": np.asarray(labels.scores).tolist(), "method": labels.method,
                 "clip_model": labels.clip_model}))
    parallel.barrier("clip-saved")
    return out


def unit_summaries_from_cache(run: DissectRun, layer: str, mode: str) -> np.ndarray:
    """(N, units): each image's peak ('max', from the peaks cache) or spatial mean ('mean', from
    the activation cache, else by running the network) of every unit."""
    if mode == "max":
        return np.asarray(run.peaks_cache(layer).read(np.arange(run.num_samples)), np.float32)
    out = np.zeros((run.num_samples, run.geometry[layer].units), np.float32)
    for r, acts in spatial_activations(run, layer):
        out[r] = np.asarray(acts, np.float32).mean(axis=(1, 2))
    return out


def unit_window_summaries(run: DissectRun, layer: str, mode: str) -> np.ndarray:
    """(N * 9, units): every unit's peak ('max') or mean over each of HALF_WINDOWS of each image,
    image-major (the order of window_crops)."""
    out = np.zeros((run.num_samples * len(HALF_WINDOWS), run.geometry[layer].units), np.float32)
    k = len(HALF_WINDOWS)
    for r, acts in spatial_activations(run, layer):
        rows = (np.asarray(r)[:, None] * k + np.arange(k)).ravel()
        out[rows] = np.asarray(window_summaries(jnp.asarray(acts), HALF_WINDOWS, mode))
    return out


def spatial_activations(run: DissectRun, layer: str):
    """(range, NHWC activations of `layer`) batch by batch in sample order: from the activation
    cache when it is complete, else by running the network."""
    if run.config.activation_cache and run.activation_cache(layer).present().all():
        cache = run.activation_cache(layer)
        for r in run.ranges():
            yield r, cache.read(r)
        return
    forward = run.forward_fn()
    variables = run.model.variables
    for r in run.ranges():
        batch = sources.pad_batch(run.source.load(r), run.batch_size)
        _, acts, _ = forward(variables, batch.inputs)
        yield r, np.asarray(acts[layer])[:len(r)]
