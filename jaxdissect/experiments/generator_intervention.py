"""Generator interventions: units cause objects (the paper's GAN experiments).

Zeroing the units matched to a class removes that class from generated images; switching them
on at one location adds it, but only where the context allows. Everything that touches arrays
is a pure function: the chosen layer is captured once per batch, edits (`jaxdissect.edit`
pytrees, stacked on a leading axis) are applied to it, and only the rest of the generator runs
again (`sweep.tail_function`), vmapped over the stack. The passes run sharded over a mesh with
per-device mergeable states (`steps.sharded_pass`) and checkpoint as they go, so a killed run
resumes where it stopped.

The pure pieces (class statistics, context labels, edit stacks) are in `generator_edits`.

Experiments (driver: `run_experiment`):
- segmentation-class statistics with and without edits (per-image class fractions over all
  segmentation channels; mean and variance as `Moments`);
- every unit ablated singly, and the best 0..n units of a class by IoU ablated together;
- insertion in context: the best units of a class set to their 99.5th-percentile value at each
  spatial location in turn, the change of every class's pixels tallied per original label at
  that location.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoints, parallel
from jaxdissect.capturing import capture_fn, valid_layer_names
from jaxdissect.config_error import ConfigError, check_whole_numbers
from jaxdissect.config_flags import option
from jaxdissect.data import sources
from jaxdissect.data.zdataset import standard_z_sample
from jaxdissect.dissect import DissectConfig, dissect, layer_stats, runstate, steps
from jaxdissect.dissect.run import make_segmenter
from jaxdissect.experiments import generator_report
from jaxdissect.experiments.generator_edits import (  # noqa: F401  (re-exported)
    class_counts, class_fractions, cell_centers, context_labels, ranked_units, best_units_masks,
    ablation_stack, insertion_stack, stack_size, conditional_update, conditional_readout)
from jaxdissect.experiments.mask_sweep import weights_digest
from jaxdissect.experiments.sweep import tail_function
from jaxdissect.models import load
from jaxdissect.passes import CheckpointPolicy, PassSpec, StageStore, run_over_source
from jaxdissect.stats import Moments

Z99 = 2.5758293035489004  # two-sided 99% normal quantile: the original's 2.58 * stderr band
# (remove, insert): the paper removes trees and inserts doors; the toy generator draws no doors,
# but it puts trees on grass and not in the sky, which shows the same context dependence.
DEFAULT_CLASSES = {"toy_generator": ("tree", "tree"), "proggan_church": ("tree", "door")}


# ---------------------------------------------------------------------------------------------
# The generator and segmenter as jit-able functions


class GeneratorFns:
    """The generator split at `layer` and the segmenter, as functions traceable inside jit:
    `forward(variables, z) -> (images, acts)`, `tail(variables, acts) -> images`,
    `segment(images) -> (N, C, h, w)`, `edited_counts(...)` for stacks of edits."""

    def __init__(self, model, layer: str, segmenter, downsample: int | None = None):
        if model.kind != "generator":
            raise ValueError(f"generator interventions need a generator, got {model.name!r} ({model.kind})")
        if layer not in valid_layer_names(model):
            raise ValueError(f"unknown layer {layer!r} for {model.name}; layers: {', '.join(model.layer_names)}")
        self.model, self.layer, self.segmenter = model, layer, segmenter
        self.weights_digest = weights_digest(model.variables)  # part of every pass's fingerprint
        self.labels = segmenter.labels
        self.num_labels = len(self.labels)
        run = capture_fn(model.module, (layer,))
        self._run = run
        self.tail = tail_function(model, layer)
        out, acts = jax.eval_shape(lambda v, z: run(v, z, {}), model.variables,
                                   jax.ShapeDtypeStruct((1, int(model.z_dim)), jnp.float32))
        self.image_hw = tuple(out.shape[1:3])
        self.layer_hw = tuple(acts[layer].shape[1:3])
        self.num_units = int(acts[layer].shape[-1])
        self.downsample = downsample or (4 if self.image_hw[0] >= 224 else 2)
        self.seg_hw = (self.image_hw[0] // self.downsample, self.image_hw[1] // self.downsample)

    def forward(self, variables, z):
        out, acts = self._run(variables, z, {})
        return out, acts[self.layer]

    def segment(self, images):
        return self.segmenter.segment(images, self.downsample)

    def edited_images(self, variables, acts, edits):
        """(K, N, H, W, 3): the tail on acts under each edit of a stack (leading axis K)."""
        return jax.vmap(lambda e: self.tail(variables, e(acts)))(edits)

    def edited_counts(self, variables, acts, edits, chunk: int = 8) -> jax.Array:
        """(K, N, L) class pixel counts of the images regenerated under each edit of the stack,
        `chunk` edits at a time (padded by repeating the first edit)."""
        k = stack_size(edits)
        chunk = max(1, min(chunk, k))
        pad = (-k) % chunk
        if pad:
            edits = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]), edits)
        chunks = jax.tree.map(lambda a: a.reshape((-1, chunk) + a.shape[1:]), edits)
        n = acts.shape[0]

        def one(stack):
            imgs = self.edited_images(variables, acts, stack)
            seg = self.segment(imgs.reshape((chunk * n,) + imgs.shape[2:]))
            return class_counts(seg, self.num_labels).reshape(chunk, n, -1)

        out = jax.lax.map(one, chunks)
        return out.reshape((-1, n, self.num_labels))[:k]


# ---------------------------------------------------------------------------------------------
# Per-device steps (state, replicated, z, indices, ok) -> state


def segclass_step(fns: GeneratorFns, chunk: int = 8) -> Callable:
    """States {'baseline': Moments(L), 'edited': Moments(K*L), 'delta': Moments(K*L)} of class
    fractions without edits, with each edit of the replicated stack, and their difference."""

    def step(state, replicated, z, indices, ok):
        variables, edits = replicated
        images, acts = fns.forward(variables, z)
        area = float(fns.seg_hw[0] * fns.seg_hw[1])
        f0 = class_counts(fns.segment(images), fns.num_labels) / area
        fk = fns.edited_counts(variables, acts, edits, chunk) / area  # (K, N, L)
        n = z.shape[0]
        flat = lambda a: jnp.moveaxis(a, 0, 1).reshape(n, -1)  # noqa: E731
        return {"baseline": state["baseline"].update(f0, ok), "edited": state["edited"].update(flat(fk), ok),
                "delta": state["delta"].update(flat(fk - f0[None]), ok)}

    return step


def insertion_step(fns: GeneratorFns, chunk: int = 8) -> Callable:
    """States {'baseline': Moments(L) class pixel counts, 'context': Moments(L*L) of the count
    change per original label at the edited location}; the replicated stack holds one edit per
    location (`insertion_stack`)."""

    def step(state, replicated, z, indices, ok):
        variables, edits = replicated
        images, acts = fns.forward(variables, z)
        seg = fns.segment(images)
        c0 = class_counts(seg, fns.num_labels)  # (N, L)
        ctx = context_labels(seg, fns.layer_hw, fns.num_labels)  # (N, h, w, L)
        ck = fns.edited_counts(variables, acts, edits, chunk)  # (h*w, N, L)
        locs, n = ck.shape[0], z.shape[0]
        delta = (ck - c0[None]).reshape(locs * n, -1)
        cond = jnp.moveaxis(ctx.reshape(n, locs, -1), 1, 0).reshape(locs * n, -1)
        mask = jnp.tile(ok, locs)
        return {"baseline": state["baseline"].update(c0, ok),
                "context": conditional_update(state["context"], delta, cond, mask)}

    return step


# ---------------------------------------------------------------------------------------------
# A resumable sharded pass


@dataclasses.dataclass
class PassRunner:
    """Runs per-device steps over a z source on a mesh through the resumable pass engine
    (checkpoints in `directory/checkpoints/<name>`), keeping finished passes, with their
    fingerprints, in `directory/stages/<name>`."""

    directory: str
    mesh: jax.sharding.Mesh
    batch_size: int
    checkpoint_every: int = 25
    progress: bool = True

    def run(self, name: str, per_device: Callable, empty: dict, replicated: Any, source, fingerprint: dict,
            stop_after: int | None = None) -> dict | None:
        """Merged states of the pass (loaded when already finished with the same fingerprint).
        `stop_after` batches (for tests of resuming) leaves the pass unfinished and returns None."""
        fingerprint = {**fingerprint, "samples": len(source)}
        store = StageStore(self.directory)
        done = store.load(name, fingerprint)
        if done is not None:
            return done
        spec = PassSpec(name, self.directory, fingerprint, name)
        step = steps.sharded_pass(per_device, self.mesh, 3)
        merged = run_over_source(spec, empty, self.mesh, source, self.batch_size, step, replicated,
                                 lambda b: (b.inputs, b.indices, b.ok), policy=CheckpointPolicy(every=self.checkpoint_every),
                                 progress=self.progress, stop_after=stop_after)
        if merged is None:
            return None
        if parallel.is_primary():
            store.save(name, fingerprint, merged)
            checkpoints.remove(spec.checkpoint_dir)
        parallel.barrier(f"{name}-final")
        return merged


def example_images(res, fns, examples: int = 3, candidates: int = 24) -> tuple[np.ndarray, np.ndarray, list]:
    """(ablation grid, insertion grid, shown ablation counts): images of the z (among the first
    `candidates`) with the most pixels of each class; insertion at the best and worst context."""
    z = standard_z_sample(candidates, int(fns.model.z_dim))
    labels = fns.labels
    images, _ = fns.forward(fns.model.variables, jnp.asarray(z))
    seg = fns.segment(images)
    counts = np.asarray(class_counts(seg, fns.num_labels))
    scale = max(1, 128 // fns.image_hw[0])

    r = res.removal
    shown = [n for n in (0, 2, 4, 8, 20, 30) if n <= r.counts[-1]]
    pick = np.argsort(-counts[:, labels.index(r.label)], kind="stable")[:examples]
    masks = best_units_masks(r.units, int(r.counts[-1]), fns.num_units)[shown]
    abl = ablation_examples(fns, z[pick], masks)  # (K, N, H, W, 3)
    ablation_grid = generator_report.grid_image([[abl[k, i] for k in range(len(shown))] for i in range(len(pick))], scale=scale)

    c = res.context
    rows = c.rows(1)
    ctx = np.asarray(context_labels(seg, fns.layer_hw, fns.num_labels))  # (N, h, w, L)
    best_ctx = [labels.index(x["context"]) for x in rows[:1]]
    worst_ctx = [labels.index(x["context"]) for x in rows[-1:]]
    ins_pick = np.argsort(-ctx[..., best_ctx].sum((1, 2, 3)), kind="stable")[:examples] if best_ctx else pick
    h, w = fns.layer_hw
    cy, cx = fns.image_hw[0] // h, fns.image_hw[1] // w
    grid_rows = []
    for i in ins_pick:
        locs = []
        for want in (best_ctx, worst_ctx):
            cells = np.argwhere(ctx[i][..., want].any(-1)) if want else np.zeros((0, 2), int)
            locs.append(tuple(int(v) for v in cells[len(cells) // 2]) if len(cells) else (h // 2, w // 2))
        orig, ins = insertion_examples(fns, z[i:i + 1], c.units, c.values, locs)
        row = [orig[0]]
        for k, (y, x) in enumerate(locs):
            row.append(generator_report.draw_box(ins[k, 0], y * cy, x * cx, (y + 1) * cy, (x + 1) * cx))
        grid_rows.append(row)
    return ablation_grid, generator_report.grid_image(grid_rows, scale=scale), shown


# ---------------------------------------------------------------------------------------------
# Experiments as functions of (fns, variables, source, runner)


def _fp(fns: GeneratorFns) -> dict:
    """What every pass depends on: the generator (name and a digest of its weights, so a retrained
    generator never reuses passes), the layer, the segmenter's labels and the downsampling."""
    return {"model": fns.model.name, "weights": fns.weights_digest, "layer": fns.layer, "labels": fns.num_labels,
            "downsample": fns.downsample}


def edits_digest(edits: Any) -> str:
    """A digest of an edit stack (its structure and arrays), so a pass of other edits is never reused."""
    leaves, treedef = jax.tree.flatten(edits)
    h = hashlib.sha1(str(treedef).encode())
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def segclass_stats(fns: GeneratorFns, runner: PassRunner, source, edits: Any, name: str,
                   fingerprint: dict | None = None, chunk: int = 8, stop_after: int | None = None) -> dict | None:
    """Class-fraction Moments without edits ('baseline'), with each edit of the stack ('edited',
    K*L entries, edit-major) and their per-image difference ('delta')."""
    k, num_l = stack_size(edits), fns.num_labels
    empty = {"baseline": Moments.create(num_l), "edited": Moments.create(k * num_l), "delta": Moments.create(k * num_l)}
    fp = {**_fp(fns), "pass": "segclass", "edits": k, "edits_digest": edits_digest(edits), **(fingerprint or {})}
    return runner.run(name, segclass_step(fns, chunk), empty, (fns.model.variables, edits), source, fp, stop_after)


@dataclasses.dataclass
class RemovalTable:
    """Ablating the best 0..n units of a class: the portion of its pixels removed, with a 99% interval."""

    label: str
    units: np.ndarray  # the ranked units (best first)
    counts: np.ndarray  # (n+1,) ablated units
    baseline_fraction: float  # mean fraction of the class's pixels without edits
    removed: np.ndarray  # (n+1,) -mean delta / baseline
    lo99: np.ndarray
    hi99: np.ndarray
    mean_delta: np.ndarray  # (n+1, L) mean change of every class's fraction
    samples: int


def removal_table(states: dict, label: int, label_name: str, units: np.ndarray, num_labels: int) -> RemovalTable:
    """Read the best-n ablation pass: removed = -E[delta_c] / E[baseline_c], band +-2.58 stderr."""
    base = float(np.asarray(states["baseline"].mean())[label])
    mean = np.asarray(states["delta"].mean()).reshape(-1, num_labels)
    var = np.asarray(states["delta"].variance()).reshape(-1, num_labels)
    n = int(np.asarray(states["baseline"].n)[label])
    removed = -mean[:, label] / base if base > 0 else np.full(mean.shape[0], np.nan)
    half = Z99 * np.sqrt(np.maximum(var[:, label], 0) / max(n, 1)) / base if base > 0 else np.nan
    return RemovalTable(label_name, np.asarray(units), np.arange(mean.shape[0]), base, removed, removed - half,
                        removed + half, mean, n)


@dataclasses.dataclass
class ContextTable:
    """Insertion in context: the change of the inserted class's pixels by the original label at the location."""

    label: str
    units: np.ndarray
    values: np.ndarray  # the inserted (99.5th percentile) values
    baseline_count: float  # mean pixel count of the class per image, unedited
    context_names: list
    samples: np.ndarray  # (Lc,) (image, location) pairs with that context
    mean_delta: np.ndarray  # (Lc,) mean change of the class's pixel count
    std_delta: np.ndarray  # (Lc,)
    added: np.ndarray  # (Lc,) mean_delta / baseline_count (the paper's "added area")
    err: np.ndarray  # (Lc,) std / baseline (the original's error bars)
    ci99: np.ndarray  # (Lc,) half width of the 99% interval of `added`

    def rows(self, min_samples: int = 1) -> list[dict]:
        """Contexts seen at least `min_samples` times, most added first."""
        keep = [c for c in range(len(self.samples)) if self.samples[c] >= min_samples and c != 0]
        keep.sort(key=lambda c: -self.added[c])
        return [{"context": self.context_names[c], "samples": int(self.samples[c]), "added": float(self.added[c]),
                 "mean_delta_pixels": float(self.mean_delta[c]), "err": float(self.err[c]),
                 "ci99": float(self.ci99[c])} for c in keep]


def context_table(states: dict, label: int, label_name: str, units, values, names) -> ContextTable:
    num_l = len(names)
    count, mean, var = conditional_readout(states["context"], num_l)
    base = float(np.asarray(states["baseline"].mean())[label])
    std = np.sqrt(np.maximum(np.nan_to_num(var[:, label]), 0))
    md = np.where(count > 0, mean[:, label], np.nan)
    scale = base if base > 0 else np.nan
    return ContextTable(label_name, np.asarray(units), np.asarray(values), base, list(names), count, md, std,
                        md / scale, std / scale, Z99 * std / np.sqrt(np.maximum(count, 1)) / scale)


# ---------------------------------------------------------------------------------------------
# Example images (for strips)


def ablation_examples(fns: GeneratorFns, z: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(K, N, H, W, 3) uint8 images of z with each ablation mask applied."""
    run = jax.jit(lambda v, z, e: fns.edited_images(v, fns.forward(v, z)[1], e))
    return to_uint8(run(fns.model.variables, jnp.asarray(z), ablation_stack(masks)))


def insertion_examples(fns: GeneratorFns, z: np.ndarray, units, values, locations: Sequence[tuple[int, int]]):
    """(N, H, W, 3) originals and (len(locations), N, H, W, 3) images with the units inserted there."""
    stack = insertion_stack(units, values, fns.num_units, fns.layer_hw)
    h, w = fns.layer_hw
    idx = np.asarray([y * w + x for y, x in locations], np.int32)
    stack = jax.tree.map(lambda a: a[idx], stack)

    @jax.jit
    def run(v, z, e):
        images, acts = fns.forward(v, z)
        return images, fns.edited_images(v, acts, e)

    orig, edited = run(fns.model.variables, jnp.asarray(z), stack)
    return to_uint8(orig), to_uint8(edited)


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8."""
    return np.asarray(jnp.clip((jnp.asarray(images) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass(frozen=True)
class GeneratorInterventionConfig:
    """What to intervene on; the defaults run the embedded toy generator. Checks its values when
    built (ConfigError naming the field)."""

    model: str = option("toy_generator", "toy_generator or proggan_<domain>")
    layer: str | None = option(None, "default: the model's default layer (layer4 for Progressive GANs, as the "
                               "original)")
    seg: str | None = option(None, "segmenter: toy or net[p][q][c] (default: toy for toy models, netpqc otherwise)")
    remove_class: str | None = option(None, "segmenter class whose units are zeroed (default: tree)")
    insert_class: str | None = option(None, "segmenter class whose units are switched on (default: door; tree for "
                                      "the toy generator, which draws no doors)")
    sample_size: int | None = option(None, "z for the ablations (default 200 toy / 10000)")
    insert_sample_size: int | None = option(None, "z for the insertion (default 50 toy / 10000)")
    dissect_sample_size: int | None = option(None, "z for the dissection that ranks units (default 1000 toy / 10000)")
    max_units: int = option(30, "ablate the best 0..N units (at most the layer's units)")
    insert_units: int = option(20, "units switched on together (at most the layer's units)")
    insert_quantile: float = option(0.995, "the value inserted units are set to: this quantile of each unit",
                                    cli=False)
    single_units: bool = option(True, "skip ablating every unit singly", flags=("--no-single-units",))
    quantile: float = option(0.01, "the dissection's top quantile (IoU at the 99th percentile)")
    batch_size: int = option(10, "z per batch (all devices)")
    chunk: int = option(8, "edited images regenerated together per sample (per device)")
    devices: int | None = option(None, "use the first N devices (default: all)")
    outdir: str = option("results", "folder under which result folders are made")
    weights: str | None = option(None, "weights folder or .pth file (default: packaged/cached)")
    checkpoint_every: int = option(10, "batches between checkpoints of a pass", cli=False)
    min_context_samples: int = option(100, "contexts seen fewer times are left out of the bar chart")
    progress: bool = option(True, "no progress bars", flags=("--no-progress",))

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """The counts and quantiles are usable (ConfigError naming the field otherwise)."""
        optional = ("sample_size", "insert_sample_size", "dissect_sample_size", "devices")
        check_whole_numbers(self, {"max_units": 1, "insert_units": 1, "batch_size": 1, "chunk": 1,
                                   "checkpoint_every": 1, "min_context_samples": 0, **dict.fromkeys(optional, 1)},
                            optional)
        for field in ("quantile", "insert_quantile"):
            if not 0 < float(getattr(self, field)) < 1:
                raise ConfigError(field, f"must be strictly between 0 and 1, got {getattr(self, field)}")


@dataclasses.dataclass
class InterventionResult:
    """The tables of one run (see RemovalTable, ContextTable) and where its files are."""

    directory: str
    layer: str
    removal: RemovalTable
    context: ContextTable
    single_unit_delta: np.ndarray | None  # (units, L) mean change of each class's fraction
    baseline: np.ndarray  # (L,) mean class fractions
    label_names: tuple
    timings: dict


def _defaults(config: GeneratorInterventionConfig, model_name: str):
    toy = model_name.startswith("toy_")
    layer = config.layer or (None if toy else "layer4")
    remove, insert = DEFAULT_CLASSES.get(model_name, ("tree", "door"))
    return (layer, config.seg or ("toy" if toy else "netpqc"), config.remove_class or remove,
            config.insert_class or insert, config.sample_size or (200 if toy else 10_000),
            config.insert_sample_size or (50 if toy else 10_000), config.dissect_sample_size or (1000 if toy else 10_000))


def check_config(config: GeneratorInterventionConfig) -> None:
    """The config's counts and quantiles are usable (ConfigError naming the field otherwise); see its `check`."""
    config.check()


def dissected_layer(config: GeneratorInterventionConfig, model=None, segmenter=None):
    """(model, segmenter, LayerResult, QuantileSketch) of the dissection this experiment relies on
    (run now unless its results folder is complete)."""
    if model is None:
        model = load(config.model, config.weights)
    layer, seg, remove, insert, *_, dissect_n = _defaults(config, model.name)
    layer = layer or model.default_layer
    if segmenter is None:
        segmenter, _ = make_segmenter(seg, None)
    for field, name in (("remove_class", remove), ("insert_class", insert)):  # before anything is computed
        if name not in segmenter.labels.names:
            raise ConfigError(field, f"{name!r} is not a label of the segmenter ({seg}); labels: "
                                     f"{', '.join(segmenter.labels.names[1:])}")
    dcfg = DissectConfig(model=model.name, seg=seg, layers=(layer,), quantile=config.quantile,
                         outdir=config.outdir, sample_size=dissect_n, batch_size=config.batch_size,
                         devices=config.devices, progress=config.progress, weights=config.weights)
    [result] = dissect(dcfg, model=model, segmenter=segmenter)
    sketch = layer_stats(result.directory)["quantiles"]
    return model, segmenter, result, sketch


def run_experiment(config: GeneratorInterventionConfig = GeneratorInterventionConfig(), *, model=None,
                      segmenter=None) -> InterventionResult:
    """Dissect (if needed), then run the ablation and insertion experiments and write their
    tables, plots, strips and report section into `<dissection folder>/generator_intervention`."""

    timings = {}
    t0 = time.perf_counter()
    model, segmenter, result, sketch = dissected_layer(config, model, segmenter)
    timings["dissection_s"] = time.perf_counter() - t0
    _, _, remove, insert, n_stats, n_insert, _ = _defaults(config, model.name)
    fns = GeneratorFns(model, result.layer, segmenter)
    labels = segmenter.labels
    remove_id, insert_id = labels.index(remove), labels.index(insert)
    out = os.path.join(result.directory, "generator_intervention")
    mesh = parallel.make_mesh(config.devices)
    runner = PassRunner(out, mesh, parallel.padded_batch_size(config.batch_size, mesh), config.checkpoint_every,
                        config.progress)
    max_units = min(config.max_units, fns.num_units)
    with contextlib.ExitStack() as lock:
        if parallel.is_primary():
            lock.enter_context(runstate.ExclusiveRun(out))
        parallel.barrier("interventions-locked")
        z_stats = sources.ZSource(n_stats, int(model.z_dim))
        ranked = ranked_units(result.iou, remove_id)
        masks = best_units_masks(ranked, max_units, fns.num_units)
        t = time.perf_counter()
        best = segclass_stats(fns, runner, z_stats, ablation_stack(masks), f"ablate_best_{remove}",
                              {"units": ranked[:max_units].tolist()}, config.chunk)
        timings["best_units_s"] = time.perf_counter() - t
        removal = removal_table(best, remove_id, remove, ranked[:max_units], fns.num_labels)
        single = None
        if config.single_units:
            t = time.perf_counter()
            s = segclass_stats(fns, runner, z_stats, ablation_stack(np.eye(fns.num_units, dtype=np.float32)),
                               "ablate_single", None, config.chunk)
            timings["single_units_s"] = time.perf_counter() - t
            single = np.asarray(s["delta"].mean()).reshape(fns.num_units, fns.num_labels)
        ins_units = ranked_units(result.iou, insert_id)[:config.insert_units]
        values = np.asarray(sketch.quantiles([config.insert_quantile]))[ins_units, 0]
        t = time.perf_counter()
        states = runner.run(
            f"insert_{insert}", insertion_step(fns, config.chunk),
            {"baseline": Moments.create(fns.num_labels), "context": Moments.create(fns.num_labels ** 2)},
            (model.variables, insertion_stack(ins_units, values, fns.num_units, fns.layer_hw)),
            sources.ZSource(n_insert, int(model.z_dim)),
            {**_fp(fns), "pass": "insert", "units": ins_units.tolist(), "values": [float(v) for v in values]})
        timings["insertion_s"] = time.perf_counter() - t
        context = context_table(states, insert_id, insert, ins_units, values, labels.names)
        res = InterventionResult(out, result.layer, removal, context, single, np.asarray(best["baseline"].mean()),
                                 labels.names, timings)
        if parallel.is_primary():
            generator_report.write_outputs(res, example_images(res, fns), result,
                                           min_context_samples=config.min_context_samples)
    return res
