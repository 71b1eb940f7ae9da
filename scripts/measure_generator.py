"""Measure generators of the scenes world with the toy networks and print them side by side.

    python scripts/measure_generator.py                                   (the shipped toy_generator)
    python scripts/measure_generator.py --baseline OLD_WEIGHTS_FOLDER     (and another one beside it)

For each generator: the toy FID (Frechet distance of the toy classifier's pooled conv4_2 units,
--samples generated images vs as many val scenes) against scenes of --classes and against scenes
of all classes, both shown at the generator's resolution; the toy classifier's confidence and
the classes it sees; the toy segmenter's pixel frequency per object and part label. A second set
of val scenes measured the same way gives the floor (real vs real). --json writes everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_toy  # noqa: E402
import train_toy_gan  # noqa: E402
from train_toy_gan import DEFAULT_CLASSES, class_scenes, downsample  # noqa: E402

from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS  # noqa: E402
from jaxdissect.data.zdataset import standard_z_sample  # noqa: E402
from jaxdissect.experiments import generator_quality as gq  # noqa: E402
from jaxdissect.models import load  # noqa: E402
from jaxdissect.segment.toy import ToySegmenter  # noqa: E402

SHOWN_LABELS = ("sky", "cloud", "mountain", "grass", "road", "water", "sand", "house", "tree", "car", "boat",
                "person", "streetlight", "roof", "door", "window", "trunk", "crown", "wheel", "head", "torso", "leg")


def generated_batches(model, n: int, seed: int, batch: int):
    z = standard_z_sample(n, int(model.z_dim), seed)
    run = jax.jit(lambda v, z: model.module.apply(v, z))
    for i in range(0, n, batch):
        yield run(model.variables, jnp.asarray(z[i:i + batch]))


def real_batches(images_uint8: np.ndarray, resolution: int, batch: int):
    for i in range(0, len(images_uint8), batch):
        yield jnp.asarray(downsample(images_uint8[i:i + batch], resolution), jnp.float32) / 127.5 - 1.0


def measure(generators: dict, classes: Sequence[str], samples: int, seed: int, batch: int = 50,
            cache: str | None = None, data_seed: int = 0) -> dict:
    """{'generators': {name: {'resolution', 'vs_classes', 'vs_all'}}, 'real_vs_real': {...}}."""
    classifier, segmenter = load("toy_classifier"), ToySegmenter()
    names = SCENE_LABELS.names
    figs = lambda batches: gq.image_set_figures(batches, classifier, segmenter)  # noqa: E731
    sub = class_scenes("val", classes, 2 * samples, data_seed, cache)
    every = class_scenes("val", SCENE_CLASSES, samples, data_seed, cache)
    refs = {}
    out = {"classes": list(classes), "samples": samples, "z_seed": seed, "generators": {}, "real_vs_real": {}}
    for name, model in generators.items():
        res = int(jax.eval_shape(lambda v: model.module.apply(v, jnp.zeros((1, int(model.z_dim)))),
                                 model.variables).shape[1])
        if res not in refs:
            refs[res] = (figs(real_batches(sub[:samples], res, batch)), figs(real_batches(every, res, batch)),
                         figs(real_batches(sub[samples:], res, batch)))
            out["real_vs_real"][str(res)] = gq.compare(refs[res][2], refs[res][0], names, SCENE_CLASSES)
        gen = figs(generated_batches(model, samples, seed, batch))
        out["generators"][name] = {"resolution": res,
                                   "vs_classes": gq.compare(gen, refs[res][0], names, SCENE_CLASSES),
                                   "vs_all": gq.compare(gen, refs[res][1], names, SCENE_CLASSES)}
    return out


def table(result: dict) -> str:
    """The figures side by side, as text."""
    gens = result["generators"]
    cols = [(name, g["vs_classes"], g["vs_all"]) for name, g in gens.items()]
    cols += [(f"real ({r} px)", f, None) for r, f in result["real_vs_real"].items()]
    row = lambda label, cells: f"{label:42s}" + "".join(f"{c:>15s}" for c in cells)  # noqa: E731
    lines = [f"{result['samples']} generated images (z seed {result['z_seed']}) and as many val scenes, through the "
             "toy networks; 'real' = another set of val scenes", row("", [c[0] for c in cols])]
    lines.append(row(f"toy FID vs {'/'.join(result['classes'])} scenes", [f"{c[1]['toy_fid']:.1f}" for c in cols]))
    lines.append(row("toy FID vs scenes of all 8 classes", [f"{c[2]['toy_fid']:.1f}" if c[2] else "-" for c in cols]))
    lines.append(row("classifier confidence (mean top prob.)",
                     [f"{c[1]['classifier_confidence']['generated']:.3f}" for c in cols]))
    for k in SCENE_CLASSES:
        shares = [c[1]["predicted_classes"]["generated"][k] for c in cols]
        if max(shares) > 0.005:
            lines.append(row(f"  classified as {k}", [f"{s:.1%}" for s in shares]))
    lines.append("toy segmenter: share of image pixels with each label (object and part channels)")
    for n in SHOWN_LABELS:
        lines.append(row(f"  {n}", [f"{c[1]['pixel_frequency'][n]['generated']:.2%}" for c in cols]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="toy_generator weights folder (default: the shipped one)")
    p.add_argument("--baseline", default=None, help="another toy_generator weights folder, measured beside it")
    p.add_argument("--names", nargs=2, default=("shipped", "baseline"), metavar=("NAME", "BASELINE_NAME"))
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1, help="z seed (numpy RandomState, as the dissection's z)")
    p.add_argument("--cache", default=None, help="folder to cache rendered scenes (.npz)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("--record", action="store_true",
                   help="store the figures in the generator's entry of TRAINING.json / TRAINING.md (shipped weights only)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.record and args.weights:
        p.error("--record measures the shipped toy_generator: drop --weights")
    bad = [c for c in args.classes if c not in SCENE_CLASSES]
    if bad:
        p.error(f"--classes: unknown scene class {bad[0]!r}; expected some of {', '.join(SCENE_CLASSES)}")
    if args.samples < 2:
        p.error("--samples must be at least 2")
    for w in (args.weights, args.baseline):
        if w is not None and not os.path.isdir(w):
            p.error(f"weights folder {w!r} does not exist")
    gens = {args.names[0]: load("toy_generator", args.weights)}
    if args.baseline:
        gens[args.names[1]] = load("toy_generator", args.baseline)
    result = measure(gens, args.classes, args.samples, args.seed, cache=args.cache)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.record:
        record_quality(result, argv)


def record_quality(result: dict, argv: Sequence[str]) -> None:
    """Add the figures to the generator's TRAINING.json entry as metrics['quality']."""
    path = os.path.join(train_toy.DEFAULT_OUT, "TRAINING.json")
    data = json.load(open(path)) if os.path.isfile(path) else {}
    if "generator" not in data:
        raise SystemExit(f"error: {path} has no generator entry to add the figures to (ship a generator first)")
    kept = [a for a in train_toy._without_cache(argv) if a != "--record"]
    if "--json" in kept:
        i = kept.index("--json")
        del kept[i:i + 2]
    command = " ".join(["python scripts/measure_generator.py"] + kept)
    entry = data["generator"]
    entry["metrics"]["quality"] = {"command": command, **result}
    train_toy_gan.record(train_toy.DEFAULT_OUT, entry)


if __name__ == "__main__":
    main()
