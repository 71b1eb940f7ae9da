"""The dissection driver: model + data + segmenter -> per-unit thresholds, top images, IoU,
labels, thumbnails and reports, resumable and sharded over all local devices.

Passes (each fused over every requested layer, each checkpointed as it goes):
  1. quantiles of the upsampled activations and top-k of per-image peaks (one forward);
  2. unit x label IoU at the thresholds of pass 1 (forward + segmentation);
then thumbnails and the report. A finished pass is never recomputed: its states are in
`<result>/stats/` and are loaded instead.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdissect import parallel, stats
from jaxdissect.dissect import runstate, sources, steps
from jaxdissect.upsample import layer_geometry, upsampler

MAX_SKETCH_VALUES = 2**31  # QuantileSketch counts are int32 (JAX's default integers)
MODEL_ALIASES = {"alexnet": "alexnet_places", "vgg16": "vgg16_places", "resnet152": "resnet152_places"}


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    """What to dissect and how; the defaults dissect the embedded toy classifier."""

    model: str = "toy_classifier"
    dataset: str = "scenes"
    seg: str | None = None  # default: 'scenes' (exact labels) for scenes images, 'toy' for
    # toy_generator, 'netpqc' otherwise
    layers: tuple[str, ...] = ()  # default: the model's default layer
    quantile: float = 0.01
    miniou: float = 0.04
    thumbsize: int = 100
    outdir: str = "results"
    sample_size: int | None = None  # default: 1000 scenes, 10,000 z, the whole folder
    batch_size: int = 10
    devices: int | None = None
    topk: int = 100
    strip_images: int = 5
    resolution: int = 128
    weights: str | None = None
    checkpoint_seconds: float = 120.0  # time between checkpoints of a pass
    checkpoint_every: int | None = None  # or: batches between checkpoints
    progress: bool = True


@dataclasses.dataclass
class LayerResult:
    """Everything the dissection of one layer produced."""

    layer: str
    directory: str
    thresholds: np.ndarray  # (units,)
    iou: np.ndarray  # (labels, units)
    best_label: np.ndarray  # (units,) label ids
    best_iou: np.ndarray  # (units,)
    topk_indices: np.ndarray  # (units, k)
    label_names: tuple[str, ...]
    label_categories: tuple[str, ...]

    def unit_labels(self) -> list[tuple[str, str, float]]:
        return [(self.label_names[l], self.label_categories[l], float(i)) for l, i in zip(self.best_label, self.best_iou)]


# ---------------------------------------------------------------------------------------------
# Setting up: model, data, segmenter, names


def resolve_model_name(config: DissectConfig) -> str:
    name = MODEL_ALIASES.get(config.model, config.model)
    if name == "progan":
        name = f"proggan_{config.dataset}"
    return name


def result_dir(config: DissectConfig, model_name: str, layer: str, seg: str) -> str:
    """The original's naming: <model>-<dataset>-<seg>-<layer>[-<quantile*1000>][-t<thumbsize>]."""
    short = model_name[: -len("_places")] if model_name.endswith("_places") else model_name
    dataset = dataset_short_name(config.dataset)
    if short.startswith("proggan_"):
        short, dataset = "progan", short[len("proggan_"):]
    layer_short = layer[len("features."):] if layer.startswith("features.") else layer
    name = f"{short}-{dataset}-{seg}-{layer_short}"
    if config.quantile != 0.005:
        name += "-%g" % (config.quantile * 1000)
    if config.thumbsize != 100:
        name += f"-t{config.thumbsize}"
    return os.path.join(config.outdir, name)


def dataset_short_name(dataset: str) -> str:
    """The dataset's part of a results folder name: a folder's base name, a tfds dataset's name
    (with its split unless 'validation'), or the name given."""
    from jaxdissect.data.tfds_images import parse_tfds_name

    tfds_name = parse_tfds_name(dataset)
    if tfds_name is not None:
        name, split = tfds_name
        return name if split == "validation" else f"{name}-{split}"
    return os.path.basename(os.path.normpath(dataset)) if os.path.sep in dataset else dataset


def resolve_layers(model, requested: Sequence[str]) -> tuple[str, ...]:
    """Requested layer names (the original's short VGG names like 'conv5_3' accepted)."""
    from jaxdissect.capture import valid_layer_names

    if not requested:
        return (model.default_layer,)
    valid = set(valid_layer_names(model))
    out = []
    for name in requested:
        if name not in valid and f"features.{name}" in valid:
            name = f"features.{name}"
        if name not in valid:
            raise ValueError(f"unknown layer {name!r} for {model.name}; dissectable layers: {', '.join(model.layer_names)}")
        out.append(name)
    return tuple(out)


def default_seg(config: DissectConfig, model) -> str:
    if config.seg:
        return config.seg
    if config.dataset == "scenes" and model.kind == "classifier":
        return "scenes"
    return "toy" if model.name.startswith("toy_") else "netpqc"


def make_source(config: DissectConfig, model):
    """The samples: z for generators, the scenes world, an image folder / Places365 val, or a
    prepared tfds dataset ('tfds:places365_small')."""
    if model.kind == "generator":
        return sources.ZSource(config.sample_size or 10_000, int(model.z_dim))
    if config.dataset == "scenes":
        return sources.ScenesSource(size=config.sample_size or 1000, image_size=model.input_size[0])
    from jaxdissect.data.tfds_images import parse_tfds_name

    tfds_name = parse_tfds_name(config.dataset)
    if tfds_name is not None:
        return sources.TfdsSource(*tfds_name, crop=model.input_size[0], size=config.sample_size)
    root = config.dataset
    if config.dataset == "places":
        from jaxdissect.data.places import ensure_places_val

        root = ensure_places_val()
    return sources.FolderSource(root, crop=model.input_size[0], size=config.sample_size)


def make_segmenter(seg: str, source):
    """(segmenter or None for ground truth, labels)."""
    if seg == "scenes":
        if not isinstance(source, sources.ScenesSource):
            raise ValueError("--seg scenes (exact labels) needs --dataset scenes; use --seg toy or a segmenter")
        return None, source.labels
    if seg == "toy":
        from jaxdissect.segment.toy import ToySegmenter

        s = ToySegmenter()
        return s, s.labels
    from jaxdissect.segment.merge import load_segmenter

    s = load_segmenter(seg)
    return s, s.labels


# ---------------------------------------------------------------------------------------------
# The passes


def _capture_function(model, layers):
    """(variables, x) -> (output, {layer: activations}), traceable inside other jitted code."""
    from jaxdissect.capture import capture_fn

    run = capture_fn(model.module, tuple(layers))
    return lambda variables, x: run(variables, x, {})


class _Setup:
    """Everything the passes share, built once."""

    def __init__(self, config: DissectConfig, model=None, source=None, segmenter=None):
        from jaxdissect.models import load

        self.config = config
        self.model = model if model is not None else load(resolve_model_name(config), config.weights)
        if self.model.kind not in ("classifier", "generator"):
            raise ValueError(f"{self.model.name} is a {self.model.kind}; the dissection takes a classifier or a "
                             "generator (segmenters are given with --seg)")
        self.layers = resolve_layers(self.model, config.layers)
        self.seg_name = default_seg(config, self.model)
        self.source = source if source is not None else make_source(config, self.model)
        if segmenter is not None:
            self.segmenter, self.labels = segmenter, segmenter.labels
        else:
            self.segmenter, self.labels = make_segmenter(self.seg_name, self.source)
        self.mesh = parallel.make_mesh(config.devices)
        self.batch_size = parallel.padded_batch_size(config.batch_size, self.mesh)
        self.ranges = sources.batch_ranges(len(self.source), self.batch_size)
        self.forward = _capture_function(self.model, self.layers)
        self.dirs = {layer: result_dir(config, self.model.name, layer, self.seg_name) for layer in self.layers}
        self.variables = parallel.replicate(self.mesh, self.model.variables)
        self._shapes()
        values = len(self.source) * self.seg_hw[0] * self.seg_hw[1]
        if values >= MAX_SKETCH_VALUES:
            raise ValueError(f"{len(self.source)} samples x {self.seg_hw[0]}x{self.seg_hw[1]} upsampled pixels = {values} "
                             f"values per unit, more than the quantile sketch counts ({MAX_SKETCH_VALUES - 1}, int32); "
                             "dissect a subset (--sample-size)")

    def _shapes(self):
        m = self.model
        if m.kind == "generator":
            example = jax.ShapeDtypeStruct((1, int(m.z_dim)), jnp.float32)
        else:
            example = jax.ShapeDtypeStruct((1, *m.input_size, 3), jnp.float32)
        out, acts = jax.eval_shape(self.forward, m.variables, example)
        image_hw = tuple(out.shape[1:3]) if m.kind == "generator" else tuple(m.input_size)
        self.image_hw = image_hw
        self.downsample = 4 if image_hw[0] >= 224 else 2
        self.seg_hw = (image_hw[0] // self.downsample, image_hw[1] // self.downsample)
        self.units = {layer: acts[layer].shape[-1] for layer in self.layers}
        self.upsamplers = {}
        for layer in self.layers:
            data_hw = tuple(acts[layer].shape[1:3])
            geometry = layer_geometry(m.name, layer)
            self.upsamplers[layer] = upsampler(self.seg_hw, data_hw, image_hw if geometry else None, geometry)

    def model_input(self, inputs):
        """uint8 images -> normalized float NHWC; z passes through."""
        if self.model.kind == "generator":
            return inputs
        norm = self.model.normalization
        x = inputs.astype(jnp.float32) / 255.0
        return (x - jnp.asarray(norm["mean"], jnp.float32)) / jnp.asarray(norm["std"], jnp.float32)

    def seg_images(self, inputs, output):
        """The images the segmenter sees, NHWC in [-1, 1]: the generated ones, or the inputs."""
        if self.model.kind == "generator":
            return output
        return inputs.astype(jnp.float32) / 127.5 - 1.0

    def ground_truth(self, batch: sources.Batch) -> np.ndarray:
        from jaxdissect.segment.toy import subsample_labels

        return np.ascontiguousarray(subsample_labels(batch.segmentation, self.downsample))


def _progress(config, total, desc):
    return tqdm(total=total, desc=desc, unit="img", disable=not (config.progress and parallel.is_primary()),
                dynamic_ncols=True)


def _save_checkpoint(setup: _Setup, name: str, merged: dict, progress: dict) -> None:
    """Process 0 writes the merged states; every process waits for it."""
    if parallel.is_primary():
        runstate.save_pass(setup.dirs[setup.layers[0]], name, merged, progress)
    parallel.barrier(f"checkpoint-{name}-{progress['batches_done']}")


def _run_pass(setup: _Setup, name: str, per_device, empty: dict, replicated: Any, with_truth: bool,
              fingerprint: dict, desc: str) -> tuple[dict, dict]:
    """Run one pass over all batches with resume; returns (merged states per key, skipped errors).

    Every process loads only the rows of each global batch that its own devices hold; the
    per-device states merge with collectives at checkpoints and at the end."""
    cfg, primary, mesh = setup.config, setup.dirs[setup.layers[0]], setup.mesh
    fingerprint = {**fingerprint, "sample_size": len(setup.source), "batch_size": setup.batch_size}
    start, errors = 0, {}
    resumed = runstate.load_pass(primary, name, empty)
    states = dict(empty)
    if resumed is not None:
        saved, progress = resumed
        if progress.get("fingerprint") == fingerprint:
            states, start = saved, int(progress["batches_done"])
            errors = {int(k): v for k, v in progress.get("errors", {}).items()}
    stacked = {k: steps.place_first(states[k], empty[k], mesh) for k in empty}
    step = steps.sharded_pass(per_device, mesh, 4 if with_truth else 3)
    rows = parallel.local_rows(mesh, setup.batch_size)
    positions = np.concatenate([r for _, r in rows])
    bar = _progress(cfg, len(setup.source), desc)
    bar.update(sum(len(r) for r in setup.ranges[:start]))
    last_save = time.monotonic()
    for b, batch in enumerate(sources.prefetch(setup.source, setup.ranges[start:], positions), start):
        errors.update(batch.errors)
        args = [batch.inputs, batch.indices, batch.ok]
        if with_truth:
            args.append(setup.ground_truth(batch))
        args = [parallel.assemble(mesh, rows, a, setup.batch_size) for a in args]
        stacked = step(stacked, replicated, *args)
        bar.update(int(len(setup.ranges[b])))
        if b + 1 < len(setup.ranges) and _checkpoint_due(cfg, b + 1, last_save):
            last_save = time.monotonic()
            merged = parallel.to_host(steps.merge_over_mesh(stacked, mesh))
            _save_checkpoint(setup, name, merged, {"batches_done": b + 1, "fingerprint": fingerprint,
                                                  "errors": _gather_errors(errors, f"{name}-{b}")})
    bar.close()
    return parallel.to_host(steps.merge_over_mesh(stacked, mesh)), _gather_errors(errors, f"{name}-end")


def _checkpoint_due(cfg: DissectConfig, batches_done: int, last_save: float) -> bool:
    """Every `checkpoint_every` batches if set, else every `checkpoint_seconds`; the decision
    must be the same on every process, so the time is process 0's."""
    if cfg.checkpoint_every:
        return batches_done % cfg.checkpoint_every == 0
    return parallel.agree(time.monotonic() - last_save >= cfg.checkpoint_seconds)


def _gather_errors(errors: dict, tag: str) -> dict:
    """Every process's unreadable-sample messages, on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return {str(k): v for k, v in errors.items()}
    import json

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


def _stats_path(setup, layer, what):
    return os.path.join(setup.dirs[layer], "stats", what)


def _have_stats(setup, what: Sequence[str]) -> bool:
    return all(os.path.exists(_stats_path(setup, l, w)) for l in setup.layers for w in what)


def pass_activation_stats(setup: _Setup) -> dict:
    """Pass 1: per layer, (QuantileSketch, TopK); loaded when already computed."""
    if _have_stats(setup, ("quantiles", "topk")):
        return {l: (stats.load(_stats_path(setup, l, "quantiles")), stats.load(_stats_path(setup, l, "topk")))
                for l in setup.layers}
    cfg = setup.config

    def per_device(state, variables, inputs, indices, ok):
        _, acts = setup.forward(variables, setup.model_input(inputs))
        return {l: steps.update_activation_stats(state[l], acts[l], setup.upsamplers[l], indices, ok)
                for l in setup.layers}

    empty = {l: steps.ActivationStats.create(setup.units[l], cfg.topk, cfg.resolution) for l in setup.layers}
    fingerprint = {"pass": 1, "layers": list(setup.layers), "resolution": cfg.resolution, "topk": cfg.topk}
    merged, errors = _run_pass(setup, "pass1", per_device, empty, setup.variables, False, fingerprint,
                               "pass 1/2: quantiles, top-k")
    if parallel.is_primary():
        for l in setup.layers:
            stats.save(_stats_path(setup, l, "topk"), merged[l].topk)
            stats.save(_stats_path(setup, l, "quantiles"), merged[l].quantiles)
        _save_errors(setup, errors)
        runstate.clear_pass(setup.dirs[setup.layers[0]], "pass1")
    parallel.barrier("pass1-saved")
    return {l: (merged[l].quantiles, merged[l].topk) for l in setup.layers}


def pass_iou(setup: _Setup, thresholds: dict) -> dict:
    """Pass 2: per layer, IoUTally of the thresholded activations with the segmentation."""
    if _have_stats(setup, ("iou",)):
        return {l: stats.load(_stats_path(setup, l, "iou")) for l in setup.layers}
    truth = setup.segmenter is None

    def per_device(state, replicated, inputs, indices, ok, *gt):
        variables, thr = replicated
        out, acts = setup.forward(variables, setup.model_input(inputs))
        seg = gt[0] if truth else setup.segmenter.segment(setup.seg_images(inputs, out), setup.downsample)
        return {l: steps.update_iou(state[l], acts[l], setup.upsamplers[l], thr[l], seg, ok) for l in setup.layers}

    num_labels = len(setup.labels)
    empty = {l: stats.IoUTally.create(setup.units[l], num_labels) for l in setup.layers}
    thr = {l: jnp.asarray(t) for l, t in thresholds.items()}
    fingerprint = {"pass": 2, "layers": list(setup.layers), "seg": setup.seg_name,
                   "thresholds": {l: float(np.asarray(t, np.float64).sum()) for l, t in thresholds.items()}}
    merged, _ = _run_pass(setup, "pass2", per_device, empty, parallel.replicate(setup.mesh, (setup.model.variables, thr)),
                          truth, fingerprint, "pass 2/2: IoU")
    if parallel.is_primary():
        for l in setup.layers:
            stats.save(_stats_path(setup, l, "iou"), merged[l])
        runstate.clear_pass(setup.dirs[setup.layers[0]], "pass2")
    parallel.barrier("pass2-saved")
    return merged


def _save_errors(setup, errors: dict) -> None:
    import json

    from jaxdissect.atomic import atomic_write_text

    for l in setup.layers:
        atomic_write_text(os.path.join(setup.dirs[l], "skipped_images.json"),
                          json.dumps(dict(sorted(errors.items(), key=lambda kv: int(kv[0]))), indent=1))


def _load_errors(directory) -> dict:
    import json

    try:
        with open(os.path.join(directory, "skipped_images.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


# ---------------------------------------------------------------------------------------------
# The driver


def dissect(config: DissectConfig = DissectConfig(), *, model=None, source=None,
            segmenter=None) -> list[LayerResult]:
    """Dissect the configured layers; returns one LayerResult per layer (reports written).

    `model` (a LoadedModel), `source` (random access batches, see `sources`) and `segmenter`
    (a Segmenter) replace what the config names, for dissecting your own networks and data."""
    from contextlib import ExitStack

    from jaxdissect.dissect.outputs import write_layer_outputs

    start = time.perf_counter()
    setup = _Setup(config, model, source, segmenter)
    pending = [l for l in setup.layers if not runstate.is_done(setup.dirs[l])]
    primary = parallel.is_primary()
    with ExitStack() as stack:
        if primary:
            for l in setup.layers:
                stack.enter_context(runstate.ExclusiveRun(setup.dirs[l]))
        parallel.barrier("dissect-locked")
        act_stats = pass_activation_stats(setup)
        thresholds = {l: np.asarray(q.quantiles([1.0 - config.quantile])[:, 0]) for l, (q, _) in act_stats.items()}
        for l, (q, _) in act_stats.items():
            if int(np.asarray(q.nan_count).sum()):
                raise FloatingPointError(f"layer {l}: {int(np.asarray(q.nan_count).sum())} NaN activations "
                                         f"(units {np.flatnonzero(np.asarray(q.nan_count))[:10].tolist()}); "
                                         f"the statistics so far are saved in {setup.dirs[l]}/stats")
        ious = pass_iou(setup, thresholds)
        results = []
        for l in setup.layers:
            iou = np.asarray(ious[l].iou())
            best, best_iou = (np.asarray(a) for a in ious[l].best_label())
            _, top_idx = act_stats[l][1].result()
            result = LayerResult(l, setup.dirs[l], thresholds[l], iou, best, best_iou, np.asarray(top_idx),
                                 setup.labels.names, setup.labels.categories)
            if l in pending and primary:
                write_layer_outputs(setup, result, _load_errors(setup.dirs[l]))
            results.append(result)
        elapsed = time.perf_counter() - start
        for r in results:
            labelled = r.best_iou > config.miniou
            concepts = len({r.label_names[i] for i in r.best_label[labelled]})
            summary = (f"{setup.model.name} {r.layer}: {len(setup.source)} samples, {int(labelled.sum())} of "
                       f"{len(labelled)} units labelled with IoU > {config.miniou} ({concepts} concepts), "
                       f"{elapsed:.0f} s -> {os.path.join(r.directory, 'report.html')}")
            if r.layer in pending and primary:
                runstate.mark_done(r.directory, summary)
            if config.progress and primary:
                print(summary)
        parallel.barrier("dissect-done")
    return results
