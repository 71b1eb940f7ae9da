"""Classifier unit ablation (the paper's Fig. 3): what a layer's units do for each class.

Pure pieces, composable in user code:
- `update_mask_counts`: per-class counts of a batch's predictions under many unit masks at once;
- `mask_counts_step`: a batch step (capture the layer once, run only the network's tail for every
  mask) that `steps.sharded_pass` runs over a device mesh;
- `rank_units`, `best_n_masks`, `curve_masks`, `random_masks`: which units to remove, from the
  single-unit ablation balanced accuracy on the ranking split (most damaging unit first);
- `unit_importance`, `importance_vs_iou`: in how many classes' top 4 a unit is, against its IoU.

`evaluate_masks` runs a set of masks over a whole source with per-batch checkpoints (a killed run
resumes where it stopped); `run_experiment` is the resumable driver of the whole experiment.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import struct

from jaxdissect.experiments.class_metrics import ClassCounts
from jaxdissect.experiments.sweep import tail_function

DEFAULT_NS = (1, 2, 3, 4, 5, 20, 64, 128, 256)
IMPORTANT_CUTOFF = 4  # a unit is important to a class when it is among the class's 4 most damaging
METRICS = ("precision", "recall", "accuracy", "true_negative_rate", "balanced_accuracy")


# ---------------------------------------------------------------------------------------------
# Pure pieces: counts under many masks, rankings, masks, importance


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


def own_class(ba: np.ndarray) -> np.ndarray:
    """(classes, n) from (classes, n, classes): entry [c, i] is class c's own metric in [c, i, c]."""
    c = np.arange(ba.shape[0])
    return ba[c, :, c]


def clip_ns(ns: Sequence[int], num_units: int) -> tuple[int, ...]:
    """The unit counts N that make sense for a layer: 1 <= N < num_units, sorted, unique."""
    return tuple(sorted({int(n) for n in ns if 1 <= int(n) < num_units}))


def rank_units(single_unit_ba: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """(classes, units) unit ids per class, the most damaging first: ascending balanced accuracy
    of the class when that unit alone is removed ((units, classes) input), as the original.
    Units of equal BA (typically those whose removal alone flips no prediction) are ordered by
    ascending `tie_break` (units, classes), e.g. the class's mean true-class log-probability with
    the unit removed; without it, or on equal values, by unit id. NaN sorts last."""
    ba = np.asarray(single_unit_ba, np.float64)
    if ba.ndim != 2:
        raise ValueError(f"single_unit_ba must be (units, classes), got shape {ba.shape}")
    second = np.zeros_like(ba) if tie_break is None else np.asarray(tie_break, np.float64)
    if second.shape != ba.shape:
        raise ValueError(f"tie_break must have the shape of single_unit_ba {ba.shape}, got {second.shape}")
    key1 = np.where(np.isnan(ba), np.inf, ba).T
    key2 = np.where(np.isnan(second), np.inf, second).T
    return np.stack([np.lexsort((k2, k1)) for k1, k2 in zip(key1, key2)]).astype(np.int32).reshape(ba.shape[::-1])


def best_n_masks(ranking: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """(classes, len(ns), units) 0/1 masks removing each class's N most damaging units.
    Keeping only those units is `1 - mask`."""
    ranking = np.asarray(ranking)
    classes, units = ranking.shape
    position = np.empty_like(ranking)  # position[c, u]: rank of unit u for class c
    position[np.arange(classes)[:, None], ranking] = np.arange(units)
    ns = np.asarray(ns, np.int64)
    if ns.size and (ns.min() < 0 or ns.max() > units):
        raise ValueError(f"N must lie in 0..{units}, got {ns.tolist()}")
    return (position[:, None, :] < ns[None, :, None]).astype(np.float32)


def curve_masks(order: np.ndarray) -> np.ndarray:
    """(units - 1, units) masks removing the first k units of `order` for k = 1 .. units - 1."""
    order = np.asarray(order)
    units = order.shape[0]
    return best_n_masks(order[None], np.arange(1, units))[0]


def random_masks(ns: Sequence[int], num_units: int, draws: int, seed: int = 0) -> np.ndarray:
    """(len(ns), draws, units) masks each removing N units drawn at random (a control)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(ns), draws, num_units), np.float32)
    for i, n in enumerate(ns):
        for d in range(draws):
            out[i, d, rng.choice(num_units, size=int(n), replace=False)] = 1
    return out


def unit_importance(ranking: np.ndarray, cutoff: int = IMPORTANT_CUTOFF,
                    classes: np.ndarray | None = None) -> np.ndarray:
    """(units,) for each unit, the number of classes (of `classes`, default all) whose `cutoff`
    most damaging units include it."""
    ranking = np.asarray(ranking)
    rows = ranking if classes is None else ranking[np.asarray(classes)]
    return np.bincount(rows[:, :cutoff].ravel(), minlength=ranking.shape[1]).astype(np.int32)


def importance_vs_iou(importance: np.ndarray, best_iou: np.ndarray, top_group: int = 7) -> dict:
    """Mean best IoU with its standard error per importance group 0, 1, ..., top_group - 1 and
    '>= top_group' (the paper's bars). Empty groups give NaN; one unit gives SE 0."""
    importance, best_iou = np.asarray(importance), np.asarray(best_iou, np.float64)
    if importance.shape != best_iou.shape:
        raise ValueError(f"importance {importance.shape} and best_iou {best_iou.shape} must have one entry per unit")
    names, means, ses, counts = [], [], [], []
    for g in range(top_group + 1):
        sel = importance >= g if g == top_group else importance == g
        v = best_iou[sel]
        names.append(f">={g}" if g == top_group else str(g))
        counts.append(int(sel.sum()))
        means.append(float(v.mean()) if v.size else float("nan"))
        ses.append(float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else (0.0 if v.size else float("nan")))
    return {"group": names, "units": counts, "mean_iou": means, "se_iou": ses}


# ---------------------------------------------------------------------------------------------
# A set of masks over a whole source: sharded, checkpointed, resumable


def model_input_function(model) -> Callable:
    """uint8 NHWC images -> the model's normalized float input."""
    norm = model.normalization
    mean = jnp.asarray(norm.get("mean", (0.0, 0.0, 0.0)), jnp.float32)
    std = jnp.asarray(norm.get("std", (1.0, 1.0, 1.0)), jnp.float32)
    return lambda inputs: (inputs.astype(jnp.float32) / 255.0 - mean) / std


def layer_forward(model, layer: str) -> Callable:
    """(variables, x) -> the layer's activations (jit drops everything after it)."""
    from jaxdissect.capture import capture_fn

    run = capture_fn(model.module, (layer,))
    return lambda variables, x: run(variables, x, {})[1][layer]


def _fingerprint_hash(masks: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(masks, np.float32).tobytes()).hexdigest()


def _variables_hash(variables) -> str:
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
    return {"format": 2, "model": model.name, "layer": layer, "weights": _variables_hash(model.variables)}


def ranking_from_stage(single_unit: Mapping[str, np.ndarray], tie_break: bool = True) -> np.ndarray:
    """The (classes, units) ranking from a single-unit stage's metrics (row 0 is the baseline)."""
    return rank_units(single_unit["balanced_accuracy"][1:],
                      single_unit["mean_true_logprob"][1:] if tie_break else None)


_COUNT_FIELDS = ("true", "pred", "correct", "total")


def _tally_to_npz(tally: MaskTally) -> dict[str, np.ndarray]:
    out = {k: np.asarray(getattr(tally.counts, k)) for k in _COUNT_FIELDS}
    out["logprob"] = np.asarray(tally.logprob)
    return out


def _tally_from_npz(z) -> MaskTally:
    return MaskTally(ClassCounts(**{k: jnp.asarray(z[k]) for k in _COUNT_FIELDS}), jnp.asarray(z["logprob"]))


def _save_checkpoint(path: str, tally: MaskTally, progress: dict) -> None:
    from jaxdissect.atomic import atomic_directory

    with atomic_directory(path) as tmp:
        np.savez(os.path.join(tmp, "tally.npz"), **_tally_to_npz(tally))
        with open(os.path.join(tmp, "progress.json"), "w") as f:
            json.dump(progress, f, indent=1)


def _load_checkpoint(path: str) -> tuple[MaskTally, dict] | None:
    from jaxdissect.atomic import existing_version

    try:
        path = existing_version(path)
        with open(os.path.join(path, "progress.json")) as f:
            progress = json.load(f)
        with np.load(os.path.join(path, "tally.npz")) as z:
            tally = _tally_from_npz(z)
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None
    return tally, progress


_STEPS: dict[Any, Callable] = {}


def _sweep_step(model, layer: str, chunk: int, mesh) -> Callable:
    """The jitted sharded sweep step, built once per (module, layer, input normalization, chunk, mesh)."""
    from jaxdissect.dissect import steps

    key = (model.module, layer, json.dumps(model.normalization, sort_keys=True, default=str), chunk, mesh)
    if key not in _STEPS:
        per_device = mask_counts_step(layer_forward(model, layer), tail_function(model, layer),
                                      model_input_function(model), chunk)
        _STEPS[key] = steps.sharded_pass(per_device, mesh, 3)
    return _STEPS[key]


def evaluate_masks(model, layer: str, source, masks: np.ndarray, num_classes: int, *, mesh=None,
                   batch_size: int = 50, chunk: int = 32, checkpoint: str | None = None,
                   checkpoint_every: int = 20, fingerprint: dict | None = None, progress: bool = False,
                   desc: str = "masks") -> MaskTally:
    """Per-class counts of the model's predictions on `source` with each of `masks` (M, units)
    applied to `layer` (1 = zero that unit): a MaskTally with (M, classes) arrays.

    Batches are split over `mesh` (default: all devices); each device keeps its own counts, merged
    at the end. With `checkpoint` (a folder) the counts so far are saved every `checkpoint_every`
    batches and a rerun with the same masks, source size and batch size continues from there."""
    from tqdm.auto import tqdm

    from jaxdissect import parallel
    from jaxdissect.dissect import sources, steps

    masks = np.asarray(masks, np.float32)
    if masks.ndim != 2:
        raise ValueError(f"masks must be (num_masks, units), got shape {masks.shape}")
    mesh = parallel.make_mesh() if mesh is None else mesh
    batch_size = parallel.padded_batch_size(batch_size, mesh)
    ranges = sources.batch_ranges(len(source), batch_size)
    fingerprint = {**(fingerprint or {}), "layer": layer, "masks": _fingerprint_hash(masks),
                   "num_masks": int(masks.shape[0]), "samples": len(source), "batch_size": batch_size}
    empty = MaskTally.create(masks.shape[0], num_classes)
    counts, start = empty, 0
    if checkpoint is not None:
        saved = _load_checkpoint(checkpoint)
        if saved is not None and saved[1].get("fingerprint") == fingerprint:
            counts, start = saved[0], int(saved[1]["batches_done"])
    stacked = steps.place_first(counts, empty, mesh)
    step = _sweep_step(model, layer, chunk, mesh)
    replicated = parallel.replicate(mesh, (model.variables, jnp.asarray(masks)))
    rows = parallel.local_rows(mesh, batch_size)
    positions = np.concatenate([r for _, r in rows])
    bar = tqdm(total=len(source), desc=desc, unit="img", disable=not (progress and parallel.is_primary()),
               dynamic_ncols=True)
    bar.update(sum(len(r) for r in ranges[:start]))
    for b, batch in enumerate(sources.prefetch(source, ranges[start:], positions), start):
        if batch.labels is None:
            raise ValueError(f"{type(source).__name__} gives no class labels; the ablation needs labelled images")
        args = (batch.inputs, np.asarray(batch.labels, np.int32), batch.ok)
        stacked = step(stacked, replicated, *(parallel.assemble(mesh, rows, a, batch_size) for a in args))
        bar.update(len(ranges[b]))
        if checkpoint is not None and (b + 1) % checkpoint_every == 0 and b + 1 < len(ranges):
            merged = parallel.to_host(steps.merge_over_mesh(stacked, mesh))
            if parallel.is_primary():
                _save_checkpoint(checkpoint, merged, {"batches_done": b + 1, "fingerprint": fingerprint})
            parallel.barrier(f"ablation-checkpoint-{b + 1}")
    bar.close()
    return parallel.to_host(steps.merge_over_mesh(stacked, mesh))


# ---------------------------------------------------------------------------------------------
# The experiment driver


@dataclasses.dataclass(frozen=True)
class InterventionConfig:
    """What to ablate and on what; the defaults run the embedded toy classifier on the scenes world."""

    model: str = "toy_classifier"
    dataset: str = "scenes"  # 'scenes', 'places', or a folder with train/ and val/ class folders
    layer: str | None = None  # default: the model's default layer
    train_size: int | None = None  # ranking samples; default 2000 scenes / as many as val for Places
    val_size: int | None = None  # measuring samples; default 1000 scenes / all of Places365 val
    ns: tuple[int, ...] = DEFAULT_NS  # clipped to 1 <= N < units
    curve_classes: tuple[str, ...] | None = None  # classes for the full 1..units-1 curves
    distribution_n: int = 20  # N of the all-classes figure (the paper's 20)
    random_draws: int = 5  # random N-unit sets per N (the control)
    tie_break: bool = True  # order units of equal BA by the class's mean log-probability (False: unit id)
    seed: int = 0
    batch_size: int = 50
    mask_chunk: int = 32
    devices: int | None = None
    outdir: str = "results"
    weights: str | None = None
    seg: str | None = None  # segmenter of the dissection run when its folder is missing
    dissection_sample_size: int | None = None
    checkpoint_every: int = 20
    progress: bool = True


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


def experiment_dir(config: InterventionConfig, model_name: str, layer: str) -> str:
    """<outdir>/<model>-<dataset>-intervention-<layer>, named like the dissection's folders."""
    short = model_name[: -len("_places")] if model_name.endswith("_places") else model_name
    from jaxdissect.dissect.pipeline import dataset_short_name

    dataset = dataset_short_name(config.dataset)
    layer_short = layer[len("features."):] if layer.startswith("features.") else layer
    return os.path.join(config.outdir, f"{short}-{dataset}-intervention-{layer_short}")


def make_sources(config: InterventionConfig, model) -> tuple[Any, Any]:
    """(ranking source, measuring source): scenes train/val, Places365 train/val, or a folder's."""
    from jaxdissect.dissect import sources

    size = int(model.input_size[0])
    if config.dataset == "scenes":
        return (sources.ScenesSource(config.train_size or 2000, split="train", image_size=size),
                sources.ScenesSource(config.val_size or 1000, split="val", image_size=size))
    from jaxdissect.data.tfds_images import parse_tfds_name

    tfds_name = parse_tfds_name(config.dataset)
    if tfds_name is not None:  # the ranking split is tfds's 'train', the measuring one the split named
        val = sources.TfdsSource(*tfds_name, crop=size, size=config.val_size)
        return sources.TfdsSource(tfds_name[0], "train", crop=size, size=config.train_size or len(val)), val
    if config.dataset == "places":
        from jaxdissect.data.places import ensure_places_val

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


def _class_names(model, num_classes: int) -> tuple[str, ...]:
    if model.labels is not None and len(model.labels) == num_classes:
        return tuple(model.labels)
    return tuple(str(i) for i in range(num_classes))


def _check_source_classes(source, class_names: Sequence[str], what: str) -> None:
    classes = getattr(source, "classes", None)
    if classes is not None and len(classes) != len(class_names):
        raise ValueError(f"the {what} images have {len(classes)} classes but the model predicts "
                         f"{len(class_names)}: class ids would not match")


def resolve_classes(names: Sequence[str | int], class_names: Sequence[str]) -> tuple[int, ...]:
    """Class ids of names (or ids); a clear error names an unknown class."""
    out = []
    for name in names:
        if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()):
            i = int(name)
            if not 0 <= i < len(class_names):
                raise ValueError(f"class id {i} out of range 0..{len(class_names) - 1}")
        elif name in class_names:
            i = list(class_names).index(name)
        else:
            raise ValueError(f"unknown class {name!r}; classes: {', '.join(class_names)}")
        out.append(i)
    return tuple(out)


class _Stages:
    """Finished stages as .npz files in <dir>/stages; running ones checkpoint in <dir>/checkpoints."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, "stages", f"{name}.npz")

    def load(self, name: str, fingerprint: dict) -> dict | None:
        try:
            with np.load(self.path(name)) as z:
                if json.loads(str(z["fingerprint"])) != fingerprint:
                    return None
                return {k: z[k] for k in z.files if k != "fingerprint"}
        except (FileNotFoundError, KeyError, ValueError, OSError):
            return None

    def save(self, name: str, fingerprint: dict, arrays: dict) -> None:
        import io

        from jaxdissect.atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)), **arrays)
        atomic_write_bytes(self.path(name), buf.getvalue())

    def checkpoint(self, name: str) -> str:
        return os.path.join(self.directory, "checkpoints", name)


def run_masks_stage(stages: _Stages, name: str, model, layer: str, source, masks: np.ndarray, num_classes: int,
                    config: InterventionConfig, mesh, fingerprint: dict, desc: str) -> dict[str, np.ndarray]:
    """Metrics {name: (M, classes)} of a mask set on a source: cached, or computed with resume."""
    import shutil

    from jaxdissect import parallel

    fingerprint = {**fingerprint, "masks": _fingerprint_hash(masks), "samples": len(source)}
    cached = stages.load(name, fingerprint)
    if cached is not None:
        return cached
    counts = evaluate_masks(model, layer, source, masks, num_classes, mesh=mesh, batch_size=config.batch_size,
                            chunk=config.mask_chunk, checkpoint=stages.checkpoint(name),
                            checkpoint_every=config.checkpoint_every, fingerprint=fingerprint,
                            progress=config.progress, desc=desc)
    out = {**counts.metrics(), **{f"tally_{k}": v for k, v in _tally_to_npz(counts).items()}}
    if parallel.is_primary():
        stages.save(name, fingerprint, out)
        shutil.rmtree(stages.checkpoint(name), ignore_errors=True)
    parallel.barrier(f"ablation-stage-{name}")
    return out


def _dissection(config: InterventionConfig, model, layer: str, model_given: bool):
    """The dissection of the same model and layer: its folder's results, computed if missing."""
    from jaxdissect.dissect import DissectConfig, dissect

    dataset = config.dataset
    if dataset not in ("scenes", "places") and not dataset.startswith("tfds:"):
        dataset = os.path.join(dataset, "val")
    cfg = DissectConfig(model=config.model, dataset=dataset,
                        seg=config.seg, layers=(layer,), outdir=config.outdir, devices=config.devices,
                        weights=config.weights, sample_size=config.dissection_sample_size,
                        progress=config.progress)
    [result] = dissect(cfg, model=model if model_given else None)
    return result


def run_experiment(config: InterventionConfig = InterventionConfig(), *, model=None, train_source=None,
                   val_source=None, dissection=None) -> InterventionResult:
    """The whole experiment, resumable stage by stage; writes tables, plots and the report section.

    `model` (a LoadedModel), the two sources and `dissection` (a LayerResult of the same layer)
    replace what the config names, for running it on your own networks and data."""
    from jaxdissect import parallel
    from jaxdissect.dissect import runstate
    from jaxdissect.dissect.pipeline import resolve_layers
    from jaxdissect.experiments import classifier_report
    from jaxdissect.models import load

    model_given = model is not None
    if model is None:
        model = load(config.model, config.weights)
    if model.kind != "classifier":
        raise ValueError(f"model {model.name!r} is a {model.kind}; classifier ablation needs a classifier")
    [layer] = resolve_layers(model, (config.layer,) if config.layer else ())
    if train_source is None or val_source is None:
        default_train, default_val = make_sources(config, model)
        train_source = train_source if train_source is not None else default_train
        val_source = val_source if val_source is not None else default_val
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    units = int(jax.eval_shape(layer_forward(model, layer), model.variables, example).shape[-1])
    num_classes = int(jax.eval_shape(model.module.apply, model.variables, example).shape[-1])
    class_names = _class_names(model, num_classes)
    _check_source_classes(train_source, class_names, "ranking")
    _check_source_classes(val_source, class_names, "measuring")
    ns = clip_ns(config.ns, units)
    dist_n = min(max(1, config.distribution_n), units - 1)
    curve_names = config.curve_classes
    if curve_names is None:
        curve_names = tuple(n for n in DEFAULT_CURVE_CLASSES.get(config.dataset, ()) if n in class_names) \
            or class_names[:1]
    curve_classes = resolve_classes(curve_names, class_names)
    directory = experiment_dir(config, model.name, layer)
    mesh = parallel.make_mesh(config.devices)
    stages = _Stages(directory)
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
