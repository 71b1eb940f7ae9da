"""Shape versus texture (the original's shapebias experiment): do a unit's firing regions stay
put when an image keeps its shapes and layout but changes its surfaces?

Each layer is dissected on image pairs (a scene and its stylized twin, or a photo and its
stylized copy): thresholds on each set (the top `quantile` of the upsampled activations), the
unit's label on each set (IoU with that set's segmentation), and the agreement of the unit's two
masks over the pairs (`MaskAgreement`: IoU of its thresholded masks, at the segmentation's
resolution, where the labels are measured too). Units labelled with shapes (objects, parts) are
compared with units labelled with surfaces (materials, colours).

Pure per-batch steps (`update_pair_stats`, `update_pair_tallies`) and readouts
(`summarize_layer`) compose with any pass engine; `run_experiment` is a resumable, sharded driver.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect import checkpoints, parallel
from jaxdissect.dissect import runstate, steps
from jaxdissect.experiments.label_groups import SHAPE_CATEGORIES, SURFACE_CATEGORIES, group_of  # noqa: F401
from jaxdissect.models.registry import normalize_pixels
from jaxdissect.passes import CheckpointPolicy, PassSpec, StageStore, run_over_source
from jaxdissect.segment.toy import subsample_labels
from jaxdissect.stats import IoUTally, MaskAgreement, QuantileSketch, TopK
from jaxdissect.upsample import Upsampler



# ---------------------------------------------------------------------------------------------
# Pure per-batch steps


@struct.dataclass
class PairStats:
    """Pass 1 of one layer: quantile sketches of each set's upsampled activations, and the top
    pairs by the unit's peak on the second (stylized) images."""

    first: QuantileSketch
    second: QuantileSketch
    second_topk: TopK

    @classmethod
    def create(cls, num_units: int, k: int = 20, resolution: int = 128) -> "PairStats":
        return cls(QuantileSketch.create(num_units, resolution), QuantileSketch.create(num_units, resolution),
                   TopK.create(num_units, k))

    def merge(self, other: "PairStats") -> "PairStats":
        return PairStats(self.first.merge(other.first), self.second.merge(other.second),
                         self.second_topk.merge(other.second_topk))

    def all_reduce(self, axis_name) -> "PairStats":
        return PairStats(self.first.all_reduce(axis_name), self.second.all_reduce(axis_name),
                         self.second_topk.all_reduce(axis_name))


def update_pair_stats(state: PairStats, first: jax.Array, second: jax.Array, upsample: Upsampler,
                      indices: jax.Array, mask: jax.Array) -> PairStats:
    """Add raw activations (N, h, w, units) of the first images and of their partners."""
    n, units = first.shape[0], first.shape[-1]
    up_a, up_b = upsample(first), upsample(second)
    pixels = up_a.shape[1] * up_a.shape[2]
    row_mask = jnp.repeat(mask, pixels)
    peak_b = second.reshape(n, -1, units).max(axis=1)
    return PairStats(state.first.update(up_a.reshape(n * pixels, units), row_mask),
                     state.second.update(up_b.reshape(n * pixels, units), row_mask),
                     state.second_topk.update(peak_b, indices, mask))


@struct.dataclass
class PairTallies:
    """Pass 2 of one layer: unit x label IoU on each set, and the agreement of the unit masks."""

    first_iou: IoUTally
    second_iou: IoUTally
    agreement: MaskAgreement

    @classmethod
    def create(cls, num_units: int, num_labels: int) -> "PairTallies":
        return cls(IoUTally.create(num_units, num_labels), IoUTally.create(num_units, num_labels),
                   MaskAgreement.create(num_units))

    def merge(self, other: "PairTallies") -> "PairTallies":
        return PairTallies(self.first_iou.merge(other.first_iou), self.second_iou.merge(other.second_iou),
                           self.agreement.merge(other.agreement))

    def all_reduce(self, axis_name) -> "PairTallies":
        return PairTallies(self.first_iou.all_reduce(axis_name), self.second_iou.all_reduce(axis_name),
                           self.agreement.all_reduce(axis_name))


def update_pair_tallies(state: PairTallies, first: jax.Array, second: jax.Array, upsample: Upsampler,
                        first_thresholds: jax.Array, second_thresholds: jax.Array, first_seg: jax.Array,
                        second_seg: jax.Array, mask: jax.Array) -> PairTallies:
    """Add a batch of pairs: raw activations (N, h, w, units) of each side, each side's
    thresholds (units,) and segmentation (N, L, H, W) at the upsampled size."""
    on_a = steps.unit_indicator(first, upsample, first_thresholds)
    on_b = steps.unit_indicator(second, upsample, second_thresholds)
    return PairTallies(state.first_iou.update(on_a, first_seg, mask), state.second_iou.update(on_b, second_seg, mask),
                       state.agreement.update(on_a, on_b, mask))


# ---------------------------------------------------------------------------------------------
# Readouts


def _stat(values: np.ndarray) -> dict:
    v = values[~np.isnan(values)]
    return {"units": int(v.size), "mean": float(v.mean()) if v.size else float("nan"),
            "median": float(np.median(v)) if v.size else float("nan"),
            "se": float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else (0.0 if v.size else float("nan"))}


def summarize_layer(agreement: np.ndarray, first_label: np.ndarray, first_iou: np.ndarray, second_label: np.ndarray,
                    second_iou: np.ndarray, categories: Sequence[str], miniou: float = 0.04,
                    chance: np.ndarray | None = None) -> dict:
    """Per group (shape = object/part, surface = material/color, by the unit's label on the first
    set, units with IoU > miniou) the agreement's mean/median/SE, the gap shape - surface, how
    many units keep their label on the second set (same label with IoU > miniou there), and the
    mean agreement independent masks of the units' coverage would have (`chance`, per unit)."""
    agreement = np.asarray(agreement, np.float64)
    chance = np.full(agreement.shape, np.nan) if chance is None else np.asarray(chance, np.float64)
    first_label, second_label = np.asarray(first_label), np.asarray(second_label)
    labelled = np.asarray(first_iou) > miniou
    group = np.asarray([group_of(categories[int(l)]) for l in first_label], object)
    survives = labelled & (second_label == first_label) & (np.asarray(second_iou) > miniou)
    out: dict[str, Any] = {"all": _stat(agreement)}
    for g in ("shape", "surface"):
        sel = labelled & (group == g)
        out[g] = {**_stat(agreement[sel]), "label_kept": int(survives[sel].sum()),
                  "label_kept_fraction": float(survives[sel].mean()) if sel.any() else float("nan"),
                  "chance_mean": _stat(chance[sel])["mean"]}
    for cat in (*SHAPE_CATEGORIES, *SURFACE_CATEGORIES):
        sel = labelled & (np.asarray([categories[int(l)] for l in first_label]) == cat)
        out[cat] = {**_stat(agreement[sel]), "label_kept": int(survives[sel].sum())}
    out["gap"] = out["shape"]["mean"] - out["surface"]["mean"]
    out["unlabelled"] = _stat(agreement[~labelled])
    return out


# ---------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass(frozen=True)
class ShapeBiasConfig:
    """What to compare; the defaults run the toy classifier on scenes and their stylized twins."""

    model: str = "toy_classifier"
    dataset: str = "scenes"  # 'scenes' or a folder of images
    paired_dataset: str | None = None  # 'scenes-stylized' (default for scenes) or the folder of the other versions
    pattern: str | None = None  # pairing regex for folders (default: strip '-stylized-...')
    layers: tuple[str, ...] = ()  # default: every conv layer
    seg: str | None = None  # default: the scenes' exact labels; a segmenter name for folders
    quantile: float = 0.01
    miniou: float = 0.04
    sample_size: int | None = None  # default: 1000 scene pairs / every pair of the folders
    batch_size: int = 20
    topk: int = 20
    strip_images: int = 5
    thumbsize: int = 100
    resolution: int = 128
    devices: int | None = None
    outdir: str = "results"
    weights: str | None = None
    checkpoint_every: int = 10  # batches between checkpoints of a pass
    progress: bool = True


@dataclasses.dataclass
class LayerShapeBias:
    """Everything measured on one layer."""

    layer: str
    thresholds: tuple[np.ndarray, np.ndarray]  # (units,) per set
    agreement: np.ndarray  # (units,) IoU of the unit's masks on paired images (NaN: never on)
    chance: np.ndarray  # (units,) agreement of independent masks of the same coverage
    both_fraction: np.ndarray  # (units,) fraction of pixels where both masks are on
    labels: tuple[np.ndarray, np.ndarray]  # (units,) best label id per set
    ious: tuple[np.ndarray, np.ndarray]  # (units,) its IoU per set
    iou_tables: tuple[np.ndarray, np.ndarray]  # (labels, units) per set
    topk_indices: np.ndarray  # (units, k) top pairs by the peak on the second set
    summary: dict


@dataclasses.dataclass
class ShapeBiasResult:
    directory: str
    model: str
    dataset: str
    paired_dataset: str
    label_names: tuple[str, ...]
    label_categories: tuple[str, ...]
    samples: int
    layers: list[LayerShapeBias]


def default_layers(model) -> tuple[str, ...]:
    """Every conv layer of the model (names whose last part starts with 'conv')."""
    layers = tuple(l for l in model.layer_names if l.rsplit(".", 1)[-1].startswith("conv"))
    return layers or (model.default_layer,)


def paired_name(config: ShapeBiasConfig) -> str:
    """The second dataset: as given, or the stylized scenes for the scenes."""
    from jaxdissect.data.paired import STYLIZED_SCENES

    if config.dataset in STYLIZED_SCENES:
        raise ValueError(f"give the original world first: --dataset scenes --paired-dataset {config.dataset}")
    if config.paired_dataset:
        return config.paired_dataset
    if config.dataset == "scenes":
        return "scenes-stylized"
    raise ValueError(f"--dataset {config.dataset} needs --paired-dataset (the folder of its other versions)")


def experiment_dir(config: ShapeBiasConfig, model_name: str) -> str:
    """<outdir>/<model>-[<dataset>-]<paired dataset>-shapebias[-<quantile*1000>] (the dataset's
    name left out when the paired one starts with it, e.g. toy_classifier-scenes-stylized-shapebias)."""
    from jaxdissect.dissect.run import dataset_short_name

    short = model_name[: -len("_places")] if model_name.endswith("_places") else model_name
    first, second = dataset_short_name(config.dataset), dataset_short_name(paired_name(config))
    name = f"{short}-{second if second.startswith(first) else first + '-' + second}-shapebias"
    if config.quantile != 0.01:
        name += "-%g" % (config.quantile * 1000)
    return os.path.join(config.outdir, name)


class _Setup:
    """Model, paired source, label source, shapes and upsamplers, built once."""

    def __init__(self, config: ShapeBiasConfig, model=None, source=None, segmenter=None):
        from jaxdissect.capture import capture_fn
        from jaxdissect.data.paired import paired_source
        from jaxdissect.dissect.run import resolve_layers
        from jaxdissect.models import load
        from jaxdissect.upsample import layer_geometry, upsampler

        self.config = config
        self.model = model if model is not None else load(config.model, config.weights)
        if self.model.kind != "classifier":
            raise ValueError(f"{self.model.name} is a {self.model.kind}; the shape-bias experiment takes a classifier")
        self.layers = resolve_layers(self.model, config.layers or default_layers(self.model))
        size = int(self.model.input_size[0])
        self.paired = paired_name(config) if source is None else (config.paired_dataset or "paired")
        self.source = source if source is not None else paired_source(
            config.dataset, self.paired, crop=size, size=config.sample_size, pattern=config.pattern,
            image_size=size)
        self.truth = bool(segmenter is None and config.seg in (None, "scenes")
                          and getattr(self.source, "labels", None) is not None)
        if segmenter is not None:
            self.segmenter, self.labels = segmenter, segmenter.labels
        elif self.truth:
            self.segmenter, self.labels = None, self.source.labels
        else:
            self.segmenter = _load_segmenter(config.seg or "netpqc")
            self.labels = self.segmenter.labels
        self.mesh = parallel.make_mesh(config.devices)
        self.batch_size = parallel.padded_batch_size(config.batch_size, self.mesh)
        run = capture_fn(self.model.module, tuple(self.layers))
        self.forward = lambda variables, x: run(variables, x, {})
        self.directory = experiment_dir(dataclasses.replace(config, paired_dataset=self.paired), self.model.name)
        image_hw = tuple(self.model.input_size)
        self.downsample = 4 if image_hw[0] >= 224 else 2
        self.seg_hw = (image_hw[0] // self.downsample, image_hw[1] // self.downsample)
        _, acts = jax.eval_shape(self.forward, self.model.variables,
                                 jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32))
        self.units = {l: int(acts[l].shape[-1]) for l in self.layers}
        self.upsamplers = {}
        for l in self.layers:
            geometry = layer_geometry(self.model.name, l)
            self.upsamplers[l] = upsampler(self.seg_hw, tuple(acts[l].shape[1:3]), image_hw if geometry else None,
                                           geometry)
        values = len(self.source) * self.seg_hw[0] * self.seg_hw[1]
        if values >= 2**31:
            raise ValueError(f"{len(self.source)} pairs x {self.seg_hw[0]}x{self.seg_hw[1]} pixels = {values} values "
                             "per unit, more than the int32 counts hold; use fewer pairs (--sample-size)")

    def model_input(self, images):
        return normalize_pixels(images.astype(jnp.float32) / 255.0, self.model.normalization)

    def activations(self, variables, first, second):
        """Both sides in one forward: ({layer: first acts}, {layer: second acts})."""
        n = first.shape[0]
        _, acts = self.forward(variables, self.model_input(jnp.concatenate([first, second])))
        return {l: a[:n] for l, a in acts.items()}, {l: a[n:] for l, a in acts.items()}

    def segment(self, images):
        return self.segmenter.segment(images.astype(jnp.float32) / 127.5 - 1.0, self.downsample)


def _load_segmenter(seg: str):
    if seg == "toy":
        from jaxdissect.segment.toy import ToySegmenter

        return ToySegmenter()
    from jaxdissect.segment.merge import load_segmenter

    return load_segmenter(seg)


def _fingerprint(setup: _Setup, name: str, **extra) -> dict:
    from jaxdissect.experiments.mask_sweep import stage_fingerprint

    cfg = setup.config
    return {"pass": name, "model": stage_fingerprint(setup.model, setup.layers[0]), "layers": list(setup.layers),
            "dataset": cfg.dataset, "paired": setup.paired, "pattern": cfg.pattern, "samples": len(setup.source),
            **extra}


def _pass(setup: _Setup, name: str, per_device: Callable, empty: dict, replicated: Any, with_truth: bool,
          fingerprint: dict, desc: str) -> dict:
    """One pass over every pair through the resumable pass engine (stored with its fingerprint
    when finished, loaded instead when already stored); each process loads only its rows."""
    store = StageStore(setup.directory)
    done = store.load(name, fingerprint, empty)
    if done is not None:
        return done

    def batch_args(pair):
        first, second = pair
        args = [first.inputs, second.inputs, first.indices, first.ok & second.ok]
        if with_truth:
            args += [subsample_labels(b.segmentation, setup.downsample) for b in (first, second)]
        return [np.ascontiguousarray(a) for a in args]

    cfg = setup.config
    spec = PassSpec(name, setup.directory, fingerprint, desc)
    step = steps.sharded_pass(per_device, setup.mesh, 6 if with_truth else 4)
    merged = run_over_source(spec, empty, setup.mesh, setup.source, setup.batch_size, step, replicated, batch_args,
                             policy=CheckpointPolicy(every=cfg.checkpoint_every or None), progress=cfg.progress)
    if parallel.is_primary():
        store.save(name, fingerprint, merged)
        checkpoints.remove(spec.checkpoint_dir)
    parallel.barrier(f"shapebias-{name}-saved")
    return merged


def pass_pair_stats(setup: _Setup) -> dict:
    """Pass 1: per layer, PairStats (thresholds on each set, top stylized pairs)."""
    cfg = setup.config
    empty = {l: PairStats.create(setup.units[l], cfg.topk, cfg.resolution) for l in setup.layers}
    fp = _fingerprint(setup, "pair_stats", topk=cfg.topk, resolution=cfg.resolution)

    def per_device(state, variables, first, second, indices, ok):
        a, b = setup.activations(variables, first, second)
        return {l: update_pair_stats(state[l], a[l], b[l], setup.upsamplers[l], indices, ok) for l in setup.layers}

    return _pass(setup, "pair_stats", per_device, empty, setup.model.variables, False, fp,
                 "pass 1/2: thresholds on both sets")


def pass_pair_tallies(setup: _Setup, thresholds: dict) -> dict:
    """Pass 2: per layer, PairTallies (labels on each set, mask agreement)."""
    empty = {l: PairTallies.create(setup.units[l], len(setup.labels)) for l in setup.layers}
    fp = _fingerprint(setup, "pair_tallies", seg=setup.config.seg or ("scenes" if setup.truth else "netpqc"),
                      thresholds={l: [float(np.sum(t[0], dtype=np.float64)), float(np.sum(t[1], dtype=np.float64))]
                                  for l, t in thresholds.items()})
    truth = bool(setup.truth)

    def per_device(state, replicated, first, second, indices, ok, *segs):
        variables, thr = replicated
        a, b = setup.activations(variables, first, second)
        seg_a, seg_b = segs if truth else (setup.segment(first), setup.segment(second))
        return {l: update_pair_tallies(state[l], a[l], b[l], setup.upsamplers[l], thr[l][0], thr[l][1], seg_a, seg_b,
                                       ok) for l in setup.layers}

    thr = {l: (jnp.asarray(t[0]), jnp.asarray(t[1])) for l, t in thresholds.items()}
    return _pass(setup, "pair_tallies", per_device, empty, (setup.model.variables, thr), truth, fp,
                 "pass 2/2: labels and mask agreement")


def layer_readout(layer: str, stats_: PairStats, tallies: PairTallies, thresholds: tuple[np.ndarray, np.ndarray],
                  categories: Sequence[str], miniou: float) -> LayerShapeBias:
    """Everything measured on one layer, from its finished states."""
    best = [tuple(np.asarray(a) for a in tally.best_label()) for tally in (tallies.first_iou, tallies.second_iou)]
    agreement = np.asarray(tallies.agreement.iou(), np.float64)
    chance = np.asarray(tallies.agreement.chance_iou(), np.float64)
    summary = summarize_layer(agreement, best[0][0], best[0][1], best[1][0], best[1][1], categories, miniou, chance)
    return LayerShapeBias(layer, thresholds, agreement, chance, np.asarray(tallies.agreement.both_fraction()),
                          (best[0][0], best[1][0]), (best[0][1], best[1][1]),
                          (np.asarray(tallies.first_iou.iou()), np.asarray(tallies.second_iou.iou())),
                          np.asarray(stats_.second_topk.result()[1]), summary)


def measure(setup: _Setup) -> ShapeBiasResult:
    """Both passes (loaded when finished) and the readouts; writes nothing but the pass states."""
    cfg = setup.config
    pair_stats = pass_pair_stats(setup)
    q = [1.0 - cfg.quantile]
    thresholds = {l: (np.asarray(s.first.quantiles(q)[:, 0]), np.asarray(s.second.quantiles(q)[:, 0]))
                  for l, s in pair_stats.items()}
    tallies = pass_pair_tallies(setup, thresholds)
    layers = [layer_readout(l, pair_stats[l], tallies[l], thresholds[l], setup.labels.categories, cfg.miniou)
              for l in setup.layers]
    return ShapeBiasResult(setup.directory, setup.model.name, cfg.dataset, setup.paired, tuple(setup.labels.names),
                           tuple(setup.labels.categories), len(setup.source), layers)


def run_experiment(config: ShapeBiasConfig = ShapeBiasConfig(), *, model=None, source=None,
                   segmenter=None) -> ShapeBiasResult:
    """The whole experiment, resumable pass by pass; writes figures, thumbnails, report.json per
    layer and shape_bias.json. `model`, `source` (paired: `load(indices)` -> two Batches) and
    `segmenter` replace what the config names."""
    from jaxdissect.experiments import shape_bias_report

    start = time.perf_counter()
    setup = _Setup(config, model, source, segmenter)
    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(runstate.ExclusiveRun(setup.directory))
        parallel.barrier("shapebias-locked")
        result = measure(setup)
        if parallel.is_primary():
            shape_bias_report.write_outputs(setup, result)
            if config.progress:
                print(shape_bias_report.summary_text(result) + f"\n{time.perf_counter() - start:.0f} s -> "
                      f"{os.path.join(setup.directory, 'shape_bias.json')}")
        parallel.barrier("shapebias-done")
    return result
