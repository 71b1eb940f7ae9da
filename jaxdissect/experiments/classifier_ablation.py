"""Classifier unit ablation (the paper's Fig. 3): what a layer's units do for each class.

The pieces, composable in user code, live in `mask_sweep` (per-class counts under many unit
masks, resumable over a source) and `unit_ranking` (rankings, masks, importance); they are
re-exported here. `run_experiment` is the resumable driver of the whole experiment.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoints, parallel
from jaxdissect.config_error import ConfigError, check_whole_numbers
from jaxdissect.config_flags import option
from jaxdissect.data import sources
from jaxdissect.data.places import ensure_places_val, is_places365
from jaxdissect.data.tfds_images import parse_tfds_name
from jaxdissect.dissect import DissectConfig, dissect, runstate
from jaxdissect.dissect.config import MODEL_ALIASES
from jaxdissect.dissect.run import resolve_layers
from jaxdissect.experiments import classifier_report, common
from jaxdissect.folder_names import ablation_folder
from jaxdissect.models import load
from jaxdissect.passes import StageStore
from jaxdissect.experiments.mask_sweep import (MaskTally, evaluate_masks, layer_forward, mask_counts_step,  # noqa: F401
                                               masks_digest, model_input_function, stage_fingerprint, sweep_logits,
                                               tally_arrays)
from jaxdissect.experiments.unit_ranking import (IMPORTANT_CUTOFF, best_n_masks, clip_ns, curve_masks,  # noqa: F401
                                                 importance_vs_iou, own_class, rank_units, random_masks,
                                                 ranking_from_stage, unit_importance)

DEFAULT_NS = (1, 2, 3, 4, 5, 20, 64, 128, 256)
METRICS = ("precision", "recall", "accuracy", "true_negative_rate", "balanced_accuracy")


# ---------------------------------------------------------------------------------------------
# The experiment driver


@dataclasses.dataclass(frozen=True)
class ClassifierAblationConfig:
    """What to ablate and on what; the defaults run the embedded toy classifier on the scenes world.

    Checks its values when built (ConfigError naming the field); the original's short model names
    (vgg16, alexnet, resnet152) become the registered ones, and no dataset means the default for
    the model."""

    model: str = option("toy_classifier", "registered classifier (toy_classifier, vgg16_places, alexnet_places, "
                        "resnet152_places) or the original's vgg16/alexnet/resnet152")
    dataset: str | None = option(None, "'scenes' (default for toy models), 'places' (default otherwise; downloaded "
                                 "once), tfds:NAME (its train and validation splits, e.g. tfds:places365_small), or a "
                                 "folder with train/ and val/ class folders")
    layer: str | None = option(None, "layer to ablate (default: the model's default layer)")
    train_size: int | None = option(None, "images used to rank units (default: 2000 scenes; for Places as many as "
                                    "val)")
    val_size: int | None = option(None, "images used to measure (default: 1000 scenes; all of Places365 val)")
    ns: tuple[int, ...] = option(DEFAULT_NS, "numbers of best units removed / kept per class, each below the layer's "
                                 f"unit count (default: {' '.join(map(str, DEFAULT_NS))}, those below the unit "
                                 "count)", metavar="N")
    curve_classes: tuple[str, ...] | None = option(None, "classes (names or ids) for the full 1..units-1 curves "
                                                   "(default: street lake for the scenes, ski_resort computer_room "
                                                   "hangar-indoor volleyball_court-outdoor for Places; the flag "
                                                   "with no class: no curves)", nargs="*")
    distribution_n: int = option(20, "N of the all-classes figure (the paper's 20; at most the layer's units - 1)")
    random_draws: int = option(5, "random N-unit sets per N, the control")
    tie_break: bool = option(True, "order units of equal BA by the class's mean log-probability (False: unit id)",
                             cli=False)
    seed: int = option(0, "seed of the random control sets")
    batch_size: int = option(50, "images per batch (all devices)")
    mask_chunk: int = option(32, "masks evaluated at once per device (memory)")
    devices: int | None = option(None, "use the first N devices (default: all)")
    outdir: str = option("results", "folder under which result folders are made")
    weights: str | None = option(None, "weights folder or .pth file (default: packaged/cached)")
    seg: str | None = option(None, "segmenter of the dissection when it has to be run (default: scenes for the "
                             "scenes world, netpqc otherwise)")
    dissection_sample_size: int | None = option(None, "samples of that dissection (default: the dissection's)")
    checkpoint_every: int = option(20, "batches between checkpoints of a pass", cli=False)
    progress: bool = option(True, "no progress bars", flags=("--no-progress",))

    def __post_init__(self):
        model = MODEL_ALIASES.get(self.model, self.model)
        object.__setattr__(self, "model", model)
        if self.dataset is None:
            object.__setattr__(self, "dataset", common.default_dataset(model))
        self.check()

    def check(self) -> None:
        """The values are usable (ConfigError naming the field otherwise)."""
        optional = ("train_size", "val_size", "devices", "dissection_sample_size")
        check_whole_numbers(self, {"distribution_n": 1, "random_draws": 1, "batch_size": 1, "mask_chunk": 1,
                                   "checkpoint_every": 1, "seed": 0, **dict.fromkeys(optional, 1)}, optional)
        bad = [n for n in self.ns if int(n) < 1]
        if not self.ns or bad:
            raise ConfigError("ns", f"each N must be at least 1, got {', '.join(map(str, bad)) or 'none'}")
        if self.seg == "scenes" and self.dataset != "scenes":
            raise ConfigError("seg", "scenes (the exact labels) needs --dataset scenes; use toy or net[p][q][c]")


DEFAULT_CURVE_CLASSES = {"scenes": ("street", "lake"),
                         "places": ("ski_resort", "computer_room", "hangar-indoor", "volleyball_court-outdoor")}


@dataclasses.dataclass
class InterventionResult:
    """Every table of the experiment (BA = balanced accuracy; arrays indexed by class id)."""

    directory: str
    model: str
    layer: str
    class_names: tuple[str, ...]
    ns: tuple[int, ...]
    baseline: dict  # val metrics {name: (classes,)}
    baseline_train_ba: np.ndarray  # (classes,)
    train_single_ba: np.ndarray  # (units, classes) BA with one unit removed, ranking split
    val_single_ba: np.ndarray  # (units, classes) same on val
    ranking: np.ndarray  # (classes, units) most damaging unit first (from train)
    removed_ba: np.ndarray  # (classes, len(ns)) BA of class c with its best N units removed (val)
    kept_ba: np.ndarray  # (classes, len(ns)) BA of class c with only its best N units kept (val)
    random_removed_ba: np.ndarray  # (len(ns), draws, classes) BA with N random units removed (val)
    random_kept_ba: np.ndarray  # (len(ns), draws, classes) BA with only N random units kept (val)
    curve_classes: tuple[int, ...]
    curve_removed_ba: np.ndarray  # (len(curve_classes), units - 1): best k removed, k = 1..units-1
    curve_kept_ba: np.ndarray  # (len(curve_classes), units - 1): only best k kept
    importance: np.ndarray  # (units,)
    best_iou: np.ndarray  # (units,) from the dissection
    best_label: tuple[str, ...]  # (units,) the dissection's label names
    iou_groups: dict  # importance_vs_iou(...)
    dissection_dir: str | None = None

    @property
    def num_units(self) -> int:
        return int(self.train_single_ba.shape[0])


def experiment_dir(config: ClassifierAblationConfig, model_name: str, layer: str) -> str:
    """<outdir>/<model>-<dataset>-intervention-<layer>, named like the dissection's folders."""
    return ablation_folder(config.outdir, model_name, config.dataset, layer)


def make_sources(config: ClassifierAblationConfig, model) -> tuple[Any, Any]:
    """(ranking source, measuring source): scenes train/val, Places365 train/val, or a folder's."""
    size = int(model.input_size[0])
    if config.dataset == "scenes":
        return (sources.ScenesSource(config.train_size or 2000, split="train", image_size=size),
                sources.ScenesSource(config.val_size or 1000, split="val", image_size=size))
    tfds_name = parse_tfds_name(config.dataset)
    if tfds_name is not None:  # the ranking split is tfds's 'train', the measuring one the split named
        val = sources.TfdsSource(*tfds_name, crop=size, size=config.val_size)
        return sources.TfdsSource(tfds_name[0], "train", crop=size, size=config.train_size or len(val)), val
    if config.dataset == "places":
        train_root, val_root = ensure_places_val("train"), ensure_places_val("val")
    elif os.path.isdir(config.dataset):
        train_root, val_root = (os.path.join(config.dataset, s) for s in ("train", "val"))
        for root in (train_root, val_root):
            if not os.path.isdir(root):
                raise FileNotFoundError(f"dataset folder {config.dataset!r} needs train/ and val/ class folders; "
                                        f"{root!r} is missing")
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}: use 'scenes', 'places', tfds:NAME or a folder with "
                         "train/ and val/")
    val = sources.FolderSource(val_root, crop=size, size=config.val_size)
    train = sources.FolderSource(train_root, crop=size, size=config.train_size or len(val))
    return train, val


def check_config(config: ClassifierAblationConfig) -> None:
    """The config's values are usable (ConfigError naming the field otherwise); see its `check`."""
    config.check()


def experiment_ns(ns: Sequence[int], units: int, layer: str) -> tuple[int, ...]:
    """The unit counts N to run: 1 <= N < units. The defaults are clipped to the layer quietly; N
    given otherwise that do not fit are dropped with a warning naming them, and a ConfigError is
    raised when none is left."""
    if units < 2:
        raise ConfigError("layer", f"{layer} has {units} unit; ablating its best units needs at least 2")
    kept = clip_ns(ns, units)
    dropped = sorted({int(n) for n in ns} - set(kept))
    if not kept:
        raise ConfigError("ns", f"each N must be from 1 to {units - 1} ({layer} has {units} units), got "
                                f"{', '.join(map(str, dropped)) or 'none'}")
    if dropped and tuple(ns) != DEFAULT_NS:
        warnings.warn(f"ns {', '.join(map(str, dropped))} left out: N must be from 1 to {units - 1} ({layer} has "
                      f"{units} units)", stacklevel=2)
    return kept


def run_masks_stage(stages: StageStore, name: str, model, layer: str, source, masks: np.ndarray,
                    num_classes: int, config: ClassifierAblationConfig, mesh, fingerprint: dict,
                    desc: str) -> dict[str, np.ndarray]:
    """Metrics {name: (M, classes)} of a mask set on a source: stored, or computed with resume."""
    fingerprint = {**fingerprint, "masks": masks_digest(masks), "samples": len(source)}
    cached = stages.load(name, fingerprint)
    if cached is not None:
        return cached
    counts = evaluate_masks(model, layer, source, masks, num_classes, mesh=mesh, batch_size=config.batch_size,
                            chunk=config.mask_chunk, checkpoint=stages.directory, name=name,
                            checkpoint_every=config.checkpoint_every, fingerprint=fingerprint,
                            progress=config.progress, desc=desc)
    out = {**counts.metrics(), **{f"tally_{k}": v for k, v in tally_arrays(counts).items()}}
    if parallel.is_primary():
        stages.save(name, fingerprint, out)
        checkpoints.remove(os.path.join(stages.directory, "checkpoints", name))
    parallel.barrier(f"ablation-stage-{name}")
    return out


def _dissection(config: ClassifierAblationConfig, model, layer: str, model_given: bool):
    """The dissection of the same model and layer: its folder's results, computed if missing."""
    dataset = config.dataset
    if dataset not in ("scenes", "places") and not dataset.startswith("tfds:"):
        dataset = os.path.join(dataset, "val")
    cfg = DissectConfig(model=config.model, dataset=dataset,
                        seg=config.seg, layers=(layer,), outdir=config.outdir, devices=config.devices,
                        weights=config.weights, sample_size=config.dissection_sample_size,
                        progress=config.progress)
    [result] = dissect(cfg, model=model if model_given else None)
    return result


def run_experiment(config: ClassifierAblationConfig = ClassifierAblationConfig(), *, model=None, train_source=None,
                   val_source=None, dissection=None) -> InterventionResult:
    """The whole experiment, resumable stage by stage; writes tables, plots and the report section.

    `model` (a LoadedModel), the two sources and `dissection` (a LayerResult of the same layer)
    replace what the config names, for running it on your own networks and data."""
    model_given = model is not None
    if model is None:
        model = load(config.model, config.weights)
    if model.kind != "classifier":
        raise ValueError(f"model {model.name!r} is a {model.kind}; classifier ablation needs a classifier")
    [layer] = resolve_layers(model, (config.layer,) if config.layer else ())
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    units = int(jax.eval_shape(layer_forward(model, layer), model.variables, example).shape[-1])
    num_classes = int(jax.eval_shape(model.module.apply, model.variables, example).shape[-1])
    class_names = common.class_names(model, num_classes)
    ns = experiment_ns(config.ns, units, layer)
    dist_n = min(config.distribution_n, units - 1)
    curve_names = config.curve_classes
    if curve_names is None:
        defaults = DEFAULT_CURVE_CLASSES.get("places" if is_places365(config.dataset) else config.dataset, ())
        curve_names = tuple(n for n in defaults if n in class_names) or class_names[:1]
    try:
        curve_classes = common.resolve_classes(curve_names, class_names)
    except ValueError as e:
        raise ConfigError("curve_classes", str(e)) from None
    if train_source is None or val_source is None:  # after the checks: Places may be downloaded here
        default_train, default_val = make_sources(config, model)
        train_source = train_source if train_source is not None else default_train
        val_source = val_source if val_source is not None else default_val
    common.check_source_classes(train_source, class_names, "ranking")
    common.check_source_classes(val_source, class_names, "measuring")
    directory = experiment_dir(config, model.name, layer)
    mesh = parallel.make_mesh(config.devices)
    stages = StageStore(directory)
    base_fp = stage_fingerprint(model, layer)
    ranking_fp = {**base_fp, "tie_break": bool(config.tie_break)}

    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(runstate.ExclusiveRun(directory))
        parallel.barrier("ablation-locked")
        single = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
        train = run_masks_stage(stages, "train_single", model, layer, train_source, single, num_classes, config,
                                mesh, {**base_fp, "split": "train"}, "ranking: single units (train)")
        val = run_masks_stage(stages, "val_single", model, layer, val_source, single, num_classes, config,
                              mesh, {**base_fp, "split": "val"}, "single units (val)")
        train_single_ba = train["balanced_accuracy"][1:]
        ranking = ranking_from_stage(train, config.tie_break)

        removed = best_n_masks(ranking, ns)  # (classes, len(ns), units)
        rand = random_masks(ns, units, config.random_draws, config.seed)
        class_masks = np.concatenate([removed.reshape(-1, units), (1 - removed).reshape(-1, units),
                                      rand.reshape(-1, units), (1 - rand).reshape(-1, units)])
        cu = run_masks_stage(stages, "val_class_units", model, layer, val_source, class_masks, num_classes,
                             config, mesh, {**ranking_fp, "split": "val"}, "best-N removed / kept (val)")
        k = num_classes * len(ns)
        ba = cu["balanced_accuracy"]
        removed_ba = own_class(ba[:k].reshape(num_classes, len(ns), num_classes))
        kept_ba = own_class(ba[k:2 * k].reshape(num_classes, len(ns), num_classes))
        r = len(ns) * config.random_draws
        random_removed_ba = ba[2 * k:2 * k + r].reshape(len(ns), config.random_draws, num_classes)
        random_kept_ba = ba[2 * k + r:].reshape(len(ns), config.random_draws, num_classes)

        curve_removed = np.zeros((len(curve_classes), units - 1))
        curve_kept = np.zeros((len(curve_classes), units - 1))
        if curve_classes:
            cmasks = np.stack([curve_masks(ranking[c]) for c in curve_classes])  # (cc, units-1, units)
            masks = np.concatenate([cmasks.reshape(-1, units), (1 - cmasks).reshape(-1, units)])
            cv = run_masks_stage(stages, "val_curves", model, layer, val_source, masks, num_classes, config,
                                 mesh, {**base_fp, "split": "val"}, "full curves (val)")
            cba = cv["balanced_accuracy"].reshape(2, len(curve_classes), units - 1, num_classes)
            for i, c in enumerate(curve_classes):
                curve_removed[i], curve_kept[i] = cba[0, i, :, c], cba[1, i, :, c]

        if dissection is None:
            dissection = _dissection(config, model, layer, model_given)
        best_iou = np.asarray(dissection.best_iou, np.float64)
        if best_iou.shape != (units,):
            raise ValueError(f"the dissection in {dissection.directory!r} has {best_iou.shape[0]} units, "
                             f"layer {layer} has {units}")
        valid_classes = np.flatnonzero(~np.isnan(train["balanced_accuracy"][0]))
        importance = unit_importance(ranking, IMPORTANT_CUTOFF, valid_classes)
        result = InterventionResult(
            directory=directory, model=model.name, layer=layer, class_names=class_names, ns=ns,
            baseline={m: val[m][0] for m in METRICS}, baseline_train_ba=train["balanced_accuracy"][0],
            train_single_ba=train_single_ba, val_single_ba=val["balanced_accuracy"][1:], ranking=ranking,
            removed_ba=removed_ba, kept_ba=kept_ba, random_removed_ba=random_removed_ba,
            random_kept_ba=random_kept_ba,
            curve_classes=curve_classes, curve_removed_ba=curve_removed, curve_kept_ba=curve_kept,
            importance=importance, best_iou=best_iou,
            best_label=tuple(dissection.label_names[int(i)] for i in dissection.best_label),
            iou_groups=importance_vs_iou(importance, best_iou), dissection_dir=dissection.directory)
        if parallel.is_primary():
            classifier_report.write_outputs(result, distribution_n=dist_n)
        parallel.barrier("ablation-done")
    return result
