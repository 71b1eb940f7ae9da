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
  3. labels: unit x label intersections of the thresholded activations with the segmentations
     at every threshold level, read from the caches, from which the labelling rule names each
     unit; optionally compositional formulas (a pass per formula step) and open-vocabulary
     phrases from a CLIP model;
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
from typing import Callable

import numpy as np

from jaxdissect import parallel
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text
from jaxdissect.config_error import UserError
from jaxdissect.dissect import runstate
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.dissect.feeds import sample_ok
from jaxdissect.dissect.labelling import iou_curves, label_units, top_labels
from jaxdissect.dissect.outputs import write_layer_outputs
from jaxdissect.dissect.run import DissectRun, result_dir
from jaxdissect.dissect.stage_activations import stage_activations
from jaxdissect.dissect.stage_labels import label_levels, level_thresholds, stage_clip, stage_formulas, stage_iou
from jaxdissect.dissect.stage_store import STATS_LAYOUT, layer_stats, load_errors, read_json
from jaxdissect.dissect.stage_thresholds import stage_thresholds

RESULT_FINGERPRINT = "fingerprint.json"
CURVE_LABELS = 3  # labels whose IoU-versus-threshold curve the report draws per unit


class FinishedWithOtherSettingsError(UserError):
    """A results folder holds a finished dissection made with other settings."""



@dataclasses.dataclass
class LayerResult:
    """Everything the dissection of one layer produced."""

    layer: str
    directory: str
    thresholds: np.ndarray  # (units,) exact 1 - quantile quantiles of the upsampled activations
    iou: np.ndarray  # (labels, units) IoU at those thresholds
    best_label: np.ndarray  # (units,) label ids under the labelling rule; 0 ('-') for a dead unit
    best_iou: np.ndarray  # (units,) IoU of that label (at its chosen threshold)
    topk_indices: np.ndarray  # (units, k)
    label_names: tuple[str, ...]
    label_categories: tuple[str, ...]
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per stage of the run that made it
    rule: str = "iou"  # the labelling rule
    label_score: np.ndarray | None = None  # (units,) the rule's score (IoU, IQR or MI)
    label_threshold: np.ndarray | None = None  # (units,) the threshold the label was chosen at
    levels: np.ndarray | None = None  # (T,) quantile levels of the labelling tally
    curve_labels: np.ndarray | None = None  # (units, k) the labels whose curves are kept
    curves: np.ndarray | None = None  # (units, k, T) IoU of those labels at every level
    formulas: list[str] | None = None  # each unit's best formula ('-' for none), with --formula-length > 1
    formula_iou: np.ndarray | None = None  # (units,)
    clip: list[dict] | None = None  # per unit {'clip_label', 'clip_score', 'clip_top'}, with --label-source clip
    clip_header: dict | None = None

    def unit_labels(self) -> list[tuple[str, str, float]]:
        return [(self.label_names[l], self.label_categories[l], float(i)) for l, i in zip(self.best_label, self.best_iou)]


def _finished(run: DissectRun, layer: str) -> bool:
    """Whether `layer`'s folder holds a finished dissection with this run's settings; a finished
    one with other settings is refused unless `overwrite` (then its report files are removed)."""
    d = run.dirs[layer]
    if not runstate.is_done(d):
        return False
    stored = read_json(os.path.join(d, RESULT_FINGERPRINT))
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
    if os.path.isdir(image_dir) and read_json(marker) != expected:
        shutil.rmtree(image_dir)
    os.makedirs(image_dir, exist_ok=True)
    if not os.path.exists(marker):
        atomic_write_text(marker, json.dumps(expected))



def layer_result(run: DissectRun, layer: str, act, thresholds: np.ndarray, tally, formulas, clip,
                 timings: dict) -> LayerResult:
    """A layer's LayerResult from its stages' outputs, labelled by the run's rule."""
    levels, run_level = label_levels(run)
    labels = label_units(tally, run.config.label_rule, run_level)
    level = np.asarray(labels.level_index)
    thr = level_thresholds(act.quantiles, thresholds, levels, run_level)
    tops = np.asarray(top_labels(tally, CURVE_LABELS))
    _, top_idx = act.topk.result()
    result = LayerResult(layer, run.dirs[layer], thresholds, np.asarray(tally.at(run_level).iou()),
                         np.asarray(labels.label), np.asarray(labels.iou), np.asarray(top_idx), run.labels.names,
                         run.labels.categories, timings, rule=run.config.label_rule,
                         label_score=np.asarray(labels.score), label_threshold=thr[np.arange(len(level)), level],
                         levels=levels, curve_labels=tops, curves=np.asarray(iou_curves(tally, tops)))
    if formulas is not None:
        result.formulas = formulas.format(run.labels.names)
        result.formula_iou = np.asarray(formulas.iou)
    if clip is not None:
        result.clip = [clip.unit_json(u) for u in range(len(result.best_label))]
        result.clip_header = clip.header_json()
    return result


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

        def lap(name: str) -> None:
            nonlocal clock
            timings[name], clock = time.perf_counter() - clock, time.perf_counter()

        act, errors = stage_activations(run, say)
        ok_all = sample_ok(run, errors)
        lap("activations")
        thresholds = stage_thresholds(run, act, ok_all, say)
        lap("thresholds")
        tallies = stage_iou(run, act, thresholds, ok_all, say)
        lap("iou")
        formulas = stage_formulas(run, act, thresholds, tallies, ok_all, say) if config.formula_length > 1 else {}
        clip = stage_clip(run, say) if config.label_source == "clip" else {}
        lap("labels")
        results = [layer_result(run, l, act[l], thresholds[l], tallies[l], formulas.get(l), clip.get(l), timings)
                   for l in run.layers]
        elapsed = time.perf_counter() - start
        for r in results:
            if finished[r.layer]:
                if primary:
                    log(f"{run.model.name} {r.layer}: already dissected with these settings; results reused from "
                        f"{os.path.join(r.directory, 'report.html')} (--overwrite recomputes what changed)")
                continue
            if primary:
                _prepare_outputs(run, r.layer)
                write_layer_outputs(run, r, act[r.layer], load_errors(r.directory), say)
            labelled = r.best_iou > config.miniou
            concepts = len({r.label_names[i] for i in r.best_label[labelled]})
            summary = (f"{run.model.name} {r.layer}: {run.num_samples} samples, {int(labelled.sum())} of "
                       f"{len(labelled)} units labelled with IoU > {config.miniou} ({concepts} concepts"
                       f"{'' if config.label_rule == 'iou' else ', rule ' + config.label_rule}), "
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


__all__ = ["DissectConfig", "LayerResult", "dissect", "result_dir", "layer_stats", "STATS_LAYOUT",
           "FinishedWithOtherSettingsError"]
