"""Train the embedded toy vision transformer (`toy_vit`) on the scenes world and ship its weights.

    python scripts/train_toy_vit.py --seed 0

Seeded like the other toys (scripts/train_toy.py, whose helpers it shares): scenes of the train
split, AdamW with warmup and cosine decay, random horizontal flips. It writes
jaxdissect/weights/toy_vit and its entry 'vit' in TRAINING.json / TRAINING.md: val accuracy and
a dissection of every block (token layers read through their 8x8 patch grid, the class token
dropped) with the same measurement as the toy classifier's conv4_2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import train_toy
from jaxdissect.capturing import capture_views_fn
from jaxdissect.data.scenes import Scenes
from jaxdissect.models import registry
from jaxdissect.models.weights_io import save_weights
from jaxdissect.segment.toy import subsample_labels

NAME = "toy_vit"
HYPERPARAMETERS = ("steps", "batch", "lr", "train_size", "weight_decay")


def scene_images(split: str, n: int, seed: int, cache: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 128, 128, 3), scene classes (n,)) of the first n scenes of a split,
    cached as .npz in `cache` when given (no segmentations: a third of the memory)."""
    path = os.path.join(cache, f"scene-images-{split}-{n}-{seed}.npz") if cache else None
    if path is not None and os.path.isfile(path):
        with np.load(path) as f:
            return f["image"], f["scene"]
    t = time.time()
    ds = Scenes(split, n, seed=seed)
    images, scenes = np.zeros((n, 128, 128, 3), np.uint8), np.zeros((n,), np.int32)
    for i in range(n):
        item = ds[i]
        images[i], scenes[i] = item["image"], item["scene"]
    train_toy.log(f"generated {n} {split} scenes in {time.time() - t:.0f}s")
    if path is not None:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, image=images, scene=scenes)
    return images, scenes


def measure_layers(model: registry.LoadedModel, layers: Sequence[str], seed: int, cache: str | None,
                   n: int = 1000) -> dict:
    """Per layer: units, units with IoU > 0.04, their object/part concepts, every unit's best label,
    by train_toy.dissect_units on n val scenes (quantile 0.995, ground truth at 64x64), each layer
    read through its view (token layers as their patch grid)."""
    val = train_toy.scene_arrays("val", n, seed, cache)
    bs = 50
    forward = capture_views_fn(model, tuple(layers))
    acts = [forward(model.variables, train_toy.normalize_imagenet(val["image"][i:i + bs]), {})[1]
            for i in range(0, n, bs)]
    segs = [subsample_labels(val["segmentation"][i:i + bs].astype(np.int32), 2) for i in range(0, n, bs)]
    out = {}
    for layer in layers:
        iou, _ = train_toy.dissect_units(lambda b: acts[b][layer], lambda b: segs[b], len(acts),
                                         acts[0][layer].shape[-1], (64, 64))
        s = train_toy.dissection_summary(iou)
        s["images"] = n
        train_toy.log(f"dissection of {model.name} {layer}: {s['units_iou_gt']}/{s['units']} units with IoU > 0.04, "
                      f"object/part concepts {s['object_part_concepts']}")
        out[layer] = s
    return out


def block_layers(config) -> list[str]:
    return ["patch_embed"] + [f"blocks.{i}" for i in range(int(config["depth"]))]


def train_vit(args) -> dict:
    spec = registry.get_spec(NAME)
    config = dict(spec.default_config)
    module = spec.build(config)
    images, scenes = scene_images("train", args.train_size, args.seed, args.cache)
    val = train_toy.scene_arrays("val", args.val_size, args.seed, args.cache)
    params = module.init(jax.random.key(args.seed), jnp.zeros((1, 128, 128, 3)))
    bs = args.batch

    def data(rng):
        idx = rng.integers(0, len(scenes), bs)
        x = images[idx]
        flip = rng.random(bs) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return train_toy.normalize_imagenet(x), jnp.asarray(scenes[idx])

    def loss_fn(p, batch, key):
        x, y = batch
        logits = module.apply(p, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"acc": (logits.argmax(-1) == y).mean()}

    if args.measure_only:
        params, last, secs = train_toy.shipped_variables(NAME, args)
    else:
        params, last, secs = train_toy.fit(loss_fn, params, data, args.steps, args.lr, args.seed, wd=args.weight_decay)
    acc, _ = train_toy.classifier_accuracy(module, params, val["image"], val["scene"])
    train_toy.log(f"toy_vit val accuracy {acc:.4f} on {len(val['scene'])} val scenes")
    metrics = {"val_accuracy": acc, "val_size": len(val["scene"]), "train_loss": last, "train_seconds": secs}
    save_weights(os.path.join(args.out, NAME), NAME, params, config, seed=args.seed, metrics=metrics)
    model = registry.LoadedModel(NAME, "classifier", module, params, config, spec.input_size, spec.normalization,
                                 spec.default_layer, spec.layer_names_for(config), None,
                                 layer_views=dict(spec.layer_views_for(config)))
    metrics["dissection"] = measure_layers(model, block_layers(config), args.seed, args.cache)
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(train_toy.DEFAULT_OUT))
    p.add_argument("--cache", default=None, help="folder to cache generated scenes (.npz)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--measure-only", action="store_true",
                   help="measure the shipped weights in --out again instead of training")
    args = p.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "float32")
    metrics = train_vit(args)
    train_toy.record(args.out, "vit", metrics, argv, args, script="scripts/train_toy_vit.py",
                     hyperparameters=HYPERPARAMETERS)


if __name__ == "__main__":
    main()
