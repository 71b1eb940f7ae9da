"""Adversarial attacks seen through units (the paper's Fig. 5): which units does an attack change?

For each target class, images whose true and predicted class are both other classes are attacked
(targeted, `attacks.py`); per unit the change of peak activation |max_hw adv - max_hw orig| at the
dissected layer is compared across three groups: the 4 units most important to the target class,
the 4 most important to the source (originally predicted) class, and all other units. A unit's
importance to a class is the class's train balanced-accuracy drop when that unit alone is removed
(`classifier_ablation`). Groups are summarised as the original did: mean over (image, unit) pairs
with a 99% interval, mean +- 2.58 standard errors.

Pure pieces (`peak_activations`, `group_changes`, `interval`, `attack_step`) compose in user code;
`run_experiment` is the resumable, device-sharded driver. Its passes run on the project's one
pass engine (`jaxdissect.passes`): the candidates' predictions (for choosing the images) and the
attacks of each target are per-image records (`SampleRecords`: success, classes, norms, peak
activations), checkpointed as they go and stored as fingerprinted stages, so a killed run
continues where it stopped and a finished one is read back. No image-sized data is kept: the
report's few example pictures are attacked again, with the same per-image seeds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoints, parallel
from jaxdissect.atomic import atomic_write_bytes
from jaxdissect.capturing import capture, capture_fn
from jaxdissect.config_error import ConfigError, check_whole_numbers
from jaxdissect.config_flags import option
from jaxdissect.data import sources
from jaxdissect.data.places import is_places365
from jaxdissect.dissect.config import MODEL_ALIASES
from jaxdissect.dissect.run import resolve_layers
from jaxdissect.experiments import adversarial_report, attacks, common
from jaxdissect.experiments import classifier_ablation as ca
from jaxdissect.experiments.mask_sweep import layer_forward, stage_fingerprint, weights_digest
from jaxdissect.experiments.unit_ranking import rank_units
from jaxdissect.folder_names import dataset_short_name, experiment_folder, layer_short_name
from jaxdissect.models import load
from jaxdissect.parallel import sharded_pass
from jaxdissect.passes import CheckpointPolicy, PassSpec, StageStore, run_over_source
from jaxdissect.run_lock import ExclusiveRun
from jaxdissect.stats import SampleRecords

IMPORTANT_UNITS = 4  # the paper's "4 most important units" of a class
CI99 = 2.58  # the original's 99% factor on the standard error
# A shorter CW schedule for CPU runs of the embedded world (the foolbox defaults, CWConfig(), take
# up to 5000 gradient steps per image); scripts/adversarial.py uses it for 'scenes' unless told otherwise.
FAST_CW = attacks.CWConfig(binary_search_steps=4, steps=100, learning_rate=0.01, initial_const=0.1)
PAPER_TARGETS = ("bedroom", "computer_room", "hangar-indoor", "ski_resort", "volleyball_court-outdoor")
GROUPS = ("target", "source", "other")
# What the attacks pass records per attacked image (SampleRecords each).
RECORD_FIELDS = ("success", "predicted", "source", "l2", "linf", "peak_orig", "peak_adv")
P = jax.sharding.PartitionSpec


# ---------------------------------------------------------------------------------------------
# Pure pieces


def peak_activations(acts: jax.Array) -> jax.Array:
    """Per-image peak of each unit: (N, h, w, units) -> (N, units) max over space; (N, units) as is."""
    if acts.ndim == 2:
        return acts
    return jnp.max(acts.reshape(acts.shape[0], -1, acts.shape[-1]), axis=1)


def group_changes(change: np.ndarray, ranking: np.ndarray, targets: np.ndarray, sources: np.ndarray,
                  k: int = IMPORTANT_UNITS) -> dict[str, np.ndarray]:
    """|peak change| (N, units) split into the groups, as 1-D arrays of (image, unit) values:
    'target' = the target's k most important units, 'source' = the source class's k, 'other' =
    units in neither (a unit important to both counts in both, as in the original)."""
    change, ranking = np.abs(np.asarray(change)), np.asarray(ranking)
    targets, sources = np.asarray(targets, np.int64), np.asarray(sources, np.int64)
    n, units = change.shape
    if ranking.shape[1] != units:
        raise ValueError(f"the ranking has {ranking.shape[1]} units but the activations have {units}")
    rows = np.arange(n)[:, None]
    tu, su = ranking[targets, :k], ranking[sources, :k]  # (N, k)
    other = np.ones((n, units), bool)
    other[rows, tu] = False
    other[rows, su] = False
    return {"target": change[rows, tu].ravel(), "source": change[rows, su].ravel(), "other": change[other]}


def interval(values: np.ndarray, z: float = CI99) -> dict[str, float]:
    """Mean and the interval mean +- z * standard error (std with ddof 0 / sqrt(n), the original's)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "se": float("nan"), "low": float("nan"), "high": float("nan")}
    mean, se = float(v.mean()), float(v.std() / np.sqrt(v.size))
    return {"n": int(v.size), "mean": mean, "se": se, "low": mean - z * se, "high": mean + z * se}


def attack_step(model, layer: str, cfg: attacks.AttackConfig) -> Callable:
    """`(variables, images_uint8, targets, seeds) -> dict` for one batch: the attack (inputs in
    [0, 1], the model's normalization inside; 'adversarial' images and their 'perturbation',
    'success', norms, classes) and the layer's peak activations before and after.
    Pure; `shard_step` runs it split over a mesh."""
    forward = attacks.model_forward(model)
    attack = attacks.make_attack(forward, cfg)
    captured = capture_fn(model.module, (layer,))
    to_model = attacks.model_input(model)

    def peaks(variables, x01):
        logits, acts = captured(variables, to_model(x01), {})
        return logits, peak_activations(acts[layer])

    def step(variables, images, targets, seeds):
        x = images.astype(jnp.float32) / 255.0
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(seeds)
        result = attack(variables, x, targets, keys)
        logits, peak_orig = peaks(variables, x)
        _, peak_adv = peaks(variables, result.adversarial)
        return {"adversarial": result.adversarial, "perturbation": result.adversarial - x, "success": result.success,
                "l2": result.l2, "linf": result.linf, "predicted": result.predicted,
                "source": jnp.argmax(logits, axis=-1).astype(jnp.int32), "peak_orig": peak_orig, "peak_adv": peak_adv}

    return step


def shard_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """Jit `step(variables, *batch)` with the batch split over the mesh's 'data' axis: every device
    attacks its own images with no communication."""
    fn = jax.shard_map(step, mesh=mesh, in_specs=(P(),) + (P("data"),) * 3, out_specs=P("data"), check_vma=False)
    return jax.jit(fn)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """What to attack and how; the defaults run the embedded toy classifier on the scenes world.

    Checks its values when built (ConfigError naming the field); the original's short model names
    (vgg16, alexnet, resnet152) become the registered ones, and no dataset means the model's
    default ('scenes' for toy models, 'places' otherwise). scripts/adversarial.py makes its flags
    from the fields (the attack's own settings are flags of the script)."""

    model: str = option("toy_classifier", "registered classifier (toy_classifier, vgg16_places, alexnet_places, "
                        "resnet152_places) or the original's vgg16/alexnet/resnet152")
    dataset: str | None = option(None, "'scenes' (default for toy models), 'places' (default otherwise), "
                                 "tfds:NAME, or a folder with train/ and val/ class folders")
    layer: str | None = option(None, "layer whose units are measured (default: the model's default)")
    targets: tuple[str, ...] | None = option(None, "target classes (names or ids; default: every scene class / the "
                                             "paper's five for Places)")
    images_per_target: int | None = option(None, "images attacked per target (default: 10 scenes / 1000 for Places)")
    attack: attacks.AttackConfig = option(attacks.CWConfig(), "the attack and its settings", cli=False)
    important_units: int = option(IMPORTANT_UNITS, "units most important to a class, per group", cli=False)
    train_size: int | None = option(None, "images ranking the units (default 2000 scenes)")
    val_size: int | None = option(None, "candidate images to attack (default: all of val)")
    ranking_file: str | None = option(None, ".npz with 'ranking' (classes, units) or the original's "
                                      "ttv_unit_ablation.npz ('single_unit_ablation_ba'); default: computed on the "
                                      "train split")
    seed: int = option(0, "image order and PGD random starts")
    batch_size: int = option(16, "images per batch (all devices)")
    devices: int | None = option(None, "use the first N devices (default: all)")
    outdir: str = option("results", "folder under which result folders are made")
    weights: str | None = option(None, "weights folder or .pth file (default: packaged/cached)")
    examples: int = option(2, "example pictures per target")
    delta_threshold: float | None = option(None, "activation change outlined in the examples (default 0.1 x the mean "
                                           "peak activation)")
    mask_chunk: int = option(32, "masks evaluated at once per device when ranking the units", cli=False)
    checkpoint_every: int = option(20, "batches between checkpoints of a pass", cli=False)
    progress: bool = option(True, "no progress bars", flags=("--no-progress",))

    def __post_init__(self):
        model = MODEL_ALIASES.get(self.model, self.model)
        object.__setattr__(self, "model", model)
        if self.dataset is None:
            object.__setattr__(self, "dataset", common.default_dataset(model))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        self.check()

    def check(self) -> None:
        """The values are usable (ConfigError naming the field otherwise)."""
        optional = ("images_per_target", "train_size", "val_size", "devices")
        check_whole_numbers(self, {"batch_size": 1, "important_units": 1, "mask_chunk": 1, "checkpoint_every": 1,
                                   "seed": 0, "examples": 0, **dict.fromkeys(optional, 1)}, optional)
        d = self.delta_threshold
        if d is not None and not (isinstance(d, (int, float)) and math.isfinite(d) and d > 0):
            raise ConfigError("delta_threshold", f"expected a number > 0, got {d!r}")
        if self.targets is not None and not self.targets:
            raise ConfigError("targets", "name at least one target class (or none for the default)")
        if not isinstance(self.attack, (attacks.CWConfig, attacks.PGDConfig)):
            raise ConfigError("attack", f"expected a CWConfig or PGDConfig, got {self.attack!r}")


@dataclasses.dataclass
class TargetRecord:
    """Every attacked image of one target class, in attack order."""

    target: int
    indices: np.ndarray  # (N,) source indices
    labels: np.ndarray  # (N,) true classes
    sources: np.ndarray  # (N,) originally predicted classes
    success: np.ndarray  # (N,) bool
    predicted: np.ndarray  # (N,) class of the adversarial image
    l2: np.ndarray
    linf: np.ndarray
    peak_orig: np.ndarray  # (N, units)
    peak_adv: np.ndarray


@dataclasses.dataclass
class AdversarialResult:
    directory: str
    model: str
    layer: str
    attack: dict
    class_names: tuple[str, ...]
    ranking: np.ndarray  # (classes, units) most important first
    records: dict  # target name -> TargetRecord
    summary: dict


def experiment_dir(config: AdversarialConfig, model_name: str, layer: str) -> str:
    """<outdir>/<model>-<dataset>-adversarial-<layer>-<attack>."""
    return experiment_folder(config.outdir, model_name, dataset_short_name(config.dataset), "adversarial",
                             layer_short_name(layer), attack_name(config.attack))


def attack_name(cfg: attacks.AttackConfig) -> str:
    return "cw" if isinstance(cfg, attacks.CWConfig) else f"pgd_{cfg.norm}"


def attack_description(cfg: attacks.AttackConfig) -> dict:
    return {"name": attack_name(cfg), **dataclasses.asdict(cfg)}


def load_ranking(path: str, num_classes: int, units: int) -> np.ndarray:
    """(classes, units) ranking from an .npz: 'ranking', or the original's ttv_unit_ablation.npz
    ('single_unit_ablation_ba' (units, classes), most damaging = lowest first)."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"cannot read ranking file {path!r} (an .npz is expected): {e}") from e
    if "ranking" in arrays:
        ranking = np.asarray(arrays["ranking"], np.int64)
    elif "single_unit_ablation_ba" in arrays:
        ranking = rank_units(arrays["single_unit_ablation_ba"]).astype(np.int64)
    else:
        raise ValueError(f"ranking file {path!r} has neither 'ranking' nor 'single_unit_ablation_ba' "
                         f"(it has {', '.join(arrays) or 'nothing'})")
    if ranking.shape != (num_classes, units):
        raise ValueError(f"ranking file {path!r} ranks {ranking.shape[1]} units of {ranking.shape[0]} classes; "
                         f"the layer has {units} units and the model {num_classes} classes")
    return ranking


def unit_ranking(model, layer: str, train_source, num_classes: int, config: AdversarialConfig, mesh,
                 fingerprint: dict | None = None) -> np.ndarray:
    """The classifier-ablation ranking (classes, units): single-unit ablation BA on the ranking
    split, most damaging first. Shared with the intervention experiment: its cached stage is
    reused when present, and what is computed here is cached where that experiment looks.
    `fingerprint` is `stage_fingerprint(model, layer)` when the caller has it already."""
    icfg = ca.ClassifierAblationConfig(model=config.model, dataset=config.dataset, outdir=config.outdir,
                                       weights=config.weights, batch_size=config.batch_size,
                                       mask_chunk=config.mask_chunk, checkpoint_every=config.checkpoint_every,
                                       progress=config.progress)
    directory = ca.experiment_dir(icfg, model.name, layer)
    stages = StageStore(directory)
    units = int(jax.eval_shape(layer_forward(model, layer), model.variables,
                               jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)).shape[-1])
    single = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
    fingerprint = {**(fingerprint or stage_fingerprint(model, layer)), "split": "train"}  # the intervention's
    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(ExclusiveRun(directory))
        parallel.barrier("adversarial-ranking-locked")
        train = ca.run_masks_stage(stages, "train_single", model, layer, train_source, single, num_classes, icfg,
                                   mesh, fingerprint, "ranking: single units (train)")
    return ca.ranking_from_stage(train, icfg.tie_break).astype(np.int64)


def image_seeds(indices: np.ndarray, target: int, seed: int) -> np.ndarray:
    """The attack's per-image random seed (PGD's random start): a function of the image's source
    index, the target and the run's seed only, so any batching or device count attacks an image
    alike (and the report can attack it again)."""
    indices = np.asarray(indices, np.int64)
    return ((indices * 7919 + int(target) + int(seed) * 104729) % 2**31).astype(np.int32)


_STEPS: dict[Any, Callable] = {}  # compiled steps, by what they are built from


def sharded_attack(model, layer: str, cfg: attacks.AttackConfig, mesh: jax.sharding.Mesh) -> Callable:
    """`shard_step(attack_step(model, layer, cfg), mesh)`, built once per (module, layer, input
    normalization, attack, mesh): the attacks pass and the report's re-attack run one compiled
    function."""
    key = (model.module, layer, json.dumps(model.normalization, sort_keys=True, default=str), cfg, mesh)
    if key not in _STEPS:
        _STEPS[key] = shard_step(attack_step(model, layer, cfg), mesh)
    return _STEPS[key]


@functools.lru_cache(maxsize=None)
def _record_step(mesh: jax.sharding.Mesh) -> Callable:
    """`(records, (), positions, ok, *values) -> records` over the mesh, values in RECORD_FIELDS order."""
    def per_device(state, _, positions, ok, *values):
        return {k: state[k].update(v, positions, ok) for k, v in zip(RECORD_FIELDS, values)}

    return sharded_pass(per_device, mesh, 2 + len(RECORD_FIELDS))


def _prediction_step(model, mesh: jax.sharding.Mesh) -> Callable:
    """`(records, variables, images, labels, positions, ok) -> records`: each image's predicted
    class and label; built once per (module, input normalization, mesh)."""
    key = ("predict", model.module, json.dumps(model.normalization, sort_keys=True, default=str), mesh)
    if key not in _STEPS:
        forward = attacks.model_forward(model)

        def per_device(state, variables, images, labels, positions, ok):
            predicted = jnp.argmax(forward(variables, images.astype(jnp.float32) / 255.0), -1).astype(jnp.int32)
            return {"predicted": state["predicted"].update(predicted, positions, ok),
                    "label": state["label"].update(labels, positions, ok)}

        _STEPS[key] = sharded_pass(per_device, mesh, 4)
    return _STEPS[key]


def attack_records(num_images: int, units: int) -> dict[str, SampleRecords]:
    """Empty per-image records of an attacks pass over `num_images` images of a `units`-unit layer."""
    kinds = {"success": ((), jnp.bool_), "predicted": ((), jnp.int32), "source": ((), jnp.int32),
             "l2": ((), jnp.float32), "linf": ((), jnp.float32), "peak_orig": ((units,), jnp.float32),
             "peak_adv": ((units,), jnp.float32)}
    return {k: SampleRecords.create(num_images, *kinds[k]) for k in RECORD_FIELDS}


class ChosenImages:
    """The images `indices` of `source` as a source of their own: sample i is `source`'s image
    indices[i], and a batch's `indices` are these positions (what the records are kept by)."""

    kind = "images"

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, positions) -> sources.Batch:
        positions = np.asarray(positions, np.int64)
        batch = self.source.load(self.indices[positions])
        return dataclasses.replace(batch, indices=positions.astype(np.int32))


def _attack_args(batch: sources.Batch, indices: np.ndarray, target: int, seed: int) -> list[np.ndarray]:
    """A ChosenImages batch as the attacks step's host arrays: images, targets, seeds, positions, ok.
    Padding rows repeat the batch's first image and its seed."""
    positions = np.asarray(batch.indices, np.int64)
    return [np.asarray(batch.inputs, np.uint8), np.full(len(positions), target, np.int32),
            image_seeds(indices[positions], target, seed), positions.astype(np.int32), np.asarray(batch.ok, bool)]


def _stage_pass(store: StageStore | None, name: str, fingerprint: dict, empty: dict, mesh, source, batch_size: int,
                step: Callable, replicated: Any, batch_args: Callable, *, checkpoint_every: int | None,
                progress: bool, desc: str, stop_after: int | None = None) -> dict | None:
    """One pass through the engine, stored as the stage `name` of `store` when finished and read
    back instead when stored with the same fingerprint (process 0 decides; every process then
    computes its rows or reads the stage). Without a store: no checkpoints, nothing stored.
    `stop_after` batches checkpoints and returns None, like a run killed there."""
    if store is not None:
        done = store.load(name, fingerprint, empty)
        if not parallel.agree(done is None):
            if done is None:
                raise FileNotFoundError(f"process {jax.process_index()} cannot read the stage {store.path(name)!r}, "
                                        "which process 0 has: the results folder must be on a filesystem every "
                                        "process sees")
            return {k: jax.tree.map(np.asarray, v) for k, v in done.items()}
    spec = PassSpec(name, None if store is None else store.directory, fingerprint, desc)
    merged = run_over_source(spec, empty, mesh, source, batch_size, step, replicated, batch_args,
                             policy=CheckpointPolicy(every=checkpoint_every or None), progress=progress,
                             stop_after=stop_after)
    if merged is None:
        return None
    if store is not None:
        if parallel.is_primary():
            store.save(name, fingerprint, merged)
            checkpoints.remove(spec.checkpoint_dir)
        parallel.barrier(f"adversarial-{name}-stored")
    return merged


def predictions(model, source, mesh, batch_size: int, *, directory: str | None = None,
                fingerprint: dict | None = None, checkpoint_every: int | None = 20,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class, true label, readable) of every image of `source`, (N,) each: one pass
    of the model over the source (each process loads its devices' rows), stored in `directory`'s
    stages as 'predictions' with `fingerprint` (default: the model's name and weights) plus the
    source's size and identity, and read back from there."""
    fingerprint = {**(fingerprint or {"model": model.name, "weights": weights_digest(model.variables)}),
                   "stage": "predictions", "samples": len(source)}
    if callable(getattr(source, "identity", None)):
        fingerprint["source"] = source.identity()
    n = len(source)
    empty = {"predicted": SampleRecords.create(n, (), jnp.int32), "label": SampleRecords.create(n, (), jnp.int32)}
    step = _prediction_step(model, mesh)

    def batch_args(batch):
        if batch.labels is None:
            raise ValueError(f"{type(source).__name__} gives no class labels; the experiment needs labelled images")
        return [np.asarray(batch.inputs, np.uint8), np.asarray(batch.labels, np.int32),
                np.asarray(batch.indices, np.int32), np.asarray(batch.ok, bool)]

    store = None if directory is None else StageStore(directory)
    merged = _stage_pass(store, "predictions", fingerprint, empty, mesh, source,
                         parallel.padded_batch_size(batch_size, mesh), step, model.variables, batch_args,
                         checkpoint_every=checkpoint_every, progress=progress, desc="predictions of the candidates")
    predicted, filled = (np.asarray(a) for a in merged["predicted"].result())
    return predicted.astype(np.int64), np.asarray(merged["label"].values, np.int64), filled.astype(bool)


def select_images(model, source, targets: Sequence[int], per_target: int, seed: int, mesh, batch_size: int,
                  directory: str | None = None, *, fingerprint: dict | None = None, checkpoint_every: int | None = 20,
                  progress: bool = False) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """For each target, the first `per_target` images (in a seeded random order of the source)
    whose true and predicted class are both not the target: ({target: indices}, {target: true labels}).
    The predictions are the `predictions` pass (stored in `directory`); unreadable images are never chosen."""
    predicted, labels, readable = predictions(model, source, mesh, batch_size, directory=directory,
                                              fingerprint=fingerprint, checkpoint_every=checkpoint_every,
                                              progress=progress)
    order = np.random.default_rng(seed).permutation(len(source)).astype(np.int64)
    order = order[readable[order]]
    chosen, true = {}, {}
    for t in targets:
        ok = (labels[order] != t) & (predicted[order] != t)
        chosen[t], true[t] = order[ok][:per_target], labels[order][ok][:per_target]
    return chosen, true


def attack_fingerprint(weights: dict, config: "AdversarialConfig", target: int, indices: np.ndarray) -> dict:
    """What a target's attacks depend on: the model's weights and layer (`stage_fingerprint`), the
    attack, the target, the seed and the attacked images."""
    return {**weights, "stage": "attacks", "attack": attack_description(config.attack), "target": int(target),
            "seed": int(config.seed), "indices": [int(i) for i in indices]}


def attack_target(model, layer: str, source, target: int, indices: np.ndarray, labels: np.ndarray,
                  config: "AdversarialConfig", mesh, *, directory: str | None = None, fingerprint: dict | None = None,
                  desc: str | None = None, stop_after: int | None = None) -> "TargetRecord | None":
    """Attack the images `indices` (true classes `labels`) of `source` towards `target`: one
    resumable pass of the engine whose states are per-image records, checkpointed every
    `config.checkpoint_every` batches under `directory` and stored there as the stage
    attacks_<target> (a rerun with the same fingerprint reads it back). Each process loads and
    attacks only its devices' rows. `fingerprint` is `stage_fingerprint(model, layer)` when the
    caller has it already. `stop_after` batches (for tests of resuming) checkpoints and returns
    None, like a run killed there."""
    indices, labels = np.asarray(indices, np.int64), np.asarray(labels, np.int64)
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    units = int(jax.eval_shape(layer_forward(model, layer), model.variables, example).shape[-1])
    if len(indices) == 0:  # nothing to attack: no pass
        return TargetRecord(int(target), indices, labels, np.zeros(0, np.int64), np.zeros(0, bool),
                            np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, units), np.float32),
                            np.zeros((0, units), np.float32))
    fp = attack_fingerprint(fingerprint or stage_fingerprint(model, layer), config, target, indices)
    attack, record = sharded_attack(model, layer, config.attack, mesh), _record_step(mesh)

    def step(state, variables, images, targets, seeds, positions, ok):
        out = attack(variables, images, targets, seeds)
        return record(state, (), positions, ok, *(out[k] for k in RECORD_FIELDS))

    store = None if directory is None else StageStore(directory)
    merged = _stage_pass(store, f"attacks_{int(target)}", fp, attack_records(len(indices), units), mesh,
                         ChosenImages(source, indices), parallel.padded_batch_size(config.batch_size, mesh), step,
                         model.variables, lambda batch: _attack_args(batch, indices, target, config.seed),
                         checkpoint_every=config.checkpoint_every, progress=config.progress,
                         desc=desc or f"attacks ({attack_name(config.attack)}) -> class {target}",
                         stop_after=stop_after)
    if merged is None:
        return None
    values = {k: np.asarray(merged[k].values) for k in RECORD_FIELDS}
    keep = np.flatnonzero(np.asarray(merged["success"].filled))
    if len(keep) < len(indices):
        warnings.warn(f"{len(indices) - len(keep)} of the {len(indices)} images attacked towards class {target} could "
                      "not be read; they are left out")
    return TargetRecord(target=int(target), indices=indices[keep], labels=labels[keep],
                        sources=values["source"][keep].astype(np.int64), success=values["success"][keep].astype(bool),
                        predicted=values["predicted"][keep].astype(np.int64),
                        l2=values["l2"][keep].astype(np.float64), linf=values["linf"][keep].astype(np.float64),
                        peak_orig=values["peak_orig"][keep].astype(np.float32),
                        peak_adv=values["peak_adv"][keep].astype(np.float32))


def attack_images(model, layer: str, source, target: int, indices: np.ndarray, config: "AdversarialConfig",
                  mesh) -> dict[str, np.ndarray]:
    """Attack the images `indices` of `source` towards `target` again, as the attacks pass did
    (the same per-image seeds, batches of the pass's size, the same compiled attack), keeping
    nothing: every output of `attack_step` per image plus 'original' (uint8). A collective:
    every process calls it, attacks its devices' rows and gets every row."""
    indices = np.asarray(indices, np.int64)
    size = parallel.padded_batch_size(config.batch_size, mesh)
    attack = sharded_attack(model, layer, config.attack, mesh)
    replicated = parallel.replicate(mesh, model.variables)
    rows = parallel.local_rows(mesh, size)
    positions = np.concatenate([r for _, r in rows])
    chosen, parts = ChosenImages(source, indices), []
    for r in sources.batch_ranges(len(indices), size):
        batch = sources.local_batch(chosen, r, positions)
        args = [parallel.assemble(mesh, rows, a, size) for a in _attack_args(batch, indices, target, config.seed)[:3]]
        out, images = parallel.gather((attack(replicated, *args), args[0]))
        parts.append({**{k: np.asarray(v)[:len(r)] for k, v in out.items()}, "original": np.asarray(images)[:len(r)]})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def layer_maps(model, layer: str, images01: np.ndarray) -> np.ndarray:
    """The layer's activations (N, h, w, units) on images in [0, 1]."""
    _, acts = capture(model, attacks.model_input(model)(jnp.asarray(images01, jnp.float32)), layer)
    return np.asarray(acts[layer])


def collect_examples(result, model, source, config: "AdversarialConfig", mesh) -> list[adversarial_report.Example]:
    """The report's pictures: the first `config.examples` successful attacks of each target,
    attacked again (`attack_images`: nothing image-sized is stored) with the layer's maps on both
    images. A collective like `attack_images`: every process calls it.

    An attack run again must reproduce its record (success and adversarial class); one that does
    not is left out of the pictures with a warning naming the image, rather than failing the run:
    the summary and per-image tables come from the stored records, which stay authoritative, and
    a mismatch (a borderline attack whose float rounding differs, e.g. after resuming on other
    hardware) is no reason to lose a finished run at its last step, while picturing an attack that
    differs from its record would mislead."""
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    if config.examples == 0 or len(jax.eval_shape(layer_forward(model, result.layer), model.variables,
                                                  example).shape) != 4:
        return []  # no pictures asked for, or a layer without space (fc): nothing to outline
    out = []
    for name, rec in result.records.items():
        ok = np.flatnonzero(rec.success)[: config.examples]
        if ok.size == 0:
            continue
        again = attack_images(model, result.layer, source, rec.target, rec.indices[ok], config, mesh)
        same = (again["success"] == rec.success[ok]) & (again["predicted"] == rec.predicted[ok])
        for i in np.flatnonzero(~same):
            warnings.warn(f"image {int(rec.indices[ok[i]])} attacked towards {name!r} again gave success "
                          f"{bool(again['success'][i])}, class {int(again['predicted'][i])}; its record says success "
                          f"{bool(rec.success[ok[i]])}, class {int(rec.predicted[ok[i]])}: left out of the pictures")
        keep = np.flatnonzero(same)
        if keep.size == 0:
            continue
        orig = again["original"][keep].astype(np.float32) / 255.0
        adv = np.asarray(again["adversarial"][keep], np.float32)
        maps_o, maps_a = layer_maps(model, result.layer, orig), layer_maps(model, result.layer, adv)
        for j, i in enumerate(keep):
            out.append(adversarial_report.Example(name, int(rec.indices[ok[i]]), orig[j], adv[j], maps_o[j], maps_a[j],
                                                  int(rec.sources[ok[i]]), int(rec.predicted[ok[i]]), rec.target))
    return out


def summarize(records: dict, ranking: np.ndarray, k: int = IMPORTANT_UNITS) -> dict:
    """Success rate, perturbation norms and the three groups' |peak change| (successful attacks
    only), per target and pooled over targets."""
    def block(recs):
        success = np.concatenate([r.success for r in recs]) if recs else np.zeros(0, bool)
        l2 = np.concatenate([r.l2 for r in recs]) if recs else np.zeros(0)
        linf = np.concatenate([r.linf for r in recs]) if recs else np.zeros(0)
        groups = {g: [] for g in GROUPS}
        for r in recs:
            s = r.success
            if s.any():
                ch = group_changes(r.peak_adv[s] - r.peak_orig[s], ranking, np.full(s.sum(), r.target), r.sources[s], k)
                for g in GROUPS:
                    groups[g].append(ch[g])
        stats = {g: interval(np.concatenate(v) if v else np.zeros(0)) for g, v in groups.items()}
        ok = success.astype(bool)
        f = lambda a: float(np.mean(a)) if a.size else float("nan")  # noqa: E731
        return {"attacked": int(success.size), "succeeded": int(ok.sum()), "success_rate": f(ok),
                "mean_l2": f(l2[ok]), "median_l2": float(np.median(l2[ok])) if ok.any() else float("nan"),
                "mean_linf": f(linf[ok]), "groups": stats,
                "target_over_other": stats["target"]["mean"] / stats["other"]["mean"]
                if stats["other"]["mean"] > 0 else float("nan")}

    return {"per_target": {name: block([r]) for name, r in records.items()},
            "all": block(list(records.values())), "important_units": k, "interval": f"mean +- {CI99} SE (99%)"}


def default_targets(dataset: str, class_names: Sequence[str]) -> tuple[str, ...]:
    if is_places365(dataset) or all(t in class_names for t in PAPER_TARGETS):
        return PAPER_TARGETS
    return tuple(class_names)


def _write_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def run_experiment(config: AdversarialConfig = AdversarialConfig(), *, model=None, train_source=None,
                   attack_source=None, ranking: np.ndarray | None = None) -> AdversarialResult:
    """The whole experiment, resumable: ranking, image selection, attacks, summary, pictures.

    `model` (a LoadedModel), `train_source` (ranking split), `attack_source` (images to attack)
    and `ranking` ((classes, units), most important first) replace what the config names."""
    if model is None:
        model = load(config.model, config.weights)
    if model.kind != "classifier":
        raise ValueError(f"model {model.name!r} is a {model.kind}; the adversarial experiment needs a classifier")
    [layer] = resolve_layers(model, (config.layer,) if config.layer else ())
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    units = int(jax.eval_shape(layer_forward(model, layer), model.variables, example).shape[-1])
    num_classes = int(jax.eval_shape(model.module.apply, model.variables, example).shape[-1])
    class_names = common.class_names(model, num_classes)
    target_names = config.targets or default_targets(config.dataset, class_names)
    try:
        targets = common.resolve_classes(target_names, class_names)
    except ValueError as e:
        raise ConfigError("targets", str(e)) from None
    per_target = config.images_per_target or (1000 if is_places365(config.dataset) else 10)
    if ranking is None and config.ranking_file is not None:  # read before any image is loaded
        try:
            ranking = load_ranking(config.ranking_file, num_classes, units)
        except ValueError as e:
            raise ConfigError("ranking_file", str(e)) from None
    if attack_source is None or (train_source is None and ranking is None):
        icfg = ca.ClassifierAblationConfig(model=config.model, dataset=config.dataset, train_size=config.train_size,
                                           val_size=config.val_size)
        default_train, default_val = ca.make_sources(icfg, model)
        train_source = train_source if train_source is not None else default_train
        attack_source = attack_source if attack_source is not None else default_val
    common.check_source_classes(attack_source, class_names, "attacked")
    mesh = parallel.make_mesh(config.devices)
    directory = experiment_dir(config, model.name, layer)
    weights_fp = stage_fingerprint(model, layer)  # hashes the weights: once per run

    if ranking is None:
        common.check_source_classes(train_source, class_names, "ranking")
        ranking = unit_ranking(model, layer, train_source, num_classes, config, mesh, weights_fp)
    ranking = np.asarray(ranking, np.int64)
    if ranking.shape != (num_classes, units):
        raise ValueError(f"ranking must be (classes, units) = ({num_classes}, {units}), got {ranking.shape}")

    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(ExclusiveRun(directory))
            _write_npz(os.path.join(directory, "ranking.npz"), ranking=ranking)
        parallel.barrier("adversarial-locked")
        chosen, labels = select_images(model, attack_source, targets, per_target, config.seed, mesh,
                                       config.batch_size, directory, fingerprint=weights_fp,
                                       checkpoint_every=config.checkpoint_every, progress=config.progress)
        for t in targets:
            if len(chosen[t]) < per_target:
                warnings.warn(f"only {len(chosen[t])} of {len(attack_source)} images are neither labelled nor "
                              f"predicted {class_names[t]!r}; attacking those (asked for {per_target})")
        records = {}
        for t in targets:
            name = class_names[t]
            records[name] = attack_target(model, layer, attack_source, t, chosen[t], labels[t], config, mesh,
                                          directory=directory, fingerprint=weights_fp,
                                          desc=f"attacks ({attack_name(config.attack)}) -> {name}")
        summary = summarize(records, ranking, config.important_units)
        summary.update(model=model.name, layer=layer, attack=attack_description(config.attack),
                       images_per_target=per_target, targets=[class_names[t] for t in targets])
        result = AdversarialResult(directory=directory, model=model.name, layer=layer,
                                   attack=attack_description(config.attack), class_names=class_names,
                                   ranking=ranking, records=records, summary=summary)
        examples = collect_examples(result, model, attack_source, config, mesh)  # every process attacks its rows
        if parallel.is_primary():
            adversarial_report.write_outputs(result, examples, threshold=config.delta_threshold)
        parallel.barrier("adversarial-written")
    return result


__all__ = ["peak_activations", "group_changes", "interval", "attack_step", "shard_step", "AdversarialConfig",
           "AdversarialResult", "TargetRecord", "run_experiment", "select_images", "predictions", "attack_target",
           "attack_images", "attack_records", "image_seeds", "collect_examples", "summarize", "load_ranking",
           "unit_ranking", "PAPER_TARGETS", "FAST_CW", "RECORD_FIELDS"]
