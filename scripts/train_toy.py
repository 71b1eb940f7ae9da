"""Train the embedded toy networks of the scenes world with optax and ship their weights.

    python scripts/train_toy.py classifier --seed 0
    python scripts/train_toy.py classifier-head --seed 0   (after the classifier: re-fits its head)
    python scripts/train_toy.py segmenter --seed 0
    python scripts/train_toy.py generator --seed 0      (after the segmenter: it judges samples)
    python scripts/train_toy.py segmenter --seed 0 --steps 800 --balance 0.5 --prior-correction 0.75
                                                        (the shipped segmenter: rare parts such as doors count)

Each run is seeded (data, initialisation, batch order) and writes a weights folder
(jaxdissect.models.weights_io) under --out, plus its metrics into TRAINING.json and
TRAINING.md beside them. The generator is a VAE decoder (ProGAN-layered) whose middle layer
also predicts the object map through a 1x1 auxiliary head, so its units learn to lay out
objects; only the decoder is shipped. It stays the shipped toy_generator until a GAN trained by
scripts/train_toy_gan.py (which records through `write_training_md` and measures its unit ablations
with `measure_generator` here) replaces it.

The classifier-head stage keeps the trained convolutional features and fits fc6/fc7 again
(seeded, from scratch) on the pooled conv4_2 units with an L1 penalty on the fc6 kernel, so
each class reads from a few units. A dense head spreads every class over most of the 128 units; the sparse one gives the
class-specific units the paper's intervention experiment finds in VGG16 (removing a class's
best units destroys it; keeping only them keeps most of it). Features, and so every
dissection of conv layers, are unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect import cli
from jaxdissect.data.scenes import SCENE_LABELS, Scenes
from jaxdissect.experiments.generator_quality import to_network_size
from jaxdissect.models import load, registry, toy
from jaxdissect.models.weights_io import save_weights
from jaxdissect.segment.toy import ToySegmenter, category_label_ids, subsample_labels
from jaxdissect.stats import IoUTally, QuantileSketch
from jaxdissect.models.weights_io import load_weights

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent.parent / "jaxdissect" / "weights"
MEAN = np.asarray(registry.IMAGENET_NORMALIZATION["mean"], np.float32)
STD = np.asarray(registry.IMAGENET_NORMALIZATION["std"], np.float32)


def log(*a):
    print(*a, flush=True)


# ---- data --------------------------------------------------------------------------------
def scene_arrays(split: str, n: int, seed: int, cache: str | None = None) -> dict:
    """Images (uint8) and segmentations (uint8 ids) of the first n scenes of a split, cached as .npz."""
    path = pathlib.Path(cache) / f"scenes-{split}-{n}-{seed}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    t = time.time()
    ds = Scenes(split, n, seed=seed)
    out = {"image": np.zeros((n, 128, 128, 3), np.uint8), "segmentation": np.zeros((n, 4, 128, 128), np.uint8),
           "scene": np.zeros((n,), np.int32)}
    for i in range(n):
        it = ds[i]
        out["image"][i], out["segmentation"][i], out["scene"][i] = it["image"], it["segmentation"], it["scene"]
    log(f"generated {n} {split} scenes in {time.time() - t:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def normalize_imagenet(images_uint8) -> jax.Array:
    return (jnp.asarray(images_uint8, jnp.float32) / 255.0 - MEAN) / STD


def to_pm1(images_uint8) -> jax.Array:
    return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


def category_class_maps(seg: np.ndarray) -> np.ndarray:
    """Global label ids (N, 4, H, W) -> per-category class indices (0 = none)."""
    out = np.zeros(seg.shape, np.int32)
    for c, ids in enumerate(category_label_ids()[:seg.shape[1]]):
        lut = np.zeros(len(SCENE_LABELS), np.int32)
        lut[ids] = np.arange(len(ids))
        out[:, c] = lut[seg[:, c]]
    return out


def make_optimizer(lr: float, steps: int, wd: float = 1e-4):
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 20, 1), steps, lr * 0.02)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=wd))


def fit(loss_fn: Callable, params, data_fn: Callable[[np.random.Generator], Any], steps: int, lr: float,
        seed: int, every: int = 50, wd: float = 1e-4):
    """Adam(W) with warmup + cosine decay; returns the trained params and the last losses."""
    opt = make_optimizer(lr, steps, wd)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch, key):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss, aux

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    t, hist = time.time(), []
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, state, loss, aux = step(params, state, data_fn(rng), sub)
        hist.append(float(loss))
        if (i + 1) % every == 0 or i == 0:
            log(f"step {i + 1}/{steps} loss {np.mean(hist[-every:]):.4f} aux {jax.tree.map(float, aux)} "
                f"{time.time() - t:.0f}s")
    return params, float(np.mean(hist[-every:])), round(time.time() - t)


# ---- measurements shared by the script and the tests' expectations ------------------------
def zero_units_interceptor(layer: str, mask: jax.Array):
    """An nn.intercept_methods interceptor multiplying `layer`'s output by (1 - mask) per unit."""

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and ".".join(context.module.path) == layer:
            out = out * (1.0 - mask).astype(out.dtype)
        return out

    return intercept


def run_with_capture(module: nn.Module, variables, x, layer: str, mask=None):
    """(output, layer value) with `layer`'s units where mask == 1 zeroed (mask may be None)."""

    def flt(mdl, name):
        return name == "__call__" and ".".join(mdl.path) == layer

    if mask is None:
        y, st = module.apply(variables, x, capture_intermediates=flt, mutable=["intermediates"])
    else:
        with nn.intercept_methods(zero_units_interceptor(layer, mask)):
            y, st = module.apply(variables, x, capture_intermediates=flt, mutable=["intermediates"])
    node = st["intermediates"]
    for p in layer.split("."):
        node = node[p]
    return y, node["__call__"][0]


def dissect_units(acts_fn: Callable[[int], jax.Array], seg_fn: Callable[[int], np.ndarray], num_batches: int,
                  num_units: int, out_hw: tuple[int, int], quantile: float = 0.995):
    """Netdissect in two passes: per-unit `quantile` thresholds of the activations (upsampled
    bilinearly to out_hw), then IoU of (activation > threshold) with every label. Returns
    (iou (labels, units), thresholds (units,))."""

    up = jax.jit(lambda a: jax.image.resize(a, (a.shape[0], *out_hw, a.shape[-1]), "bilinear"))
    sk = QuantileSketch.create(num_units)
    upd = jax.jit(lambda s, a: s.update(a.reshape(-1, a.shape[-1])))
    for b in range(num_batches):
        sk = upd(sk, up(acts_fn(b)))
    thr = sk.quantiles([quantile])[:, 0]
    tally = IoUTally.create(num_units, len(SCENE_LABELS))
    tupd = jax.jit(lambda t, a, s, thr: t.update(a > thr, s))
    for b in range(num_batches):
        tally = tupd(tally, up(acts_fn(b)), jnp.asarray(seg_fn(b), jnp.int32), thr)
    return np.asarray(tally.iou()), np.asarray(thr)


def dissection_summary(iou: np.ndarray, min_iou: float = 0.04) -> dict:
    best = iou.argmax(0)
    best_iou = iou.max(0)
    good = best_iou > min_iou
    cats = [SCENE_LABELS.categories[b] for b in best]
    concepts = sorted({SCENE_LABELS.names[b] for b, g, c in zip(best, good, cats) if g and c in ("object", "part")})
    return {"units": int(iou.shape[1]), "units_iou_gt": int(good.sum()), "fraction": float(good.mean()),
            "object_part_concepts": concepts,
            "unit_labels": [[SCENE_LABELS.names[b], round(float(v), 4)] for b, v in zip(best, best_iou)]}


def shipped_variables(name: str, args):
    """(variables, train loss, train seconds) of an already trained weights folder (--measure-only)."""
    variables, _, meta = load_weights(os.path.join(args.out, name))
    m = meta.get("metrics", {})
    return variables, m.get("train_loss"), m.get("train_seconds")


# ---- classifier ----------------------------------------------------------------------------
def classifier_accuracy(module, variables, images, scenes, batch=100) -> tuple[float, np.ndarray]:
    f = jax.jit(lambda v, x: module.apply(v, normalize_imagenet(x)).argmax(-1))
    pred = np.concatenate([np.asarray(f(variables, images[i:i + batch])) for i in range(0, len(images), batch)])
    return float((pred == scenes).mean()), pred


def train_classifier(args) -> dict:
    spec = registry.get_spec("toy_classifier")
    config = dict(spec.default_config)
    module = spec.build(config)
    train = scene_arrays("train", args.train_size, args.seed, args.cache)
    val = scene_arrays("val", args.val_size, args.seed, args.cache)
    params = module.init(jax.random.key(args.seed), jnp.zeros((1, 128, 128, 3)))
    bs = args.batch

    def data(rng):
        idx = rng.integers(0, len(train["scene"]), bs)
        x = train["image"][idx]
        flip = rng.random(bs) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return normalize_imagenet(x), jnp.asarray(train["scene"][idx])

    def loss_fn(p, batch, key):
        x, y = batch
        logits = module.apply(p, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"acc": (logits.argmax(-1) == y).mean()}

    if args.measure_only:
        params, last, secs = shipped_variables("toy_classifier", args)
    else:
        params, last, secs = fit(loss_fn, params, data, args.steps, args.lr, args.seed)
    acc, _ = classifier_accuracy(module, params, val["image"], val["scene"])
    log(f"classifier val accuracy {acc:.4f} on {len(val['scene'])} val scenes")
    metrics = {"val_accuracy": acc, "val_size": len(val["scene"]), "train_loss": last, "train_seconds": secs}
    save_weights(os.path.join(args.out, "toy_classifier"), "toy_classifier", params, config, seed=args.seed,
                 metrics=metrics)
    metrics["dissection_conv4_2"] = measure_classifier_dissection(module, params, args)
    return metrics


def pooled_features(module, variables, images: np.ndarray, layer: str = "features.conv4_2",
                    batch: int = 100) -> np.ndarray:
    """Spatial means of `layer` (the classifier head's input) for uint8 images, in batches."""
    f = jax.jit(lambda v, x: run_with_capture(module, v, normalize_imagenet(x), layer)[1].mean((1, 2)))
    return np.concatenate([np.asarray(f(variables, images[i:i + batch])) for i in range(0, len(images), batch)])


def refit_classifier_head(args) -> dict:
    """Fit classifier.fc6/fc7 of the shipped toy classifier again, from a seeded initialization,
    on its frozen pooled conv4_2 features (train scenes and their mirror images) with an L1
    penalty on the fc6 kernel."""
    path = os.path.join(args.out, "toy_classifier")
    variables, config, meta = load_weights(path)
    module = registry.get_spec("toy_classifier").build(config)
    train = scene_arrays("train", args.train_size, args.seed, args.cache)
    val = scene_arrays("val", args.val_size, args.seed, args.cache)
    t = time.time()
    pooled = np.concatenate([pooled_features(module, variables, train["image"]),
                             pooled_features(module, variables, train["image"][:, :, ::-1])])
    labels = np.concatenate([train["scene"], train["scene"]])
    log(f"pooled conv4_2 features of {len(labels)} train images in {time.time() - t:.0f}s")
    # A fresh, seeded head: the stage gives the same weights whatever head the folder holds.
    head = module.init(jax.random.key(args.seed), jnp.zeros((1, 128, 128, 3)))["params"]["classifier"]
    head_module = toy.ToyClassifierHead(module.hidden, module.num_classes)  # fc6, ReLU, fc7 on pooled features

    def data(rng):
        idx = rng.integers(0, len(labels), args.batch)
        return jnp.asarray(pooled[idx]), jnp.asarray(labels[idx])

    def loss_fn(h, batch, key):
        x, y = batch
        logits = head_module.apply({"params": h}, x)
        l1 = jnp.abs(h["fc6"]["fc"]["kernel"]).sum()
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss + args.l1 * l1, {"acc": (logits.argmax(-1) == y).mean(), "l1": l1}

    head, last, secs = fit(loss_fn, head, data, args.steps, args.lr, args.seed, every=500)
    params = {**variables["params"], "classifier": head}
    new_vars = {**variables, "params": params}
    acc, _ = classifier_accuracy(module, new_vars, val["image"], val["scene"])
    kernel = np.abs(np.asarray(head["fc6"]["fc"]["kernel"]))
    used = int((kernel.max(1) > 1e-3 * kernel.max()).sum())
    log(f"re-fitted head: val accuracy {acc:.4f}; fc6 reads {used}/{kernel.shape[0]} conv4_2 units")
    metrics = {"val_accuracy": acc, "val_size": len(val["scene"]), "train_loss": last, "train_seconds": secs,
               "units_read": used, "l1": args.l1}
    save_weights(path, "toy_classifier", new_vars, config, seed=meta.get("seed", args.seed),
                 metrics=meta.get("metrics", {}), head=metrics)
    return metrics


def measure_classifier_dissection(module, params, args, n=1000, layer="features.conv4_2") -> dict:
    val = scene_arrays("val", n, args.seed, args.cache)
    bs = 50
    act = jax.jit(lambda v, x: run_with_capture(module, v, normalize_imagenet(x), layer)[1])
    acts = [act(params, val["image"][i:i + bs]) for i in range(0, n, bs)]
    segs = [subsample_labels(val["segmentation"][i:i + bs].astype(np.int32), 2) for i in range(0, n, bs)]
    iou, _ = dissect_units(lambda b: acts[b], lambda b: segs[b], len(acts), acts[0].shape[-1], (64, 64))
    s = dissection_summary(iou)
    log(f"dissection of {layer} on {n} val scenes: {s['units_iou_gt']}/{s['units']} units with IoU > 0.04, "
        f"object/part concepts {s['object_part_concepts']}")
    return s


PART_LABELS_SHOWN = ("roof", "door", "window", "trunk", "crown", "wheel", "head", "torso", "leg")


# ---- segmenter -----------------------------------------------------------------------------
def segmenter_metrics(seg_pred: np.ndarray, seg_true: np.ndarray) -> dict:
    """Pixel accuracy and mean IoU (over labels present in truth or prediction) per category."""
    out = {}
    for c, cat in enumerate(SCENE_LABELS.category_names):
        p, t = seg_pred[:, c].ravel(), seg_true[:, c].ravel()
        ious = []
        for k in np.union1d(np.unique(p), np.unique(t)):
            if k == 0:
                continue
            inter = np.sum((p == k) & (t == k))
            union = np.sum((p == k) | (t == k))
            ious.append(inter / union)
        out[cat] = {"pixel_accuracy": float((p == t).mean()), "mean_iou": float(np.mean(ious))}
    return out


def label_ious(seg_pred: np.ndarray, seg_true: np.ndarray) -> dict:
    """IoU of every label present in truth or prediction (each label lives in one channel)."""
    out = {}
    for k, (name, cat) in enumerate(zip(SCENE_LABELS.names, SCENE_LABELS.categories)):
        if k == 0:
            continue
        c = SCENE_LABELS.category_names.index(cat)
        p, t = seg_pred[:, c] == k, seg_true[:, c] == k
        union = int(np.sum(p | t))
        if union:
            out[name] = round(float(np.sum(p & t)) / union, 4)
    return out


def balanced_weights(targets: np.ndarray, class_counts: Sequence[int], power: float) -> list[np.ndarray]:
    """Per category (axis 1 of per-category class maps (N, C, h, w)): class weights
    frequency^-power, scaled so that the weight of an average pixel is 1 (power 0: all ones).
    Rare classes (a door is 0.2% of the pixels) then count in the loss."""
    out = []
    for c, n in enumerate(class_counts):
        freq = np.bincount(targets[:, c].ravel(), minlength=n).astype(np.float64) / targets[:, c].size
        w = np.where(freq > 0, np.maximum(freq, 1e-12) ** -power, 0.0)
        out.append((w / np.sum(freq * w)).astype(np.float32))
    return out


def prior_correction(variables, weights: Sequence[jax.Array], amount: float):
    """Subtract amount * log(class weight) from each category head's bias (classes absent from
    training keep theirs). A net trained with class weights w learns logits shifted by log w
    (it over-predicts rare classes); amount 1 undoes that shift, 0 keeps it."""
    if amount == 0:
        return variables
    params = dict(variables["params"])
    for c, w in enumerate(weights):
        head = dict(params[f"head{c}"])
        head["bias"] = head["bias"] - amount * jnp.log(jnp.where(w > 0, w, 1.0))
        params[f"head{c}"] = head
    return {**variables, "params": params}


def train_segmenter(args) -> dict:
    spec = registry.get_spec("toy_segmenter")
    config = {**spec.default_config, "class_counts": list(toy.segmenter_class_counts())}
    module = spec.build(config)
    train = scene_arrays("train", args.train_size, args.seed, args.cache)
    val = scene_arrays("val", args.val_size, args.seed, args.cache)
    targets = category_class_maps(train["segmentation"][:, :, ::2, ::2])  # half resolution
    params = module.init(jax.random.key(args.seed), jnp.zeros((1, 128, 128, 3)))
    bs, crop = args.batch, args.crop
    weights = [jnp.asarray(w) for w in balanced_weights(targets, config["class_counts"], args.balance)]

    def data(rng):
        idx = rng.integers(0, len(train["scene"]), bs)
        oy, ox = rng.integers(0, (128 - crop) // 2 + 1, 2) * 2
        x = train["image"][idx, oy:oy + crop, ox:ox + crop]
        y = targets[idx, :, oy // 2:(oy + crop) // 2, ox // 2:(ox + crop) // 2]
        return to_pm1(x), jnp.asarray(y)

    def loss_fn(p, batch, key):
        x, y = batch
        outs = module.apply(p, x)
        losses = [(weights[c][y[:, c]] * optax.softmax_cross_entropy_with_integer_labels(o, y[:, c])).mean()
                  for c, o in enumerate(outs)]
        return sum(losses), {"obj": losses[0], "part": losses[1]}

    if args.measure_only:
        params, last, secs = shipped_variables("toy_segmenter", args)
    else:
        params, last, secs = fit(loss_fn, params, data, args.steps, args.lr, args.seed)
        params = prior_correction(params, weights, args.prior_correction)
        save_weights(os.path.join(args.out, "toy_segmenter"), "toy_segmenter", params, config, seed=args.seed)
    model = registry.LoadedModel("toy_segmenter", "segmenter", module, params, config, (128, 128),
                                 spec.normalization, spec.default_layer, spec.layer_names, None)
    seg = ToySegmenter(model)
    pred = np.concatenate([np.asarray(seg.segment(to_pm1(val["image"][i:i + 50])))
                           for i in range(0, len(val["image"]), 50)])
    truth = val["segmentation"].astype(np.int32)
    metrics = {"val_size": len(val["scene"]), "train_loss": last, "train_seconds": secs,
               "per_category": segmenter_metrics(pred, truth), "label_iou": label_ious(pred, truth),
               "first100_pixel_accuracy": {cat: float((pred[:100, c] == truth[:100, c]).mean())
                                           for c, cat in enumerate(SCENE_LABELS.category_names)}}
    log(json.dumps(metrics["per_category"]))
    ious = metrics["label_iou"]
    log("part IoU: " + ", ".join(f"{n} {ious.get(n, 0):.2f}" for n in PART_LABELS_SHOWN))
    save_weights(os.path.join(args.out, "toy_segmenter"), "toy_segmenter", params, config, seed=args.seed,
                 metrics=metrics)
    return metrics


# ---- generator (VAE decoder with an object-layout auxiliary head) ----------------------------
class Encoder(nn.Module):
    z_dim: int

    @nn.compact
    def __call__(self, x):
        for i, ch in enumerate((16, 32, 64, 96, 128)):
            x = nn.leaky_relu(nn.Conv(ch, (3, 3), strides=(2, 2), padding=1, name=f"conv{i}")(x), 0.2)
        x = nn.Dense(2 * self.z_dim, name="out")(x.reshape(x.shape[0], -1))
        return x[:, :self.z_dim], x[:, self.z_dim:]


AUX_LAYER = "layer6"  # 16x16: the layer whose units are asked to lay out objects


def train_generator(args) -> dict:
    spec = registry.get_spec("toy_generator")
    config = dict(spec.default_config)
    gen = spec.build(config)
    zd = int(config["z_dim"])
    enc = Encoder(zd)
    n_obj = toy.segmenter_class_counts()[0]
    aux = nn.Conv(n_obj, (1, 1))
    train = scene_arrays("train", args.train_size, args.seed, args.cache)
    objmap = category_class_maps(train["segmentation"][:, :1, 4::8, 4::8])[:, 0]  # (N, 16, 16)
    k1, k2, k3 = jax.random.split(jax.random.key(args.seed), 3)
    params = {"gen": gen.init(k1, jnp.zeros((1, zd))), "enc": enc.init(k2, jnp.zeros((1, 128, 128, 3))),
              "aux": aux.init(k3, jnp.zeros((1, 16, 16, config["channels"][2])))}
    bs, sigma2 = args.batch, args.sigma ** 2

    def data(rng):
        idx = rng.integers(0, len(train["scene"]), bs)
        x = train["image"][idx]
        flip = rng.random(bs) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        y = np.where(flip[:, None, None], objmap[idx][:, :, ::-1], objmap[idx])
        return to_pm1(x), jnp.asarray(y)

    def loss_fn(p, batch, key):
        x, y = batch
        mu, logvar = enc.apply(p["enc"], x)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        xr, h = run_with_capture(gen, p["gen"], z, AUX_LAYER)
        rec = jnp.sum((xr - x) ** 2, axis=(1, 2, 3)).mean() / (2 * sigma2)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu ** 2 - 1 - logvar, axis=1).mean()
        ce = optax.softmax_cross_entropy_with_integer_labels(aux.apply(p["aux"], h), y).sum((1, 2)).mean()
        return (rec + kl + args.aux_weight * ce) / (128 * 128), {"rec": rec, "kl": kl, "ce": ce}

    if args.measure_only:
        variables, last, secs = shipped_variables("toy_generator", args)
    else:
        params, last, secs = fit(loss_fn, params, data, args.steps, args.lr, args.seed)
        variables = params["gen"]
        save_weights(os.path.join(args.out, "toy_generator"), "toy_generator", variables, config, seed=args.seed)
    metrics = {"train_loss": last, "train_seconds": secs}
    seg = ToySegmenter(load("toy_segmenter", weights=os.path.join(args.out, "toy_segmenter")))
    metrics.update(measure_generator(gen, variables, config, seg))
    save_sample_grid(os.path.join(args.out, "toy_generator_samples.png"), gen, variables, config)
    save_weights(os.path.join(args.out, "toy_generator"), "toy_generator", variables, config, seed=args.seed,
                 metrics=metrics)
    return metrics


def generator_samples(z_dim: int, n: int, seed: int) -> np.ndarray:
    """The fixed z of the generator measurements: numpy PCG64 standard normals."""
    return np.random.default_rng(seed).standard_normal((n, z_dim)).astype(np.float32)


def save_sample_grid(path: str, gen, variables, config, seed: int = 1) -> None:
    """The generator's first 32 measurement samples (seed `seed`) as a 4 x 8 grid, halved to 512x256."""
    from PIL import Image

    z = jnp.asarray(generator_samples(int(config["z_dim"]), 32, seed))
    grid = np.asarray(gen.apply(variables, z))
    grid = ((grid + 1) * 127.5).clip(0, 255).astype(np.uint8).reshape(4, 8, *grid.shape[1:])
    h, w = grid.shape[2:4]
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(4 * h, 8 * w, 3)
    Image.fromarray(grid).resize((4 * w, 2 * h), Image.BILINEAR).save(path)


def measure_generator(gen, variables, config, seg, n=200, seed=1, layer=AUX_LAYER, k=None) -> dict:
    """Samples' object rates by the toy segmenter (`seg`, on the images at 128 px) and the
    unit-ablation effect for every object class: zero the k units whose thresholded activations
    best match the class (IoU at the layer's 99th percentile, upsampled to 64x64)."""
    z = generator_samples(int(config["z_dim"]), n, seed)
    run = jax.jit(lambda v, z, m: run_with_capture(gen, v, z, layer, m))
    units = int(run_with_capture(gen, variables, jnp.asarray(z[:1]), layer)[1].shape[-1])
    k = k or max(units // 8, 1)
    zero = jnp.zeros((units,))
    segment = lambda im: np.asarray(seg.segment(to_network_size(im), 2))  # noqa: E731
    imgs, acts = zip(*[run(variables, z[i:i + 50], zero) for i in range(0, n, 50)])
    segs = [segment(im) for im in imgs]
    obj = np.concatenate(segs)[:, 0]
    frac = {SCENE_LABELS.names[i]: float(np.mean((obj == i).any((1, 2)))) for i in np.unique(obj) if i}
    things = ("house", "tree", "car", "boat", "person", "streetlight")
    any_thing = float(np.mean(np.isin(obj, [SCENE_LABELS.index(t) for t in things]).any((1, 2))))
    iou, _ = dissect_units(lambda b: acts[b], lambda b: segs[b], len(acts), units, (64, 64), quantile=0.99)
    ablation = {}
    for name in ("sky", "grass", "road", "water", "sand", "mountain") + things:
        c = SCENE_LABELS.index(name)
        before = int((obj == c).sum())
        if before < 200:
            continue
        top = np.argsort(-iou[c])[:k]
        mask = jnp.zeros((units,)).at[top].set(1.0)
        after_imgs = [run(variables, z[i:i + 50], mask)[0] for i in range(0, n, 50)]
        after = int(sum((segment(im)[:, 0] == c).sum() for im in after_imgs))
        ablation[name] = {"units": [int(u) for u in top], "pixels_before": before, "pixels_after": after,
                          "removed_fraction": 1 - after / before}
        log(f"ablating {k} {name} units {top.tolist()}: {before} -> {after} pixels")
    log(f"generator samples with each object: {frac}; with a house/tree/car/boat/person/streetlight: {any_thing}")
    causal = max(ablation, key=lambda name: ablation[name]["removed_fraction"]) if ablation else None
    return {"causal_class": causal, "samples": n, "sample_seed": seed, "layer": layer, "k": k,
            "object_image_fraction": frac, "fraction_with_thing": any_thing, "ablation": ablation}


# ---- main ----------------------------------------------------------------------------------
DEFAULTS = {
    "classifier": dict(steps=700, batch=32, lr=2e-3, train_size=6000),
    "classifier-head": dict(steps=6000, batch=128, lr=2e-3, train_size=6000, l1=1e-3),
    "segmenter": dict(steps=700, batch=16, lr=2e-3, train_size=6000, crop=64, balance=0.0, prior_correction=0.0),
    "generator": dict(steps=600, batch=16, lr=1e-3, train_size=6000, sigma=0.2, aux_weight=20.0),
}
STAGE_FLAGS = {"l1": "classifier-head", "crop": "segmenter", "balance": "segmenter", "prior_correction": "segmenter",
               "sigma": "generator", "aux_weight": "generator"}
STAGE_HYPERPARAMETERS = {"classifier-head": ("l1",), "segmenter": ("balance", "prior_correction")}
PROG = "train_toy.py"


def _without_cache(argv: Sequence[str]) -> list[str]:
    """The command line minus --cache DIR (a local speed-up that does not change any result)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--cache":
            skip = True
        elif not a.startswith("--cache="):
            out.append(a)
    return out


def record(out: str, which: str, metrics: dict, argv: Sequence[str], args, script: str = "scripts/train_toy.py",
           hyperparameters: Sequence[str] = ("steps", "batch", "lr", "train_size"),
           summary: Callable[[dict], list[str]] | None = None) -> None:
    """Merge this run's command (`script` and its arguments), seed and metrics into TRAINING.json
    and rewrite TRAINING.md. A --measure-only run keeps the training command and adds the measuring one.
    `summary`: the entry's TRAINING.md lines from its metrics, for stages this file does not describe."""
    path = os.path.join(out, "TRAINING.json")
    data = json.load(open(path)) if os.path.isfile(path) else {}
    command = f"python {script} " + " ".join(_without_cache(argv))
    entry = data.get(which, {}) if args.measure_only else {}
    if not args.measure_only:
        entry = {"command": command.rstrip(), "seed": args.seed,
                 "hyperparameters": {k: getattr(args, k) for k in tuple(hyperparameters)
                                     + STAGE_HYPERPARAMETERS.get(which, ())},
                 "jax": jax.__version__}
    else:
        entry["measured_by"] = command
    entry["metrics"] = metrics
    if summary is not None:
        entry["summary_lines"] = summary(metrics)
    data[which] = entry
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    write_training_md(out, data)


def write_training_md(out: str, data: dict) -> None:
    lines = ["# Training of the shipped toy networks", "",
             "Written by the training scripts (scripts/train_toy.py and the scripts/train_toy_*.py beside it; do not edit",
             "by hand). Every run is seeded; the scenes are",
             "generated by jaxdissect.data.scenes (train split for training, val split for metrics).", ""]
    for which, e in sorted(data.items()):
        m = e.get("metrics", {})
        lines += [f"## {which}", "", f"- command: `{e.get('command')}`", f"- seed: {e.get('seed')}",
                  f"- hyperparameters: {e.get('hyperparameters')}", f"- train seconds (2-core CPU): {m.get('train_seconds')}"]
        if e.get("measured_by"):
            lines.append(f"- metrics re-measured by: `{e['measured_by']}`")
        if which == "classifier":
            lines.append(f"- val accuracy: {m.get('val_accuracy')} on {m.get('val_size')} val scenes")
            d = m.get("dissection_conv4_2", {})
            lines.append(f"- dissection of features.conv4_2 on 1000 val scenes (quantile 0.995, ground-truth labels at 64x64): "
                         f"{d.get('units_iou_gt')}/{d.get('units')} units with IoU > 0.04; object/part concepts: "
                         f"{', '.join(d.get('object_part_concepts', []))}")
        elif which == "classifier-head":
            lines.append(f"- val accuracy: {m.get('val_accuracy')} on {m.get('val_size')} val scenes; fc6 reads "
                         f"{m.get('units_read')} of the 128 conv4_2 units")
        elif which == "vit":
            lines.append(f"- val accuracy: {m.get('val_accuracy')} on {m.get('val_size')} val scenes")
            for layer, d in m.get("dissection", {}).items():
                lines.append(f"- dissection of {layer} on {d.get('images')} val scenes (quantile 0.995, ground-truth "
                             f"labels at 64x64, patch grid without the class token): {d.get('units_iou_gt')}/"
                             f"{d.get('units')} units with IoU > 0.04; object/part concepts: "
                             f"{', '.join(d.get('object_part_concepts', []))}")
        elif which == "segmenter":
            for cat, v in m.get("per_category", {}).items():
                lines.append(f"- {cat}: pixel accuracy {v['pixel_accuracy']:.4f}, mean IoU {v['mean_iou']:.4f}")
            if m.get("label_iou"):
                lines.append("- part IoU: " + ", ".join(f"{n} {m['label_iou'].get(n, 0):.2f}" for n in PART_LABELS_SHOWN))
        elif which == "generator":
            lines.append(f"- samples: {m.get('samples')} (z seed {m.get('sample_seed')}); fraction with a "
                         f"house/tree/car/boat/person/streetlight: {m.get('fraction_with_thing')}")
            lines.append(f"- fraction of samples where the toy segmenter finds each object: {m.get('object_image_fraction')}")
            for name, a in m.get("ablation", {}).items():
                lines.append(f"- zeroing the {m.get('k')} {m.get('layer')} units best matching {name}: "
                             f"{a['pixels_before']} -> {a['pixels_after']} pixels (removed {a['removed_fraction']:.2f})")
        lines += e.get("summary_lines", [])  # other training scripts (train_toy_clip.py, train_toy_gan.py) add theirs
        lines.append("")
    with open(os.path.join(out, "TRAINING.md"), "w") as f:
        f.write("\n".join(lines))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags, each checked before any work; stage defaults (DEFAULTS) filled in."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("which", choices=sorted(DEFAULTS), help="the network (stage) to train")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="data, initialisation and batch order")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the weights folders and TRAINING.json/.md")
    p.add_argument("--cache", default=None, help="folder to cache generated training scenes (.npz)")
    defaults = lambda k: ", ".join(f"{w} {d[k]}" for w, d in DEFAULTS.items() if k in d)  # noqa: E731
    p.add_argument("--steps", type=cli.positive_int, help=f"optimizer steps (default: {defaults('steps')})")
    p.add_argument("--batch", type=cli.positive_int, help=f"batch size (default: {defaults('batch')})")
    p.add_argument("--lr", type=cli.positive_float, help=f"peak learning rate (default: {defaults('lr')})")
    p.add_argument("--train-size", type=cli.positive_int,
                   help=f"training scenes (default: {defaults('train_size')})")
    p.add_argument("--val-size", type=cli.positive_int, default=500, help="val scenes the metrics are measured on")
    p.add_argument("--crop", type=cli.int_multiple_of(8, 8, 128),
                   help="segmenter only: training crop, a multiple of 8 up to 128 (the net downsamples 8x) (default: 64)")
    p.add_argument("--balance", type=cli.nonnegative_float,
                   help="segmenter only: weigh each class by frequency^-BALANCE in the loss "
                        "(default: 0, unweighted; 0.5: rare parts such as doors count)")
    p.add_argument("--prior-correction", type=cli.nonnegative_float,
                   help="segmenter only: after training, move each head's bias by -A * log(class weight) of --balance "
                        "(default: 0; 1 undoes the weighting's shift)")
    p.add_argument("--sigma", type=cli.positive_float, help="generator only: VAE pixel noise std (default: 0.2)")
    p.add_argument("--measure-only", action="store_true",
                   help="measure the shipped weights in --out again instead of training")
    p.add_argument("--l1", type=cli.nonnegative_float,
                   help="classifier-head only: L1 weight on the fc6 kernel (default: 0.001)")
    p.add_argument("--aux-weight", type=cli.nonnegative_float,
                   help="generator only: weight of the object-map head (default: 20.0)")
    args = p.parse_args(argv)
    for flag, stage in STAGE_FLAGS.items():
        if getattr(args, flag) is not None and args.which != stage:
            p.fail("--" + flag.replace("_", "-"), f"applies to {stage} only, not {args.which}")
    if args.which == "classifier-head" and args.measure_only:
        p.fail("--measure-only", "classifier-head has none (measure with: classifier --measure-only)")
    cli.check_outdir(p, "--out", args.out)
    if args.cache is not None:
        cli.check_outdir(p, "--cache", args.cache)
    for k, v in DEFAULTS[args.which].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    jax.config.update("jax_default_matmul_precision", "float32")
    metrics = {"classifier": train_classifier, "classifier-head": refit_classifier_head, "segmenter": train_segmenter,
               "generator": train_generator}[args.which](args)
    record(args.out, args.which, metrics, argv, args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_script(PROG, parse_args, lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
