"""Compare the units of the toy vision transformer with the toy CNN's, layer by layer.

    python scripts/compare_toy_vit.py --out vit_comparison.json

Dissects, on the same 1,000 val scenes against their exact labels (quantile 0.995, labels at
64x64, the measurement of TRAINING.md), the transformer's patch embedding and its six blocks
(token layers read through their 8x8 patch grid, the class token dropped), the same transformer
at its random initialization (PRNGKey(0)), and the CNN's six conv layers, so that block i sits
beside the CNN's i-th conv layer. Prints a Markdown table and writes every unit's label and IoU
as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import train_toy_vit
from jaxdissect import models
from jaxdissect.data.scenes import SCENE_LABELS

CNN_LAYERS = ("features.conv1_1", "features.conv2_1", "features.conv3_1", "features.conv3_2", "features.conv4_1",
              "features.conv4_2")
MIN_IOU = 0.04
BINS = (0.0, 0.04, 0.08, 0.16, 1.0)


def layer_stats(summary: dict) -> dict:
    """Units labelled, distinct concepts, category mix and the distribution of best IoUs."""
    names = [n for n, _ in summary["unit_labels"]]
    ious = np.asarray([v for _, v in summary["unit_labels"]])
    good = ious > MIN_IOU
    cats = [SCENE_LABELS.categories[SCENE_LABELS.index(n)] for n, g in zip(names, good) if g]
    return {"units": len(ious), "labelled": int(good.sum()), "fraction": float(good.mean()),
            "concepts": sorted({n for n, g in zip(names, good) if g}),
            "categories": {c: cats.count(c) for c in SCENE_LABELS.category_names if cats.count(c)},
            "iou_quartiles": [round(float(q), 4) for q in np.quantile(ious, (0.25, 0.5, 0.75))],
            "iou_max": round(float(ious.max()), 4),
            "iou_histogram": {f"{lo:g}-{hi:g}": int(((ious >= lo) & (ious < hi)).sum()) for lo, hi in zip(BINS, BINS[1:])}}


def random_vit() -> models.LoadedModel:
    vit = models.load("toy_vit")
    variables = jax.jit(vit.module.init)(jax.random.PRNGKey(0), jnp.zeros((1, *vit.input_size, 3)))
    return models.LoadedModel(**{**vit.__dict__, "name": "toy_vit_random", "variables": variables})


def markdown(rows: Sequence[tuple[str, dict, str, dict, dict]]) -> str:
    def cell(s):
        return (f"{s['labelled']}/{s['units']} | {len(s['concepts'])} | "
                f"{s['iou_quartiles'][1]:.3f} [{s['iou_quartiles'][0]:.3f}, {s['iou_quartiles'][2]:.3f}]")

    lines = ["| depth | toy_vit layer | labelled | concepts | IoU median [quartiles] | random-init toy_vit labelled | "
             "toy CNN layer | labelled | concepts | IoU median [quartiles] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for depth, (vit_layer, v, cnn_layer, c, r) in enumerate(rows):
        lines.append(f"| {depth} | {vit_layer} | {cell(v)} | {r['labelled']}/{r['units']} | {cnn_layer} | {cell(c)} |")
    return "\n".join(lines)


def dissect_heads(vit: models.LoadedModel, args) -> None:
    """Every block's heads as units: the norm of each head's output at each patch."""
    specs = [f"blocks.{i}.attn.heads:head_norms" for i in range(int(vit.config["depth"]))]
    measured = train_toy_vit.measure_layers(vit, specs, 0, args.cache, args.images)
    print("| block | head 0 | head 1 | head 2 | head 3 |\n|---|---|---|---|---|")
    for spec, s in measured.items():
        print(f"| {spec.split('.attn')[0]} | " + " | ".join(f"{n} ({v:.3f})" for n, v in s["unit_labels"]) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(measured, f, indent=1)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="JSON file for every layer's statistics and unit labels")
    p.add_argument("--cache", default=None, help="folder to cache the generated val scenes (.npz)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--heads", action="store_true",
                   help="instead: dissect the transformer's attention heads, one unit per head (head_norms)")
    args = p.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "float32")
    vit, cnn = models.load("toy_vit"), models.load("toy_classifier")
    vit_layers = train_toy_vit.block_layers(vit.config)[1:]
    if args.heads:
        return dissect_heads(vit, args)
    results = {}
    for model, layers in ((vit, vit_layers), (random_vit(), vit_layers), (cnn, CNN_LAYERS)):
        measured = train_toy_vit.measure_layers(model, layers, 0, args.cache, args.images)
        results[model.name] = {layer: {**layer_stats(s), "unit_labels": s["unit_labels"]} for layer, s in measured.items()}
    rows = [(vl, results["toy_vit"][vl], cl, results["toy_classifier"][cl], results["toy_vit_random"][vl])
            for vl, cl in zip(vit_layers, CNN_LAYERS)]
    print(markdown(rows))
    for name, layers in results.items():
        for layer, s in layers.items():
            print(f"{name} {layer}: categories {s['categories']}, IoU histogram {s['iou_histogram']}, "
                  f"max {s['iou_max']}, concepts {', '.join(s['concepts'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
