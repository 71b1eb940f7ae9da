"""Shape versus texture (the original's shapebias experiment): do a unit's firing regions stay
put when an image keeps its shapes and layout but changes its surfaces?

Each layer is dissected on image pairs (a scene and its stylized twin, or a photo and its
stylized copy): thresholds on each set (the top `quantile` of the upsampled activations), the
unit's label on each set (IoU with that set's segmentation), and the agreement of the unit's two
masks over the pairs (`MaskAgreement`: IoU of its thresholded masks, at the segmentation's
resolution, where the labels are measured too). Units labelled with shapes (objects, parts) are
compared with units labelled with surfaces (materials, colours).

Pure per-batch steps (`update_pair_stats`, `update_pair_tallies`) and readouts
(`summarize_layer`) compose with any pass engine; `run_experiment` is a resumable, sharded driver
(every forward pass is here, the thumbnails' included: jaxdissect.experiments.shape_bias_report
writes finished results).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect import checkpoints, parallel
from jaxdissect.capturing import capture_fn
from jaxdissect.config_error import ConfigError, check_whole_numbers
from jaxdissect.config_flags import option
from jaxdissect.data.paired import RESTYLED_SCENES, STYLIZED_SCENES, paired_source
from jaxdissect.dissect import runstate, steps
from jaxdissect.dissect.config import MODEL_ALIASES
from jaxdissect.dissect.run import resolve_layers
from jaxdissect.experiments import label_confinement, shape_bias_report
from jaxdissect.experiments.label_confinement import Confinement
from jaxdissect.experiments.label_groups import SHAPE_CATEGORIES, SURFACE_CATEGORIES, group_of, in_group  # noqa: F401
from jaxdissect.experiments.mask_sweep import stage_fingerprint
from jaxdissect.experiments.shape_bias_report import TopPairs
from jaxdissect.folder_names import dataset_short_name, experiment_folder
from jaxdissect.models import load
from jaxdissect.models.registry import normalize_pixels
from jaxdissect.passes import CheckpointPolicy, PassSpec, StageStore, run_over_source
from jaxdissect.report.unit_images import thumbnail
from jaxdissect.segment.merge import load_segmenter
from jaxdissect.segment.toy import ToySegmenter, subsample_labels
from jaxdissect.stats import IoUTally, MaskAgreement, QuantileSketch, TopK
from jaxdissect.upsample import Upsampler, layer_geometry, upsampler


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


def unit_groups(first_label: np.ndarray, first_iou: np.ndarray, categories: Sequence[str], miniou: float,
                separable: np.ndarray | None = None) -> np.ndarray:
    """(units,) each unit's group by its label on the first set: 'shape' (object, part), 'surface'
    (material, colour) or None (unlabelled: IoU <= miniou, or another category). With `separable`
    ((labels,) bool, `Confinement.separable()`), surface units are split into 'surface_separable'
    and 'surface_confined' (their label lies inside one shape label)."""
    out = np.full(len(first_label), None, object)
    for u, (label, iou) in enumerate(zip(np.asarray(first_label), np.asarray(first_iou))):
        g = group_of(categories[int(label)]) if iou > miniou else None
        if g == "surface" and separable is not None:
            g = "surface_separable" if separable[int(label)] else "surface_confined"
        out[u] = g
    return out


def summarize_layer(agreement: np.ndarray, first_label: np.ndarray, first_iou: np.ndarray, second_label: np.ndarray,
                    second_iou: np.ndarray, categories: Sequence[str], miniou: float = 0.04,
                    chance: np.ndarray | None = None, separable: np.ndarray | None = None) -> dict:
    """Per group (shape = object/part, surface = material/color, by the unit's label on the first
    set, units with IoU > miniou) the agreement's mean/median/SE, the gap shape - surface, how
    many units keep their label on the second set (same label with IoU > miniou there), and the
    mean agreement independent masks of the units' coverage would have (`chance`, per unit).
    With `separable` ((labels,) bool), the surface units are also split by whether their label is
    seen outside any single shape label ('surface_separable', 'gap_separable') or not
    ('surface_confined'): a label confined to one shape cannot tell a surface unit from a shape unit."""
    agreement = np.asarray(agreement, np.float64)
    chance = np.full(agreement.shape, np.nan) if chance is None else np.asarray(chance, np.float64)
    first_label, second_label = np.asarray(first_label), np.asarray(second_label)
    labelled = np.asarray(first_iou) > miniou
    groups = unit_groups(first_label, first_iou, categories, miniou, separable)
    survives = labelled & (second_label == first_label) & (np.asarray(second_iou) > miniou)

    def group_stats(sel: np.ndarray) -> dict:
        return {**_stat(agreement[sel]), "label_kept": int(survives[sel].sum()),
                "label_kept_fraction": float(survives[sel].mean()) if sel.any() else float("nan"),
                "chance_mean": _stat(chance[sel])["mean"]}

    out: dict[str, Any] = {"all": _stat(agreement)}
    for g in ("shape", "surface"):
        out[g] = group_stats(in_group(groups, g))
    for cat in (*SHAPE_CATEGORIES, *SURFACE_CATEGORIES):
        sel = labelled & (np.asarray([categories[int(l)] for l in first_label]) == cat)
        out[cat] = {**_stat(agreement[sel]), "label_kept": int(survives[sel].sum())}
    out["gap"] = out["shape"]["mean"] - out["surface"]["mean"]
    if separable is not None:
        for g in ("surface_separable", "surface_confined"):
            out[g] = group_stats(in_group(groups, g))
        out["gap_separable"] = out["shape"]["mean"] - out["surface_separable"]["mean"]
    out["unlabelled"] = _stat(agreement[~labelled])
    return out


# ---------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass(frozen=True)
class ShapeBiasConfig:
    """What to compare; the defaults run the toy classifier on scenes and their stylized twins.
    Its values are checked when it is made (ConfigError naming the field); scripts/shape_bias.py
    makes its flags from these fields."""

    model: str = option("toy_classifier", "registered classifier (toy_classifier, vgg16_places, ...) or the "
                        "original's vgg16/alexnet/resnet152")
    dataset: str = option("scenes", "'scenes', a stylized scenes world (scenes-stylized[-materials|-colors], paired "
                          "with another stylization of each scene) or a folder of images")
    paired_dataset: str | None = option(None, "the other versions: scenes-stylized (default for scenes; materials "
                                        "and colours changed), scenes-stylized-materials, scenes-stylized-colors; "
                                        f"{RESTYLED_SCENES} (default for a stylized world: each scene stylized "
                                        "again); or a folder paired by file name")
    pattern: str | None = option(None, "regular expression giving a file's pairing key (its first group); "
                                 "default: the relative path without extension and without a '-stylized-...' suffix")
    layers: tuple[str, ...] = option((), "layers to compare (default: every conv layer)", metavar="LAYER")
    seg: str | None = option(None, "segmenter for folders (default netpqc); the scenes use exact labels")
    quantile: float = option(0.01, "a unit is on in its top QUANTILE of activations; results folders are suffixed "
                             "-<1000 * QUANTILE> unless it is 0.01")
    miniou: float = option(0.04, "IoU above which a unit counts as labelled")
    sample_size: int | None = option(None, "pairs used (default: 1000 scenes, every pair)")
    batch_size: int = option(20, "pairs per batch (rounded up to a multiple of the device count)")
    topk: int = option(20, "top stylized pairs kept per unit")
    strip_images: int = option(5, "top pairs shown per unit in the reports", cli=False)
    thumbsize: int = option(100, "size of the unit thumbnails")
    resolution: int = option(128, "quantile sketch bins per power of two (a power of two)", cli=False)
    devices: int | None = option(None, "use the first N devices (default: all)")
    outdir: str = option("results", "folder under which the result folder is made")
    weights: str | None = option(None, "weights folder or .pth file (default: packaged/cached)")
    checkpoint_every: int = option(10, "batches between checkpoints of a pass (0: by time only)", cli=False)
    progress: bool = option(True, "no progress bars (shown by default)", flags=("--no-progress",))

    def __post_init__(self):
        q = self.quantile
        if not (isinstance(q, (int, float)) and math.isfinite(q) and 0 < q < 1):
            raise ConfigError("quantile", f"must lie in (0, 1), got {q!r}")
        if not (isinstance(self.miniou, (int, float)) and math.isfinite(self.miniou) and 0 <= self.miniou <= 1):
            raise ConfigError("miniou", f"must lie in [0, 1], got {self.miniou!r}")
        check_whole_numbers(self, {"batch_size": 1, "topk": 1, "strip_images": 1, "thumbsize": 1, "sample_size": 1,
                                   "devices": 1, "checkpoint_every": 0}, ("sample_size", "devices"))
        r = self.resolution
        if not (isinstance(r, int) and 1 <= r <= 2 ** 16 and r & (r - 1) == 0):
            raise ConfigError("resolution", f"must be a power of two in [1, 65536], got {r!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("layers", f"a layer is named twice: {list(self.layers)}")

    @property
    def model_name(self) -> str:
        """The registered model name (the original's short names resolved)."""
        return MODEL_ALIASES.get(self.model, self.model)


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
    groups: np.ndarray  # (units,) `unit_groups` by the first set's label (None: unlabelled)


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
    confinement: Confinement | None = None  # of the first set's surface labels inside shape labels
    quantile: float = 0.01  # a unit is on in this top fraction of its activations on each set


def default_layers(model) -> tuple[str, ...]:
    """Every conv layer of the model (names whose last part starts with 'conv')."""
    layers = tuple(l for l in model.layer_names if l.rsplit(".", 1)[-1].startswith("conv"))
    return layers or (model.default_layer,)


def paired_name(config: ShapeBiasConfig) -> str:
    """The second dataset: as given, or the stylized scenes for the scenes (ConfigError when the
    datasets cannot pair)."""
    if config.dataset in STYLIZED_SCENES:
        if config.paired_dataset not in (None, RESTYLED_SCENES):
            raise ConfigError("paired_dataset", f"--dataset {config.dataset} pairs with {RESTYLED_SCENES} (another "
                                                "stylization of each scene); for scenes and their stylized twins "
                                                "give the original world first: --dataset scenes --paired-dataset "
                                                f"{config.dataset}")
        return RESTYLED_SCENES
    if config.paired_dataset == RESTYLED_SCENES:
        raise ConfigError("paired_dataset", f"{RESTYLED_SCENES} restyles a stylized world: --dataset scenes-stylized "
                                            f"--paired-dataset {RESTYLED_SCENES}")
    if config.paired_dataset:
        return config.paired_dataset
    if config.dataset == "scenes":
        return "scenes-stylized"
    raise ConfigError("paired_dataset", f"--dataset {config.dataset} needs --paired-dataset (the folder of its other "
                                        "versions)")


def experiment_dir(config: ShapeBiasConfig, model_name: str) -> str:
    """<outdir>/<model>-[<dataset>-]<paired dataset>-shapebias[-<quantile*1000>] (the dataset's
    name left out when the paired one starts with it, e.g. toy_classifier-scenes-stylized-shapebias)."""
    first, second = dataset_short_name(config.dataset), dataset_short_name(paired_name(config))
    datasets = second if second.startswith(first) else f"{first}-{second}"
    suffix = () if config.quantile == 0.01 else ("%g" % (config.quantile * 1000),)
    return experiment_folder(config.outdir, model_name, datasets, "shapebias", *suffix)


@dataclasses.dataclass(frozen=True)
class ShapeBiasRun:
    """Everything the shape-bias passes share, built once by `ShapeBiasRun.create`: the model, the
    paired source, where labels come from, the mesh, the layers' shapes and upsamplers."""

    config: ShapeBiasConfig
    model: Any  # LoadedModel (a classifier)
    layers: tuple[str, ...]
    paired: str  # the paired dataset's name
    source: Any  # paired source: batches of (first, second) images
    truth: bool  # labels are the source's own exact segmentations
    segmenter: Any  # None when `truth`
    labels: Any  # SegmentLabels
    mesh: jax.sharding.Mesh
    batch_size: int  # padded to the mesh
    forward: Callable  # (variables, x) -> (output, {layer: activations})
    directory: str
    downsample: int  # segmentation resolution = input / downsample
    seg_hw: tuple[int, int]
    units: Mapping[str, int]
    upsamplers: Mapping[str, Any]

    @classmethod
    def create(cls, config: ShapeBiasConfig, model=None, source=None, segmenter=None) -> "ShapeBiasRun":
        model = model if model is not None else load(config.model_name, config.weights)
        if model.kind != "classifier":
            raise ValueError(f"{model.name} is a {model.kind}; the shape-bias experiment takes a classifier")
        layers = tuple(resolve_layers(model, config.layers or default_layers(model)))
        size = int(model.input_size[0])
        paired = paired_name(config) if source is None else (config.paired_dataset or "paired")
        if source is None:
            source = paired_source(config.dataset, paired, crop=size, size=config.sample_size, pattern=config.pattern,
                                   image_size=size)
        truth = bool(segmenter is None and config.seg in (None, "scenes") and getattr(source, "labels", None) is not None)
        if segmenter is not None:
            labels = segmenter.labels
        elif truth:
            labels = source.labels
        else:
            segmenter = _load_segmenter(config.seg or "netpqc")
            labels = segmenter.labels
        mesh = parallel.make_mesh(config.devices)
        run = capture_fn(model.module, layers)
        forward = lambda variables, x: run(variables, x, {})  # noqa: E731
        directory = experiment_dir(dataclasses.replace(config, paired_dataset=paired), model.name)
        image_hw = tuple(model.input_size)
        downsample = 4 if image_hw[0] >= 224 else 2
        seg_hw = (image_hw[0] // downsample, image_hw[1] // downsample)
        _, acts = jax.eval_shape(forward, model.variables, model.abstract_input())
        upsamplers = {}
        for l in layers:
            geometry = layer_geometry(model.name, l)
            upsamplers[l] = upsampler(seg_hw, tuple(acts[l].shape[1:3]), image_hw if geometry else None, geometry)
        values = len(source) * seg_hw[0] * seg_hw[1]
        if values >= 2**31:
            raise ValueError(f"{len(source)} pairs x {seg_hw[0]}x{seg_hw[1]} pixels = {values} values "
                             "per unit, more than the int32 counts hold; use fewer pairs (--sample-size)")
        return cls(config=config, model=model, layers=layers, paired=paired, source=source, truth=truth,
                   segmenter=segmenter, labels=labels, mesh=mesh,
                   batch_size=parallel.padded_batch_size(config.batch_size, mesh), forward=forward,
                   directory=directory, downsample=downsample, seg_hw=seg_hw,
                   units={l: int(acts[l].shape[-1]) for l in layers}, upsamplers=upsamplers)

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
    return ToySegmenter() if seg == "toy" else load_segmenter(seg)


def _fingerprint(setup: ShapeBiasRun, name: str, **extra) -> dict:
    cfg = setup.config
    return {"pass": name, "model": stage_fingerprint(setup.model, setup.layers[0]), "layers": list(setup.layers),
            "dataset": cfg.dataset, "paired": setup.paired, "pattern": cfg.pattern, "samples": len(setup.source),
            **extra}


def _pass(setup: ShapeBiasRun, name: str, per_device: Callable, empty: dict, replicated: Any, with_truth: bool,
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


def pass_pair_stats(setup: ShapeBiasRun) -> dict:
    """Pass 1: per layer, PairStats (thresholds on each set, top stylized pairs)."""
    cfg = setup.config
    empty = {l: PairStats.create(setup.units[l], cfg.topk, cfg.resolution) for l in setup.layers}
    fp = _fingerprint(setup, "pair_stats", topk=cfg.topk, resolution=cfg.resolution)

    def per_device(state, variables, first, second, indices, ok):
        a, b = setup.activations(variables, first, second)
        return {l: update_pair_stats(state[l], a[l], b[l], setup.upsamplers[l], indices, ok) for l in setup.layers}

    return _pass(setup, "pair_stats", per_device, empty, setup.model.variables, False, fp,
                 "pass 1/2: thresholds on both sets")


# The key of pass 2's label overlap (first-set segmentations; see label_confinement) beside the layers.
LABEL_OVERLAP = "label_overlap"


def pass_pair_tallies(setup: ShapeBiasRun, thresholds: dict) -> dict:
    """Pass 2: per layer, PairTallies (labels on each set, mask agreement); and under
    LABEL_OVERLAP, the overlap of surface with shape labels on the first set."""
    categories = setup.labels.categories
    surface = label_confinement.label_ids(categories, "surface")
    empty = {**{l: PairTallies.create(setup.units[l], len(setup.labels)) for l in setup.layers},
             LABEL_OVERLAP: label_confinement.create_overlap(categories)}
    fp = _fingerprint(setup, "pair_tallies", seg=setup.config.seg or ("scenes" if setup.truth else "netpqc"),
                      thresholds={l: [float(np.sum(t[0], dtype=np.float64)), float(np.sum(t[1], dtype=np.float64))]
                                  for l, t in thresholds.items()}, label_overlap=True)
    truth = bool(setup.truth)

    def per_device(state, replicated, first, second, indices, ok, *segs):
        variables, thr = replicated
        a, b = setup.activations(variables, first, second)
        seg_a, seg_b = segs if truth else (setup.segment(first), setup.segment(second))
        out = {l: update_pair_tallies(state[l], a[l], b[l], setup.upsamplers[l], thr[l][0], thr[l][1], seg_a, seg_b,
                                      ok) for l in setup.layers}
        out[LABEL_OVERLAP] = label_confinement.update_overlap(state[LABEL_OVERLAP], seg_a, surface, ok)
        return out

    thr = {l: (jnp.asarray(t[0]), jnp.asarray(t[1])) for l, t in thresholds.items()}
    return _pass(setup, "pair_tallies", per_device, empty, (setup.model.variables, thr), truth, fp,
                 "pass 2/2: labels and mask agreement")


def layer_readout(layer: str, stats_: PairStats, tallies: PairTallies, thresholds: tuple[np.ndarray, np.ndarray],
                  categories: Sequence[str], miniou: float, confinement: Confinement | None = None) -> LayerShapeBias:
    """Everything measured on one layer, from its finished states (`confinement`: of the first
    set's surface labels, to split the surface units)."""
    best = [tuple(np.asarray(a) for a in tally.best_label()) for tally in (tallies.first_iou, tallies.second_iou)]
    agreement = np.asarray(tallies.agreement.iou(), np.float64)
    chance = np.asarray(tallies.agreement.chance_iou(), np.float64)
    separable = None if confinement is None else confinement.separable()
    summary = summarize_layer(agreement, best[0][0], best[0][1], best[1][0], best[1][1], categories, miniou, chance,
                              separable)
    return LayerShapeBias(layer, thresholds, agreement, chance, np.asarray(tallies.agreement.both_fraction()),
                          (best[0][0], best[1][0]), (best[0][1], best[1][1]),
                          (np.asarray(tallies.first_iou.iou()), np.asarray(tallies.second_iou.iou())),
                          np.asarray(stats_.second_topk.result()[1]), summary,
                          unit_groups(best[0][0], best[0][1], categories, miniou, separable))


def measure(setup: ShapeBiasRun) -> ShapeBiasResult:
    """Both passes (loaded when finished) and the readouts; writes nothing but the pass states."""
    cfg = setup.config
    pair_stats = pass_pair_stats(setup)
    q = [1.0 - cfg.quantile]
    thresholds = {l: (np.asarray(s.first.quantiles(q)[:, 0]), np.asarray(s.second.quantiles(q)[:, 0]))
                  for l, s in pair_stats.items()}
    tallies = pass_pair_tallies(setup, thresholds)
    confinement = label_confinement.confinement(tallies[LABEL_OVERLAP], setup.labels.categories)
    layers = [layer_readout(l, pair_stats[l], tallies[l], thresholds[l], setup.labels.categories, cfg.miniou,
                            confinement) for l in setup.layers]
    return ShapeBiasResult(setup.directory, setup.model.name, cfg.dataset, setup.paired, tuple(setup.labels.names),
                           tuple(setup.labels.categories), len(setup.source), layers, confinement, cfg.quantile)


def top_pairs(setup: ShapeBiasRun, lb: LayerShapeBias, k: int, size: int) -> TopPairs:
    """What the report shows of a layer's units: thumbnails of each unit's top `k` pairs (by its
    peak on the second images) and the unit's region in each, thresholded with each set's
    threshold (one forward of each pair shown)."""
    top = lb.topk_indices[:, :k]
    wanted = np.unique(top[top >= 0])
    thr = [np.asarray(t) for t in lb.thresholds]
    layer = lb.layer

    @jax.jit
    def run(variables, first, second):
        a, b = setup.activations(variables, first, second)
        return a[layer], b[layer]

    thumbnails: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    regions = (np.zeros((*top.shape, size, size), bool), np.zeros((*top.shape, size, size), bool))
    resample = None
    for s in range(0, len(wanted), setup.batch_size):
        idx = wanted[s:s + setup.batch_size]
        pad = np.concatenate([idx, np.repeat(idx[:1], setup.batch_size - len(idx))])
        first, second = setup.source.load(pad)
        a, b = run(setup.model.variables, first.inputs, second.inputs)
        if resample is None:
            resample = upsampler((size, size), tuple(a.shape[1:3]))
        on = (np.asarray(resample(a)) > thr[0], np.asarray(resample(b)) > thr[1])
        for j, i in enumerate(idx):
            thumbnails[int(i)] = (thumbnail(first.inputs[j], size), thumbnail(second.inputs[j], size))
            units, ranks = np.nonzero(top == i)
            for side in (0, 1):
                regions[side][units, ranks] = np.moveaxis(on[side][j][:, :, units], -1, 0)
    return TopPairs(layer, top, thumbnails, regions)


def run_experiment(config: ShapeBiasConfig = ShapeBiasConfig(), *, model=None, source=None,
                   segmenter=None) -> ShapeBiasResult:
    """The whole experiment, resumable pass by pass; writes figures, thumbnails, report.json per
    layer and shape_bias.json. `model`, `source` (paired: `load(indices)` -> two Batches) and
    `segmenter` replace what the config names."""
    start = time.perf_counter()
    setup = ShapeBiasRun.create(config, model, source, segmenter)
    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(runstate.ExclusiveRun(setup.directory))
        parallel.barrier("shapebias-locked")
        result = measure(setup)
        if parallel.is_primary():
            _, images = shape_bias_report.write_run_outputs(config, result)
            for lb in result.layers:  # one layer's thumbnails in memory at a time
                shape_bias_report.write_layer_report(config, result, lb, shape_bias_report.section_html(
                    result, images, lb.layer), top_pairs(setup, lb, config.strip_images, config.thumbsize))
            if config.progress:
                print(shape_bias_report.summary_text(result) + f"\n{time.perf_counter() - start:.0f} s -> "
                      f"{os.path.join(setup.directory, 'shape_bias.json')}")
        parallel.barrier("shapebias-done")
    return result
