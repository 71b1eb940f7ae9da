"""A dissected layer's results folder: unit thumbnail strips, report.json, concepts.svg, report.html.

Thumbnails need no forward pass: pass 1 kept, with each unit's first top images, the unit's
activation map in that image; the pictures come from the source (or, for a generator, from the
cache of its generated images).
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from jaxdissect.atomic import atomic_write_text
from jaxdissect.data import sources
from jaxdissect.report.bargraph import concept_bargraph_svg
from jaxdissect.report.html import write_report_html
from jaxdissect.report.report_json import make_report, write_report_json
from jaxdissect.report.unit_images import masked_image, save_unit_images, thumbnail, unit_strip
from jaxdissect.upsample import upsampler


def top_images(run, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Thumbnails (thumbsize square, uint8) of the given samples: read from the source, or from
    the generated-image cache for a generator."""
    size = run.config.thumbsize
    wanted = np.unique(indices[indices >= 0])
    cache = run.image_cache()
    if cache is not None:
        return {int(i): im for i, im in zip(wanted, cache.read(wanted))}
    out = {}
    chunks = [wanted[s:s + run.batch_size] for s in range(0, len(wanted), run.batch_size)]
    for chunk, batch in zip(chunks, sources.prefetch_map(run.source.load, chunks)):
        for i, im in zip(chunk, batch.inputs):
            out[int(i)] = thumbnail(im, size)
    return out


def unit_masks(maps: np.ndarray, thresholds: np.ndarray, size: int) -> np.ndarray:
    """(units, k, h, w) activation maps -> (units, k, size, size) bool: where each unit, upsampled
    to the thumbnail, is above its threshold (the region outlined in the strip)."""
    units, k, h, w = maps.shape
    up = upsampler((size, size), (h, w))
    resample = jax.jit(lambda m, t: up(m) > t)
    on = resample(np.moveaxis(maps, 0, -1).reshape(k, h, w, units).astype(np.float32), np.asarray(thresholds))
    return np.moveaxis(np.asarray(on), -1, 0)


def unit_strips(run, result, act_stats) -> dict[int, np.ndarray]:
    """For each unit, its top images side by side with the region above threshold outlined."""
    size = run.config.thumbsize
    _, top = act_stats.top_maps.result()
    top = np.asarray(top)
    masks = unit_masks(np.asarray(act_stats.top_maps.payload), result.thresholds, size)
    images = top_images(run, top)
    blank = np.full((size, size, 3), 255, np.uint8)
    strips = {}
    for unit in range(top.shape[0]):
        row = [masked_image(images[int(i)], masks[unit, j]) if i >= 0 else blank for j, i in enumerate(top[unit])]
        strips[unit] = unit_strip(row)
    return strips


def unit_records(result, top_labels: int = 3) -> list[dict]:
    """The per-unit entries of report.json: the original's keys (label and IoU under the run's
    labelling rule) plus the run's threshold, the top labels at that threshold, the rule's score
    and threshold, the IoU-versus-threshold curves of the top labels, and the formula and
    open-vocabulary phrase when they were asked for."""
    units = []
    names, cats = result.label_names, result.label_categories
    for u in range(len(result.best_label)):
        order = np.argsort(-result.iou[:, u], kind="stable")
        tops = [{"label": names[l], "cat": cats[l], "iou": float(result.iou[l, u])}
                for l in order if l != 0 and result.iou[l, u] > 0][:top_labels]
        b = int(result.best_label[u])
        rec = {"image": f"image/unit{u}.jpg", "unit": u, "iou": float(result.best_iou[u]), "label": names[b],
               "cat": cats[b], "threshold": float(result.thresholds[u]), "top_labels": tops}
        if result.label_score is not None:
            rec["score"] = float(result.label_score[u])
            rec["label_threshold"] = float(result.label_threshold[u])
        if result.curves is not None:
            rec["curves"] = [{"label": names[int(l)], "iou": [round(float(v), 5) for v in result.curves[u, k]]}
                             for k, l in enumerate(result.curve_labels[u]) if int(l) != 0]
        if result.formulas is not None:
            rec["formula"] = result.formulas[u]
            rec["formula_iou"] = float(result.formula_iou[u])
        if result.clip is not None:
            rec.update(result.clip[u])
        units.append(rec)
    return units


SEGMENTER_DESCRIPTIONS = {
    "scenes": "the exact segmentation of the scenes world (objects, parts, materials, colours)",
    "toy": "the toy segmenter trained on the scenes world",
    "net": "the unified perceptual parsing segmenter (objects, materials)",
    "netp": "the unified perceptual parsing segmenter with all object parts",
    "netq": "the unified perceptual parsing segmenter with object quadrants",
    "netpq": "the unified perceptual parsing segmenter with parts and quadrants",
    "netpqc": "the unified perceptual parsing segmenter with parts and quadrants, and the colour segmenter",
}


def report_header(run, layer: str, skipped: dict) -> dict:
    """report.json's header: the original's name/image plus what the page's legend states."""
    cfg = run.config
    dataset = os.path.basename(os.path.normpath(run.dataset))
    units = run.geometry[layer].units
    return {"name": f"{run.model.name} \u00b7 {layer}",
            "subtitle": f"{units} units dissected on {run.num_samples:,} "
                        f"{'generated images' if run.model.kind == 'generator' else 'images of ' + dataset}, "
                        f"labelled with {SEGMENTER_DESCRIPTIONS.get(run.seg_name, run.seg_name)}",
            "image": "concepts.svg", "model": run.model.name, "layer": layer, "dataset": run.dataset,
            "seg": run.seg_name, "seg_description": SEGMENTER_DESCRIPTIONS.get(run.seg_name, f"the {run.seg_name} segmenter"),
            "quantile": cfg.quantile, "miniou": cfg.miniou, "samples": run.num_samples, "topk": cfg.topk,
            "top_images": cfg.strip_images, "label_rule": cfg.label_rule, "skipped_images": skipped}


def write_layer_outputs(run, result, act_stats, skipped: dict, log: Callable[[str], None] = print) -> None:
    """Write thumbnails, report.json, concepts.svg and report.html into the layer's folder."""
    cfg, d = run.config, result.directory
    log(f"{result.layer}: thumbnails of {len(result.best_label)} units and the report")
    save_unit_images(d, unit_strips(run, result, act_stats))
    svg = concept_bargraph_svg(result.unit_labels(), min_iou=cfg.miniou)
    atomic_write_text(os.path.join(d, "concepts.svg"), svg)
    header = report_header(run, result.layer, skipped)
    if result.levels is not None:
        header["levels"] = [float(v) for v in result.levels]
    if result.formulas is not None:
        header.update(formula_length=cfg.formula_length, beam_width=cfg.beam_width)
    if result.clip_header is not None:
        header.update(result.clip_header, clip_summary=cfg.clip_summary, clip_probe=cfg.clip_probe)
    units = unit_records(result)
    write_report_json(os.path.join(d, "report.json"), header, units)
    write_report_html(os.path.join(d, "report.html"), make_report(header, units),
                      title=f"{run.model.name} {result.layer}")
