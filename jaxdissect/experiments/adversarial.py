"""Adversarial attacks seen through units (the paper's Fig. 5): which units does an attack change?

For each target class, images whose true and predicted class are both other classes are attacked
(targeted, `attacks.py`); per unit the change of peak activation |max_hw adv - max_hw orig| at the
dissected layer is compared across three groups: the 4 units most important to the target class,
the 4 most important to the source (originally predicted) class, and all other units. A unit's
importance to a class is the class's train balanced-accuracy drop when that unit alone is removed
(`classifier_ablation`). Groups are summarised as the original did: mean over (image, unit) pairs
with a 99% interval, mean +- 2.58 standard errors.

Pure pieces (`peak_activations`, `group_changes`, `interval`, `attack_step`) compose in user code;
`run_experiment` is the resumable, device-sharded driver: each batch of attacks is saved at once
(original uint8 image, float16 perturbation, norms, peak activations), so a killed run continues
with the batches it had not finished.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.config_error import ConfigError
from jaxdissect.capture import capture
from jaxdissect.experiments import adversarial_report, attacks
from jaxdissect.experiments import classifier_ablation as ca
from jaxdissect.passes import StageStore

IMPORTANT_UNITS = 4  # the paper's "4 most important units" of a class
CI99 = 2.58  # the original's 99% factor on the standard error
# A shorter CW schedule for CPU runs of the embedded world (the foolbox defaults, CWConfig(), take
# up to 5000 gradient steps per image); scripts/adversarial.py uses it for 'scenes' unless told otherwise.
FAST_CW = attacks.CWConfig(binary_search_steps=4, steps=100, learning_rate=0.01, initial_const=0.1)
PAPER_TARGETS = ("bedroom", "computer_room", "hangar-indoor", "ski_resort", "volleyball_court-outdoor")
GROUPS = ("target", "source", "other")
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
    [0, 1], the model's normalization inside) and the layer's peak activations before and after.
    Pure; `shard_step` runs it split over a mesh."""
    from jaxdissect.capture import capture_fn

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
        return {"perturbation": result.adversarial - x, "success": result.success, "l2": result.l2,
                "linf": result.linf, "predicted": result.predicted,
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
    """What to attack and how; the defaults run the embedded toy classifier on the scenes world."""

    model: str = "toy_classifier"
    dataset: str = "scenes"  # 'scenes', 'places', or a folder with train/ and val/ class folders
    layer: str | None = None  # default: the model's default layer
    targets: tuple[str, ...] | None = None  # default: the paper's five (places) / every scene class
    images_per_target: int | None = None  # default: 1000 (the original's) for places, 10 for scenes
    attack: attacks.AttackConfig = attacks.CWConfig()
    important_units: int = IMPORTANT_UNITS
    train_size: int | None = None  # ranking samples (the classifier-ablation experiment's defaults)
    val_size: int | None = None  # candidate images (default: the whole val split / 1000 scenes)
    ranking_file: str | None = None  # .npz with 'ranking' (classes, units) or 'single_unit_ablation_ba'
    seed: int = 0  # image order and PGD random starts
    batch_size: int = 16
    devices: int | None = None
    outdir: str = "results"
    weights: str | None = None
    examples: int = 2  # example pictures per target
    delta_threshold: float | None = None  # masked_delta level; default 0.1 x mean peak activation
    mask_chunk: int = 32
    checkpoint_every: int = 20
    progress: bool = True


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
    short = model_name[: -len("_places")] if model_name.endswith("_places") else model_name
    from jaxdissect.dissect.run import dataset_short_name

    dataset = dataset_short_name(config.dataset)
    layer_short = layer[len("features."):] if layer.startswith("features.") else layer
    return os.path.join(config.outdir, f"{short}-{dataset}-adversarial-{layer_short}-{attack_name(config.attack)}")


def attack_name(cfg: attacks.AttackConfig) -> str:
    return "cw" if isinstance(cfg, attacks.CWConfig) else f"pgd_{cfg.norm}"


def attack_description(cfg: attacks.AttackConfig) -> dict:
    return {"name": attack_name(cfg), **dataclasses.asdict(cfg)}


def _hash(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


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
        ranking = ca.rank_units(arrays["single_unit_ablation_ba"]).astype(np.int64)
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
    `fingerprint` is `ca.stage_fingerprint(model, layer)` when the caller has it already."""
    from jaxdissect import parallel
    from jaxdissect.dissect import runstate

    icfg = ca.InterventionConfig(model=config.model, dataset=config.dataset, outdir=config.outdir,
                                 weights=config.weights, batch_size=config.batch_size, mask_chunk=config.mask_chunk,
                                 checkpoint_every=config.checkpoint_every, progress=config.progress)
    directory = ca.experiment_dir(icfg, model.name, layer)
    stages = StageStore(directory)
    units = int(jax.eval_shape(ca.layer_forward(model, layer), model.variables,
                               jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)).shape[-1])
    single = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
    fingerprint = {**(fingerprint or ca.stage_fingerprint(model, layer)), "split": "train"}  # the intervention's
    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(runstate.ExclusiveRun(directory))
        parallel.barrier("adversarial-ranking-locked")
        train = ca.run_masks_stage(stages, "train_single", model, layer, train_source, single, num_classes, icfg,
                                   mesh, fingerprint, "ranking: single units (train)")
    return ca.ranking_from_stage(train, icfg.tie_break).astype(np.int64)


def _predict_fn(model, mesh):
    forward = attacks.model_forward(model)
    fn = jax.shard_map(lambda v, x: jnp.argmax(forward(v, x.astype(jnp.float32) / 255.0), -1).astype(jnp.int32),
                       mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"), check_vma=False)
    return jax.jit(fn)


def select_images(model, source, targets: Sequence[int], per_target: int, seed: int, mesh, batch_size: int,
                  cache: str | None = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """For each target, the first `per_target` images (in a seeded random order of the source)
    whose true and predicted class are both not the target: ({target: indices}, {target: true labels}).
    Predictions are made batch by batch until every target has enough (cached in `cache`)."""
    from jaxdissect import parallel
    from jaxdissect.data import sources

    order = np.random.default_rng(seed).permutation(len(source)).astype(np.int64)
    key = {"order": _hash(order), "n": len(source)}
    done_idx, done_pred, done_lab = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if cache is not None and os.path.exists(cache):
        with np.load(cache) as z:
            if json.loads(str(z["key"])) == key:
                done_idx, done_pred, done_lab = z["indices"], z["predicted"], z["labels"]
    predict = _predict_fn(model, mesh)
    size = parallel.padded_batch_size(batch_size, mesh)
    replicated = parallel.replicate(mesh, model.variables)
    rows = parallel.local_rows(mesh, size)
    positions = np.concatenate([r for _, r in rows])

    def enough():
        return all(np.sum((done_lab != t) & (done_pred != t)) >= per_target for t in targets)

    pos = len(done_idx)
    while pos < len(order) and not enough():
        idx = order[pos:pos + size]
        batch = sources.local_batch(source, idx, positions)  # this process's rows only
        if batch.labels is None:
            raise ValueError(f"{type(source).__name__} gives no class labels; the experiment needs labelled images")
        x, lab, ok = (parallel.assemble(mesh, rows, np.asarray(a, dt), size) for a, dt in
                      ((batch.inputs, np.uint8), (batch.labels, np.int32), (batch.ok, bool)))
        pred, lab, ok = parallel.gather((predict(replicated, x), lab, ok))
        n = len(idx)
        keep = np.asarray(ok, bool)[:n]
        done_idx = np.concatenate([done_idx, idx[keep]])
        done_pred = np.concatenate([done_pred, np.asarray(pred, np.int64)[:n][keep]])
        done_lab = np.concatenate([done_lab, np.asarray(lab, np.int64)[:n][keep]])
        pos += n
        if cache is not None and parallel.is_primary():
            _atomic_npz(cache, key=np.asarray(json.dumps(key)), indices=done_idx, predicted=done_pred,
                        labels=done_lab)
    chosen, labels = {}, {}
    for t in targets:
        ok = (done_lab != t) & (done_pred != t)
        chosen[t], labels[t] = done_idx[ok][:per_target], done_lab[ok][:per_target]
    return chosen, labels


def _atomic_npz(path: str, **arrays) -> None:
    from jaxdissect.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def batch_path(directory: str, target_name: str, b: int) -> str:
    return os.path.join(directory, "adversarial", target_name, f"batch_{b:05d}.npz")


def load_batch(path: str) -> dict[str, np.ndarray]:
    """One saved batch, with 'adversarial' = original / 255 + perturbation (float32, in [0, 1])."""
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["adversarial"] = np.clip(out["original"].astype(np.float32) / 255.0 + out["perturbation"].astype(np.float32),
                                 0.0, 1.0)
    return out


def _read_batch(path: str, fingerprint: str) -> dict | None:
    """A finished batch's results (without the images) if its file matches `fingerprint`."""
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        if str(z["fingerprint"]) != fingerprint:
            return None
        return {k: z[k] for k in z.files if k not in ("original", "perturbation", "fingerprint")}


def attack_batches(model, layer: str, source, target: int, target_name: str, indices: np.ndarray,
                   labels: np.ndarray, config: AdversarialConfig, mesh, directory: str, bar=None,
                   fingerprint: dict | None = None) -> TargetRecord:
    """Attack `indices` towards `target` batch by batch; finished batches (same fingerprint) are
    read back instead of recomputed. Each process loads and attacks only its devices' rows.
    `fingerprint` is `ca.stage_fingerprint(model, layer)` when the caller has it already."""
    from jaxdissect import parallel
    from jaxdissect.data import sources

    size = parallel.padded_batch_size(config.batch_size, mesh)
    step = shard_step(attack_step(model, layer, config.attack), mesh)
    replicated = parallel.replicate(mesh, model.variables)
    rows = parallel.local_rows(mesh, size)
    positions = np.concatenate([r for _, r in rows])
    base = {**(fingerprint or ca.stage_fingerprint(model, layer)),
            "attack": attack_description(config.attack), "target": int(target), "seed": config.seed}
    parts = []
    for b, start in enumerate(range(0, len(indices), size)):
        idx, lab = indices[start:start + size], labels[start:start + size]
        n = len(idx)
        fingerprint = json.dumps({**base, "indices": [int(i) for i in idx]}, sort_keys=True)
        path = batch_path(directory, target_name, b)
        saved = _read_batch(path, fingerprint)
        if parallel.agree(saved is None):  # process 0 decides, every process attacks its rows
            batch = sources.local_batch(source, idx, positions)
            wanted = idx[np.minimum(positions, n - 1)]  # padding rows repeat the first image's seed
            wanted = np.where(positions < n, wanted, idx[0])
            seeds = ((wanted * 7919 + target + config.seed * 104729) % 2**31).astype(np.int32)
            args = [parallel.assemble(mesh, rows, a, size) for a in
                    (np.asarray(batch.inputs, np.uint8), np.full(len(positions), target, np.int32), seeds)]
            out, images = parallel.gather((step(replicated, *args), args[0]))
            saved = {k: np.asarray(v)[:n] for k, v in out.items()}
            saved.update(indices=idx.astype(np.int64), labels=lab.astype(np.int64))
            if parallel.is_primary():
                _atomic_npz(path, fingerprint=np.asarray(fingerprint), original=np.asarray(images)[:n],
                            **{**saved, "perturbation": saved["perturbation"].astype(np.float16)})
            del saved["perturbation"]
        elif saved is None:
            raise FileNotFoundError(f"process {jax.process_index()} cannot read {path!r}, which process 0 has: "
                                    "the results folder must be on a filesystem every process sees")
        parts.append(saved)
        if bar is not None:
            bar.update(n)
    cat = lambda k, dtype=None: (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)).astype(  # noqa: E731
        dtype or (parts[0][k].dtype if parts else np.float32))
    return TargetRecord(target=int(target), indices=cat("indices", np.int64), labels=cat("labels", np.int64),
                        sources=cat("source", np.int64), success=cat("success", bool),
                        predicted=cat("predicted", np.int64), l2=cat("l2", np.float64), linf=cat("linf", np.float64),
                        peak_orig=cat("peak_orig", np.float32), peak_adv=cat("peak_adv", np.float32))


def layer_maps(model, layer: str, images01: np.ndarray) -> np.ndarray:
    """The layer's activations (N, h, w, units) on images in [0, 1]."""
    _, acts = capture(model, attacks.model_input(model)(jnp.asarray(images01, jnp.float32)), layer)
    return np.asarray(acts[layer])


def collect_examples(result, model, per_target: int) -> list[adversarial_report.Example]:
    """Up to `per_target` successful attacks per target with the layer's maps on both images,
    for the report's pictures (read from the saved batches; the layer runs on them here)."""
    out = []
    for name, rec in result.records.items():
        shown, b = 0, 0
        while shown < per_target and os.path.exists(batch_path(result.directory, name, b)):
            batch = load_batch(batch_path(result.directory, name, b))
            b += 1
            ok = np.flatnonzero(batch["success"])[: per_target - shown]
            if ok.size == 0:
                continue
            orig = batch["original"][ok].astype(np.float32) / 255.0
            adv = batch["adversarial"][ok]
            maps_o, maps_a = layer_maps(model, result.layer, orig), layer_maps(model, result.layer, adv)
            if maps_o.ndim != 4:
                return out  # a layer without space (fc): nothing to outline
            for j, i in enumerate(ok):
                out.append(adversarial_report.Example(name, int(batch["indices"][i]), orig[j], adv[j], maps_o[j],
                                                      maps_a[j], int(batch["source"][i]), int(batch["predicted"][i]),
                                                      rec.target))
                shown += 1
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
    from jaxdissect.data.places import is_places365

    if is_places365(dataset) or all(t in class_names for t in PAPER_TARGETS):
        return PAPER_TARGETS
    return tuple(class_names)


def run_experiment(config: AdversarialConfig = AdversarialConfig(), *, model=None, train_source=None,
                   attack_source=None, ranking: np.ndarray | None = None) -> AdversarialResult:
    """The whole experiment, resumable: ranking, image selection, attacks, summary, pictures.

    `model` (a LoadedModel), `train_source` (ranking split), `attack_source` (images to attack)
    and `ranking` ((classes, units), most important first) replace what the config names."""
    from tqdm.auto import tqdm

    from jaxdissect import parallel
    from jaxdissect.dissect import runstate
    from jaxdissect.dissect.run import resolve_layers
    from jaxdissect.models import load

    if model is None:
        model = load(config.model, config.weights)
    if model.kind != "classifier":
        raise ValueError(f"model {model.name!r} is a {model.kind}; the adversarial experiment needs a classifier")
    [layer] = resolve_layers(model, (config.layer,) if config.layer else ())
    example = jax.ShapeDtypeStruct((1, *model.input_size, 3), jnp.float32)
    units = int(jax.eval_shape(ca.layer_forward(model, layer), model.variables, example).shape[-1])
    num_classes = int(jax.eval_shape(model.module.apply, model.variables, example).shape[-1])
    class_names = ca._class_names(model, num_classes)
    target_names = config.targets or default_targets(config.dataset, class_names)
    try:
        targets = ca.resolve_classes(target_names, class_names)
    except ValueError as e:
        raise ConfigError("targets", str(e)) from None
    from jaxdissect.data.places import is_places365

    per_target = config.images_per_target or (1000 if is_places365(config.dataset) else 10)
    if ranking is None and config.ranking_file is not None:  # read before any image is loaded
        try:
            ranking = load_ranking(config.ranking_file, num_classes, units)
        except ValueError as e:
            raise ConfigError("ranking_file", str(e)) from None
    if attack_source is None or (train_source is None and ranking is None):
        icfg = ca.InterventionConfig(dataset=config.dataset, train_size=config.train_size, val_size=config.val_size)
        default_train, default_val = ca.make_sources(icfg, model)
        train_source = train_source if train_source is not None else default_train
        attack_source = attack_source if attack_source is not None else default_val
    ca._check_source_classes(attack_source, class_names, "attacked")
    mesh = parallel.make_mesh(config.devices)
    directory = experiment_dir(config, model.name, layer)
    weights_fp = ca.stage_fingerprint(model, layer)  # hashes the weights: once per run

    if ranking is None:
        ca._check_source_classes(train_source, class_names, "ranking")
        ranking = unit_ranking(model, layer, train_source, num_classes, config, mesh, weights_fp)
    ranking = np.asarray(ranking, np.int64)
    if ranking.shape != (num_classes, units):
        raise ValueError(f"ranking must be (classes, units) = ({num_classes}, {units}), got {ranking.shape}")

    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(runstate.ExclusiveRun(directory))
            _atomic_npz(os.path.join(directory, "ranking.npz"), ranking=ranking)
        parallel.barrier("adversarial-locked")
        chosen, labels = select_images(model, attack_source, targets, per_target, config.seed, mesh,
                                       config.batch_size, cache=os.path.join(directory, "selection.npz"))
        for t in targets:
            if len(chosen[t]) < per_target:
                import warnings

                warnings.warn(f"only {len(chosen[t])} of {len(attack_source)} images are neither labelled nor "
                              f"predicted {class_names[t]!r}; attacking those (asked for {per_target})")
        total = sum(len(v) for v in chosen.values())
        bar = tqdm(total=total, desc=f"attacks ({attack_name(config.attack)})", unit="img",
                   disable=not (config.progress and parallel.is_primary()), dynamic_ncols=True)
        records = {}
        for t in targets:
            name = class_names[t]
            records[name] = attack_batches(model, layer, attack_source, t, name, chosen[t], labels[t], config, mesh,
                                           directory, bar, weights_fp)
        bar.close()
        summary = summarize(records, ranking, config.important_units)
        summary.update(model=model.name, layer=layer, attack=attack_description(config.attack),
                       images_per_target=per_target, targets=[class_names[t] for t in targets])
        result = AdversarialResult(directory=directory, model=model.name, layer=layer,
                                   attack=attack_description(config.attack), class_names=class_names,
                                   ranking=ranking, records=records, summary=summary)
        if parallel.is_primary():
            adversarial_report.write_outputs(result, collect_examples(result, model, config.examples),
                                             threshold=config.delta_threshold)
        parallel.barrier("adversarial-written")
    return result


__all__ = ["peak_activations", "group_changes", "interval", "attack_step", "shard_step", "AdversarialConfig",
           "AdversarialResult", "TargetRecord", "run_experiment", "select_images", "summarize", "load_batch",
           "load_ranking", "unit_ranking", "PAPER_TARGETS", "FAST_CW"]
