"""Train the toy CLIP of the scenes world contrastively with optax and ship its weights.

    python scripts/train_toy_clip.py --seed 0                       (train, measure, ship)
    python scripts/train_toy_clip.py --seed 0 --measure-only        (measure the shipped weights)
    python scripts/train_toy_clip.py --seed 0 --text-encoder bow --out OTHER_DIR   (the comparison)

Images are the train split's scenes, box-downsampled to 64x64, and with probability
--crop-fraction a window of the scene instead (64 px windows shown as they are, 32 px windows
enlarged to 64: CROP_WINDOWS), so that it also learns what a part of a scene shows, as
CLIP-Dissect's window probes ask of it; each step pairs every image of
the batch with a fresh random caption of its exact composition, or of the window's (jaxdissect.data.captions), and
minimizes CLIP's symmetric cross-entropy over the batch's image-text similarities (learned
temperature). Metrics on the val split: zero-shot scene classification (the 8 classes, prompt
ensembles over each class's synonyms), text-to-image retrieval of object and attribute phrases
(precision@10, recall@10, R-precision) and of each image's full caption (recall@10).
The run's command, seed, hyperparameters and metrics go to TRAINING.json / TRAINING.md beside
the other toys (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect.data.captions import (SCENE_WORDS, THINGS, caption, full_caption, grid_windows,
                                     render_with_windows)
from jaxdissect.data.scenes import SCENE_CLASSES
from jaxdissect.models import registry, toy_clip
from jaxdissect.models.clip_encoder import ClipEncoder, class_text_features, retrieval_at_k, zero_shot_accuracy
from jaxdissect.models.weights_io import save_weights

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_toy import DEFAULT_OUT, _without_cache, fit, log, write_training_md  # noqa: E402

NAME = "toy_clip"
# Windows (y0, y1, x0, x1) of a 128 px scene that --crop-fraction trains on, each captioned with
# what is visible in it: 64 px windows every 32 px, and 32 px windows (shown at 64 px, bicubic).
CROP_WINDOWS = grid_windows(128, 64, 32) + grid_windows(128, 32, 32)


def window_image(image: np.ndarray, window: tuple[int, int, int, int], size: int = 64) -> np.ndarray:
    """The window of a uint8 HWC image at size x size (bicubic when it is smaller), uint8."""
    y0, y1, x0, x1 = window
    crop = image[y0:y1, x0:x1]
    if crop.shape[:2] == (size, size):
        return crop
    up = jax.image.resize(jnp.asarray(crop, jnp.float32), (size, size, 3), "cubic")
    return np.clip(np.rint(np.asarray(up)), 0, 255).astype(np.uint8)


def scene_data(split: str, n: int, seed: int, cache: str | None = None, windows: bool = False) -> dict:
    """64x64 uint8 images (2x2 box-averaged from 128), scene classes and compositions of the first n
    scenes; with `windows`, also the 128 px images ('full') and each CROP_WINDOWS window's composition."""
    name = f"clip-scenes-{split}-{n}-{seed}" + ("-windows" if windows else "")
    path = pathlib.Path(cache) / f"{name}.pkl" if cache else None
    if path is not None and path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    t = time.time()
    images = np.zeros((n, 64, 64, 3), np.uint8)
    comps, full, window_comps = [], np.zeros((n, 128, 128, 3), np.uint8) if windows else None, []
    for i in range(n):
        im, _, comp, in_windows = render_with_windows(seed, split, i, CROP_WINDOWS if windows else ())
        images[i] = np.rint(im.reshape(64, 2, 64, 2, 3).astype(np.float32).mean((1, 3))).astype(np.uint8)
        comps.append(comp)
        if windows:
            full[i] = im
            window_comps.append(in_windows)
    scene = np.asarray([SCENE_CLASSES.index(c.scene) for c in comps], np.int32)
    log(f"rendered {n} {split} scenes with their compositions in {time.time() - t:.0f}s")
    out = {"image": images, "scene": scene, "composition": comps}
    if windows:
        out.update(full=full, window_compositions=window_comps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(out, f)
    return out


def class_prompts() -> dict[str, list[str]]:
    """Zero-shot prompts per scene class: 'a <synonym>' and 'a photo of a <synonym>'."""
    art = lambda w: ("an " if w[0] in "aeiou" else "a ") + w  # noqa: E731
    return {c: [p for w in SCENE_WORDS[c] for p in (art(w), "a photo of " + art(w))] for c in SCENE_CLASSES}


# Retrieval probes: phrase -> predicate on a Composition (is the phrase true of the scene?)
def _has_color(kind, color):
    return lambda c: any(t.kind == kind and t.color == color for t in c.things + c.mountains + c.grounds)


def _has_part(kind, part):
    return lambda c: any(t.kind == kind and t.part(part) is not None for t in c.things)


RETRIEVAL_PHRASES = {
    **{f"a {k}" if k != "person" else "a person": (lambda k: lambda c: c.count(k) > 0)(k)
       for k in THINGS + ("mountain",)},
    "clouds": lambda c: bool(c.clouds), "water": lambda c: c.count("water") > 0,
    "sand": lambda c: c.count("sand") > 0, "a road": lambda c: c.count("road") > 0,
    "a red house": _has_color("house", "red"), "a blue car": _has_color("car", "blue"),
    "a white car": _has_color("car", "white"), "an orange tree": _has_color("tree", "orange"),
    "a house with a blue door": lambda c: any(t.kind == "house" and t.part("door") is not None
                                              and t.part("door").color == "blue" for t in c.things),
    "a boat with a red sail": lambda c: any(t.kind == "boat" and t.part("sail") is not None
                                            and t.part("sail").color == "red" for t in c.things),
    "a person in a yellow shirt": _has_color("person", "yellow"),
    "snowy mountains": lambda c: any(m.snow for m in c.mountains),
    "two cars": lambda c: c.count("car") == 2, "three houses": lambda c: c.count("house") == 3,
    "a streetlight with a yellow lamp": lambda c: any(t.kind == "streetlight" and t.part("lamp") is not None
                                                      and t.part("lamp").color == "yellow" for t in c.things),
    "a tree with a trunk": _has_part("tree", "trunk"),
}


def measure(encoder: ClipEncoder, val: dict, k: int = 10) -> dict:
    """Zero-shot accuracy, phrase retrieval and full-caption retrieval on the val scenes."""
    img = encoder.encode_images(val["image"])
    prompts = class_prompts()
    acc = zero_shot_accuracy(img, class_text_features(encoder, prompts), val["scene"])
    phrases = list(RETRIEVAL_PHRASES)
    rel = np.array([[RETRIEVAL_PHRASES[p](c) for c in val["composition"]] for p in phrases])
    r = retrieval_at_k(img, encoder.encode_text(phrases), rel, k)
    per_phrase = {p: {"precision@10": float(r["precision"][i]), "recall@10": float(r["recall"][i]),
                      "r_precision": float(r["r_precision"][i]), "relevant": int(r["relevant"][i])}
                  for i, p in enumerate(phrases)}
    caps = [full_caption(c) for c in val["composition"]]
    same = np.array([[a == b for b in caps] for a in caps])  # identical captions count as hits
    rc = retrieval_at_k(img, encoder.encode_text(caps), same, k)
    objects = [p for p in phrases if p in [f"a {t}" for t in THINGS + ("mountain",)]]
    return {"val_size": len(val["scene"]), "zero_shot_accuracy": acc,
            "object_phrase_precision@10": float(np.mean([per_phrase[p]["precision@10"] for p in objects])),
            "object_phrase_r_precision": float(np.mean([per_phrase[p]["r_precision"] for p in objects])),
            "full_caption_hit@10": float(np.mean(rc["precision"] > 0)), "phrases": per_phrase}


def train(args) -> dict:
    config = {**toy_clip.DEFAULT_CONFIG, "text_encoder": args.text_encoder}
    spec = registry.get_spec(NAME)
    module = spec.build(config)
    tok = toy_clip.tokenizer_for(config)
    train_data = scene_data("train", args.train_size, args.seed, args.cache, windows=args.crop_fraction > 0)
    val = scene_data("val", args.val_size, args.seed, args.cache)
    params = module.init(jax.random.key(args.seed), jnp.zeros((1, 64, 64, 3)))
    images = train_data["image"]
    comps = train_data["composition"]
    bs = args.batch

    def data(rng):
        idx = rng.choice(len(images), bs, replace=False)
        x = images[idx]
        what = [comps[i] for i in idx]
        if args.crop_fraction > 0:  # some images replaced by a window of the scene, captioned by its contents
            cropped = rng.random(bs) < args.crop_fraction
            which = rng.integers(len(CROP_WINDOWS), size=bs)
            for j in np.flatnonzero(cropped):
                x[j] = window_image(train_data["full"][idx[j]], CROP_WINDOWS[which[j]])
                what[j] = train_data["window_compositions"][idx[j]][which[j]]
        flip = rng.random(bs) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        caps = [caption(c, rng) for c in what]
        return jnp.asarray(x, jnp.float32) / 127.5 - 1.0, jnp.asarray(tok(caps))

    def loss_fn(p, batch, key):
        x, t = batch
        fi, ft = module.apply(p, x, t)
        fi = fi / jnp.linalg.norm(fi, axis=-1, keepdims=True)
        ft = ft / jnp.linalg.norm(ft, axis=-1, keepdims=True)
        scale = jnp.exp(jnp.minimum(p["params"]["logit_scale"], np.log(100.0)))
        logits = scale * fi @ ft.T
        labels = jnp.arange(x.shape[0])
        loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
        acc = jnp.mean(jnp.argmax(logits, axis=1) == labels)
        return loss, {"batch_i2t_acc": acc, "scale": scale}

    out_dir = os.path.join(args.out, NAME)
    if args.measure_only:
        encoder = ClipEncoder.load(NAME, weights=out_dir)
        last, secs = None, None
    else:
        params, last, secs = fit(loss_fn, params, data, args.steps, args.lr, args.seed)
        save_weights(out_dir, NAME, params, config, seed=args.seed)
        encoder = ClipEncoder.load(NAME, weights=out_dir)
    metrics = measure(encoder, val)
    if not args.measure_only:
        metrics.update({"train_loss": last, "train_seconds": secs})
        save_weights(out_dir, NAME, encoder.model.variables, config, seed=args.seed, metrics=metrics)
    log(json.dumps({k: v for k, v in metrics.items() if k != "phrases"}))
    for p, v in metrics["phrases"].items():
        log(f"  {p!r}: {v}")
    return metrics


def summary_lines(m: dict) -> list[str]:
    """TRAINING.md lines for the toy CLIP's metrics."""
    lines = [f"- zero-shot scene classification (8 classes, prompts 'a <synonym>' / 'a photo of a <synonym>'): "
             f"accuracy {m.get('zero_shot_accuracy'):.3f} on {m.get('val_size')} val scenes",
             f"- object phrases ('a house', 'a car', ...), text-to-image retrieval over the val scenes: mean "
             f"precision@10 {m.get('object_phrase_precision@10'):.3f}, mean R-precision "
             f"{m.get('object_phrase_r_precision'):.3f}",
             f"- each val scene's full caption retrieves it (or a scene with the same caption) among the 10 best: "
             f"{m.get('full_caption_hit@10'):.3f}",
             "- per phrase (precision@10 / recall@10 / R-precision / val scenes where it is true):"]
    for p, v in m.get("phrases", {}).items():
        lines.append(f"  - {p!r}: {v['precision@10']:.2f} / {v['recall@10']:.3f} / {v['r_precision']:.2f} / "
                     f"{v['relevant']}")
    if m.get("comparison"):
        lines.append(f"- text encoder comparison: {m['comparison']}")
    return lines


def record(out: str, metrics: dict, argv: Sequence[str], args) -> None:
    """Merge this run into TRAINING.json under 'toy_clip' and rewrite TRAINING.md."""
    path = os.path.join(out, "TRAINING.json")
    data = json.load(open(path)) if os.path.isfile(path) else {}
    command = "python scripts/train_toy_clip.py " + " ".join(_without_cache(argv))
    entry = dict(data.get(NAME, {})) if args.measure_only else {}
    if args.measure_only:
        entry["measured_by"] = command
        metrics = {**entry.get("metrics", {}), **metrics}
    else:
        entry = {"command": command, "seed": args.seed, "jax": jax.__version__,
                 "hyperparameters": {k: getattr(args, k) for k in ("steps", "batch", "lr", "train_size", "text_encoder",
                                                                    "crop_fraction")}}
    entry["metrics"] = metrics
    entry["summary_lines"] = summary_lines(metrics)
    data[NAME] = entry
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    write_training_md(out, data)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--cache", default=None, help="folder to cache the rendered scenes and compositions (.pkl)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-size", type=int, default=8000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--text-encoder", choices=("transformer", "bow"), default="transformer")
    p.add_argument("--crop-fraction", type=float, default=0.5,
                   help="probability that a training image is a window of its scene (CROP_WINDOWS: 64 and 32 px) "
                        "captioned with what the window shows")
    p.add_argument("--measure-only", action="store_true", help="measure the weights in --out again instead of training")
    args = p.parse_args(argv)
    if args.batch < 2 or args.steps < 1 or args.train_size < args.batch:
        p.error("need --batch >= 2, --steps >= 1 and --train-size >= --batch")
    if not 0 <= args.crop_fraction <= 1:
        p.error(f"argument --crop-fraction: must be between 0 and 1, got {args.crop_fraction}")
    jax.config.update("jax_default_matmul_precision", "float32")
    metrics = train(args)
    record(args.out, metrics, argv, args)


if __name__ == "__main__":
    main()
