"""Open-vocabulary (CLIP-Dissect) labels next to IoU labels for the toy classifier's units.

    python scripts/clip_label_agreement.py                        (dissects conv4_2 first, into --outdir)
    python scripts/clip_label_agreement.py --report results/toy_classifier-scenes-scenes-conv4_2-10/report.json

Takes the IoU labels of a dissection of the toy classifier (report.json of scripts/dissect.py
on 1000 val scenes; made here when --report is not given), summarizes each unit per image over
the same 1000 val scenes (spatial mean and spatial max: CLIP-Dissect's two pool modes) and over
each of their 3x3 windows of half the side (the window probe), labels every unit with the toy
CLIP and the default scene concept list (soft-WPMI, WPMI and the simpler scores, each with both
probes and both summaries), and reports, for the units whose IoU
exceeds --min-iou, how many CLIP labels name the IoU label's concept (or a phrase containing
it). Writes agreement.json and agreement.md (a side-by-side table) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np

from jaxdissect.capturing import capture
from jaxdissect.data.scenes import Scenes
from jaxdissect.dissect import DissectConfig, clip_labels, clip_scores, dissect
from jaxdissect.models import load
from jaxdissect.models.clip_encoder import ClipEncoder, preprocess


SUMMARIES = ("mean", "max")  # CLIP-Dissect's two pool modes


def all_settings() -> list[str]:
    """Every '<score>/<probe>/<summary>' setting `measure` compares."""
    return [f"{m}/{p}/{s}" for p in clip_labels.PROBES for s in SUMMARIES for m in clip_scores.SCORE_FUNCTIONS]


def iou_labels_from_report(path: str) -> tuple[str, list[dict]]:
    """(layer, [{'unit', 'label', 'iou'}...]) from a dissection's report.json."""
    with open(path) as f:
        report = json.load(f)
    return report["header"]["layer"], [{"unit": u["unit"], "label": u["label"], "iou": u["iou"]} for u in report["units"]]


def dissect_report(outdir: str) -> str:
    """Dissect the toy classifier's default layer (1000 val scenes) and return its report.json."""
    result = dissect(DissectConfig(outdir=outdir, progress=False))[0]
    return os.path.join(result.directory, "report.json")


def unit_activation_summaries(layer: str, n: int, batch: int = 50) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({'images': uint8 (n, 128, 128, 3), 'windows': their 3x3 half-side windows (9n, 64, 64, 3)},
    {'<probe>/<mean|max>': every unit's spatial mean / max of `layer` per image or per window})."""
    model = load("toy_classifier")
    scenes = Scenes("val", n)
    images, summaries = {"images": [], "windows": []}, {f"{p}/{m}": [] for p in clip_labels.PROBES for m in SUMMARIES}
    for i in range(0, n, batch):
        x = scenes.batch(range(i, min(i + batch, n)))["image"]
        _, acts = capture(model, preprocess(x, model.input_size, model.normalization), layers=(layer,))
        for mode in SUMMARIES:
            summaries[f"images/{mode}"].append(np.asarray(clip_labels.unit_summaries(acts[layer], mode)))
            summaries[f"windows/{mode}"].append(np.asarray(clip_labels.window_summaries(acts[layer], mode=mode)))
        images["images"].append(x)
        images["windows"].append(clip_labels.window_crops(x))
    return ({k: np.concatenate(v) for k, v in images.items()},
            {k: np.concatenate(v) for k, v in summaries.items()})


def measure(report: str, n: int = 1000, min_iou: float = 0.1, clip_model: str = "toy_clip",
            weights: str | None = None, settings: Sequence[str] | None = None) -> dict:
    """Agreement of every '<score>/<probe>/<summary>' setting (or only `settings`) with the IoU labels."""
    unknown = sorted(set(settings or ()) - set(all_settings()))
    if unknown:  # before any work
        raise ValueError(f"unknown agreement settings {unknown}; known: {all_settings()}")
    layer, units = iou_labels_from_report(report)
    images, summaries = unit_activation_summaries(layer, n)
    encoder = ClipEncoder.load(clip_model, weights=weights)
    phrases = clip_labels.load_concepts(None)
    text = encoder.encode_text(phrases)
    sims = {probe: encoder.encode_images(x) @ text.T for probe, x in images.items()}
    iou_label = [u["label"] for u in units]
    iou = [u["iou"] for u in units]
    out = {"report": os.path.basename(os.path.dirname(report)), "layer": layer, "images": n, "min_iou": min_iou,
           "clip_model": clip_model, "concepts": len(phrases), "methods": {}}
    for probe_pool, acts in summaries.items():
        for method in clip_scores.SCORE_FUNCTIONS:
            if settings is not None and f"{method}/{probe_pool}" not in settings:
                continue
            params = {"top_k": min(100 if method == "soft_wpmi" else 28, n)} if "wpmi" in method else {}
            scores = np.asarray(clip_scores.unit_phrase_scores(acts, sims[probe_pool.split("/")[0]], method, **params))
            labels = clip_labels.ClipLabels(phrases, scores, method, clip_model)
            agree, total = clip_labels.agreement(iou_label, iou, [labels.label(u) for u in range(len(units))], min_iou)
            out["methods"][f"{method}/{probe_pool}"] = {
                "agree": agree, "units": total, "fraction": agree / max(total, 1),
                "units_table": [{"unit": u["unit"], "iou_label": u["label"], "iou": u["iou"], **labels.unit_json(i)}
                                for i, u in enumerate(units)]}
    return out


def table(result: dict, method: str = "wpmi/windows/max", rows: int = 12) -> str:
    """A markdown table of `rows` units over min_iou, spread over the IoU labels (best IoU first)."""
    units = [u for u in result["methods"][method]["units_table"] if u["iou"] > result["min_iou"]]
    by_label: dict[str, list] = {}
    for u in sorted(units, key=lambda u: -u["iou"]):
        by_label.setdefault(u["iou_label"], []).append(u)
    order = sorted(by_label, key=lambda k: -len(by_label[k]))
    chosen = []
    while len(chosen) < min(rows, len(units)):
        for k in order:
            if by_label[k] and len(chosen) < rows:
                chosen.append(by_label[k].pop(0))
    lines = ["| unit | IoU label | IoU | CLIP label | score | same concept | CLIP runner-up |",
             "|---:|---|---:|---|---:|:---:|---|"]
    for u in sorted(chosen, key=lambda u: u["unit"]):
        same = "yes" if clip_labels.names_same_concept(u["iou_label"], u["clip_label"]) else "no"
        runner = ", ".join(f"{t['label']} ({t['score']:.2f})" for t in u["clip_top"][1:3])
        lines.append(f"| {u['unit']} | {u['iou_label']} | {u['iou']:.3f} | {u['clip_label']} | {u['clip_score']:.2f} | "
                     f"{same} | {runner} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", help="report.json of a toy_classifier dissection (default: dissect now)")
    p.add_argument("--outdir", default="results", help="where to dissect when --report is not given")
    p.add_argument("--out", default="results/clip_agreement", help="folder for agreement.json / agreement.md")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--min-iou", type=float, default=0.1)
    p.add_argument("--clip-weights", default=None, help="toy_clip weights folder (default: the shipped ones)")
    args = p.parse_args(argv)
    if args.report is not None and not os.path.isfile(args.report):
        print(f"error: --report {args.report!r}: no such file", file=sys.stderr)
        return 2
    jax.config.update("jax_default_matmul_precision", "float32")
    report = args.report or dissect_report(args.outdir)
    result = measure(report, args.images, args.min_iou, weights=args.clip_weights)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "agreement.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"{m}: {v['agree']}/{v['units']} units with IoU > {args.min_iou} agree ({v['fraction']:.2f})"
             for m, v in result["methods"].items()]
    md = "\n".join(lines) + "\n\n" + table(result) + "\n"
    with open(os.path.join(args.out, "agreement.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
