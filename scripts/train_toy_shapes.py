"""Train the shape-trained toy classifier (`toy_classifier_shapes`) and ship its weights.

    python scripts/train_toy_shapes.py --seed 0 --steps 1600 --stylized-fraction 0.75   (the shipped run)
    python scripts/train_toy_shapes.py --seed 0 --measure-only   (measure the shipped weights)
    python scripts/train_toy_shapes.py --init-from jaxdissect/weights/toy_classifier_shapes --out OTHER
        (continue training from shipped weights; the earlier run is recorded with the new one)

The shipped toy classifier tells scenes apart by their colours, so its units follow surfaces.
This one has the same layer names (a little narrower, to fit the package's size budget) and is
trained on two tasks at once: the scene class of plain scenes, and which objects and parts are
present (multi-label, at least 32 pixels) in plain scenes and in their stylized twins (same
geometry, other materials and colours; each training image is replaced by one of its
--style-seeds twins with probability --stylized-fraction, and the scene loss skips those).
Surfaces decide the scene class; only shapes say which objects are present in a stylized
twin. Only the scene classifier is shipped (the presence head is dropped). The run's command, seed,
hyperparameters and metrics go to TRAINING.json / TRAINING.md beside the other toys (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect import cli
from jaxdissect.data.scenes import OBJECTS, PARTS, SCENE_LABELS, Scenes
from jaxdissect.models import registry, toy
from jaxdissect.models.weights_io import load_weights, save_weights

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_toy import (DEFAULT_OUT, classifier_accuracy, fit, log, measure_classifier_dissection,  # noqa: E402
                       normalize_imagenet, record, scene_arrays)

NAME = "toy_classifier_shapes"
PRESENCE_LABELS = OBJECTS + PARTS  # what the presence head predicts
MIN_PIXELS = 32  # a label counts as present with at least this many pixels (of 128x128)


def stylized_images(split: str, n: int, seed: int, style_seed: int, cache: str | None = None) -> np.ndarray:
    """uint8 images of the stylized twins (materials and colours changed) of the first n scenes."""
    path = pathlib.Path(cache) / f"scenes-{split}-{n}-{seed}-stylized{style_seed}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return f["image"]
    t = time.time()
    ds = Scenes(split, n, seed=seed, stylized=True, style_seed=style_seed)
    images = np.stack([ds[i]["image"] for i in range(n)])
    log(f"generated {n} stylized {split} scenes (style seed {style_seed}) in {time.time() - t:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=images)
    return images


def presence(segmentations: np.ndarray) -> np.ndarray:
    """(N, len(PRESENCE_LABELS)) float32: 1 where an object or part covers at least MIN_PIXELS pixels."""
    ids = np.asarray([SCENE_LABELS.names.index(n) for n in PRESENCE_LABELS])
    out = np.zeros((len(segmentations), len(ids)), np.float32)
    for i, seg in enumerate(segmentations):
        counts = np.bincount(seg[:2].ravel(), minlength=len(SCENE_LABELS))
        out[i] = counts[ids] >= MIN_PIXELS
    return out


class ShapeTrainingNet(nn.Module):
    """The shipped classifier's layers plus a presence head on the pooled last conv layer."""

    stages: Sequence[Sequence[int]]
    hidden: int
    num_classes: int
    num_presence: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pooled = jnp.mean(toy.ToyFeatures(self.stages, name="features")(x), axis=(1, 2))
        logits = toy.ToyClassifierHead(self.hidden, self.num_classes, name="classifier")(pooled)
        return logits, nn.Dense(self.num_presence, name="presence")(pooled)


def presence_accuracy(net, variables, images: np.ndarray, targets: np.ndarray, batch: int = 100) -> float:
    """Mean over labels of the balanced accuracy ((TPR + TNR) / 2) of the presence head at logit 0."""
    f = jax.jit(lambda v, x: net.apply(v, normalize_imagenet(x))[1] > 0)
    pred = np.concatenate([np.asarray(f(variables, images[i:i + batch])) for i in range(0, len(images), batch)])
    t = targets > 0.5
    tpr = (pred & t).sum(0) / np.maximum(t.sum(0), 1)
    tnr = (~pred & ~t).sum(0) / np.maximum((~t).sum(0), 1)
    keep = (t.sum(0) > 0) & ((~t).sum(0) > 0)
    return float(((tpr + tnr) / 2)[keep].mean())


def fit_two_tasks(args, net: ShapeTrainingNet) -> tuple[dict, float, int]:
    """(trained variables with the presence head, last loss, seconds): scene loss on plain images,
    presence loss on all, a stylized twin replacing each image with probability --stylized-fraction."""
    train_set = scene_arrays("train", args.train_size, args.seed, args.cache)
    twins = [stylized_images("train", args.train_size, args.seed, s, args.cache) for s in range(args.style_seeds)]
    targets = presence(train_set["segmentation"])
    bs = args.batch

    def data(rng):
        idx = rng.integers(0, args.train_size, bs)
        x = train_set["image"][idx]
        styled = rng.random(bs) < args.stylized_fraction
        which = rng.integers(0, len(twins), bs)
        for j in np.flatnonzero(styled):
            x[j] = twins[which[j]][idx[j]]
        flip = rng.random(bs) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return (normalize_imagenet(x), jnp.asarray(train_set["scene"][idx]), jnp.asarray(targets[idx]),
                jnp.asarray(~styled, jnp.float32))

    def loss_fn(p, batch, key):
        x, y, present, plain = batch
        logits, presence_logits = net.apply(p, x)
        scene = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        scene_loss = (scene * plain).sum() / jnp.maximum(plain.sum(), 1.0)
        presence_loss = optax.sigmoid_binary_cross_entropy(presence_logits, present).mean()
        return scene_loss + args.presence_weight * presence_loss, {"scene": scene_loss, "presence": presence_loss}

    params = net.init(jax.random.key(args.seed), jnp.zeros((1, 128, 128, 3)))
    if args.init_from:
        params = start_from(params, args.init_from, net)
    return fit(loss_fn, params, data, args.steps, args.lr, args.seed)


def start_from(params: dict, folder: str, net: ShapeTrainingNet) -> dict:
    """`params` with the features and scene classifier of the weights in `folder` (a
    toy_classifier_shapes folder of the same widths); the presence head keeps its fresh start."""
    variables, config, _ = load_weights(folder)
    mine = {"stages": [list(s) for s in net.stages], "hidden": net.hidden, "num_classes": net.num_classes}
    theirs = {"stages": [list(s) for s in config.get("stages", [])], "hidden": config.get("hidden"),
              "num_classes": config.get("num_classes")}
    if theirs != mine:
        raise ValueError(f"--init-from {folder}: its network {theirs} is not {NAME}'s {mine}")
    return {"params": {**params["params"], **{k: variables["params"][k] for k in ("features", "classifier")}}}


def training_lineage(folder: str) -> list[dict]:
    """The runs that trained the weights in `folder`, oldest first, from the TRAINING.json beside it."""
    path = os.path.join(os.path.dirname(os.path.abspath(folder)), "TRAINING.json")
    entry = json.load(open(path)).get("classifier-shapes", {}) if os.path.isfile(path) else {}
    if not entry:
        return [{"command": f"(weights in {os.path.basename(os.path.abspath(folder))}; no training record beside them)"}]
    m = entry.get("metrics", {})
    return list(m.get("continued_from", [])) + [{"command": entry.get("command"), "steps": entry.get(
        "hyperparameters", {}).get("steps"), "train_seconds": m.get("train_seconds")}]


def train(args) -> dict:
    spec = registry.get_spec(NAME)
    config = dict(spec.default_config)
    shipped = spec.build(config)
    net = ShapeTrainingNet(shipped.stages, shipped.hidden, shipped.num_classes, len(PRESENCE_LABELS))
    val = scene_arrays("val", args.val_size, args.seed, args.cache)
    if args.measure_only:
        path = os.path.join(args.out, NAME)
        variables, _, meta = load_weights(path)
        m = meta.get("metrics", {})
        last, secs, presence_params = m.get("train_loss"), m.get("train_seconds"), None
    else:
        lineage = training_lineage(args.init_from) if args.init_from else None
        params, last, secs = fit_two_tasks(args, net)
        variables = {"params": {k: params["params"][k] for k in ("features", "classifier")}}
        presence_params = params
        if args.keep_training_params:  # the presence head too, for looking at it later (not shipped)
            save_weights(args.keep_training_params, NAME + "-training", params, config, seed=args.seed)
    val_styled = Scenes("val", args.val_size, seed=args.seed, stylized=True)
    styled_images = np.stack([val_styled[i]["image"] for i in range(args.val_size)])
    metrics = {"val_size": args.val_size, "train_loss": last, "train_seconds": secs}
    if args.measure_only and m.get("continued_from"):
        metrics["continued_from"] = m["continued_from"]
    elif not args.measure_only and lineage:
        metrics["continued_from"] = lineage
    metrics["val_accuracy"], _ = classifier_accuracy(shipped, variables, val["image"], val["scene"])
    metrics["val_accuracy_stylized"], _ = classifier_accuracy(shipped, variables, styled_images, val["scene"])
    if presence_params is not None:
        val_targets = presence(val["segmentation"])
        metrics["presence_balanced_accuracy"] = presence_accuracy(net, presence_params, val["image"], val_targets)
        metrics["presence_balanced_accuracy_stylized"] = presence_accuracy(net, presence_params, styled_images,
                                                                           val_targets)
    else:  # the presence head is not shipped: keep what training measured
        for k in ("presence_balanced_accuracy", "presence_balanced_accuracy_stylized"):
            metrics[k] = m.get(k)
    log(f"{NAME}: scene accuracy {metrics['val_accuracy']:.4f} on val scenes, "
        f"{metrics['val_accuracy_stylized']:.4f} on their stylized twins; presence balanced accuracy "
        f"{metrics['presence_balanced_accuracy']} / {metrics['presence_balanced_accuracy_stylized']}")
    save_weights(os.path.join(args.out, NAME), NAME, variables, config, seed=args.seed, metrics=metrics)
    metrics["dissection_conv4_2"] = measure_classifier_dissection(shipped, variables, args)
    return metrics


def summary_lines(m: dict) -> list[str]:
    d = m.get("dissection_conv4_2", {})
    earlier = [f"- continued from the weights of: `{r['command']}`"
               + (f" ({r['steps']} steps, {r['train_seconds']} s)" if r.get("steps") else "")
               for r in m.get("continued_from", [])]
    return earlier + [f"- scene accuracy: {m.get('val_accuracy')} on {m.get('val_size')} val scenes, "
            f"{m.get('val_accuracy_stylized')} on their stylized twins (materials and colours changed)",
            f"- presence head (not shipped), balanced accuracy over {len(PRESENCE_LABELS)} objects and parts: "
            f"{m.get('presence_balanced_accuracy')} on val scenes, {m.get('presence_balanced_accuracy_stylized')} "
            f"on their stylized twins",
            f"- dissection of features.conv4_2 on 1000 val scenes (quantile 0.995, ground-truth labels at 64x64): "
            f"{d.get('units_iou_gt')}/{d.get('units')} units with IoU > 0.04; object/part concepts: "
            f"{', '.join(d.get('object_part_concepts', []))}"]


HYPERPARAMETERS = ("steps", "batch", "lr", "train_size", "stylized_fraction", "style_seeds", "presence_weight")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="train_toy_shapes.py", description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="data, initialisation and batch order")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the weights folders and TRAINING.json/.md")
    p.add_argument("--cache", default=None, help="folder to cache generated training scenes (.npz)")
    p.add_argument("--steps", type=cli.positive_int, default=1600, help="optimizer steps")
    p.add_argument("--batch", type=cli.positive_int, default=32, help="batch size")
    p.add_argument("--lr", type=cli.positive_float, default=2e-3, help="peak learning rate")
    p.add_argument("--train-size", type=cli.positive_int, default=6000, help="training scenes")
    p.add_argument("--val-size", type=cli.positive_int, default=500, help="val scenes the metrics are measured on")
    p.add_argument("--stylized-fraction", type=cli.float_in(0, 1), default=0.75,
                   help="probability that a training image is replaced by a stylized twin")
    p.add_argument("--style-seeds", type=cli.positive_int, default=4, help="stylized twins per training scene")
    p.add_argument("--presence-weight", type=cli.nonnegative_float, default=4.0,
                   help="weight of the presence loss against the scene loss")
    p.add_argument("--keep-training-params", default=None,
                   help="also save the whole trained network, presence head included, to this folder")
    p.add_argument("--init-from", default=None, metavar="FOLDER",
                   help="start from the features and scene classifier of these toy_classifier_shapes weights "
                        "(the presence head starts fresh); the run that made them is recorded with this one")
    p.add_argument("--measure-only", action="store_true",
                   help="measure the shipped weights in --out again instead of training")
    args = p.parse_args(argv)
    cli.check_outdir(p, "--out", args.out)
    if args.cache is not None:
        cli.check_outdir(p, "--cache", args.cache)
    if args.init_from is not None:
        cli.check_existing(p, "--init-from", args.init_from)
        if args.measure_only:
            p.fail("--init-from", "it trains; it cannot go with --measure-only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run(args):
        jax.config.update("jax_default_matmul_precision", "float32")
        record(args.out, "classifier-shapes", train(args), argv, args, script="scripts/train_toy_shapes.py",
               hyperparameters=HYPERPARAMETERS, summary=summary_lines)
        return 0

    return cli.run_script("train_toy_shapes.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
