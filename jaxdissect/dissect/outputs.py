"""A dissected layer's results folder: unit thumbnail strips, report.json, concepts.svg, report.html."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.atomic import atomic_write_text
from jaxdissect.upsample import upsampler


def _display_images(setup, inputs: np.ndarray, output) -> np.ndarray:
    """uint8 images to show: the inputs, or a generator's output mapped from [-1, 1]."""
    if setup.model.kind == "generator":
        return np.asarray(jnp.clip((output + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)
    return inputs


def unit_strips(setup, result) -> dict[int, np.ndarray]:
    """For each unit, its top images side by side with the region above threshold outlined."""
    from jaxdissect.dissect import sources
    from jaxdissect.report.unit_images import masked_image, thumbnail, unit_strip

    cfg, layer = setup.config, result.layer
    top = result.topk_indices[:, : cfg.strip_images]
    wanted = np.unique(top[top >= 0])
    size = cfg.thumbsize
    images: dict[int, np.ndarray] = {}  # sample index -> thumbnail
    masks: dict[int, np.ndarray] = {}  # sample index -> (T, T, units) bool
    up = None
    thresholds = jnp.asarray(result.thresholds)

    @jax.jit
    def run(variables, inputs):
        out, acts = setup.forward(variables, setup.model_input(inputs))
        return out, acts[layer]

    for rng in sources.batch_ranges(len(wanted), setup.batch_size):
        # padded to the pass batch size, so one compilation serves every batch
        batch = sources.pad_batch(setup.source.load(wanted[rng]), setup.batch_size)
        out, acts = run(setup.model.variables, batch.inputs)
        if up is None:
            resample = upsampler((size, size), tuple(acts.shape[1:3]))
            up = jax.jit(lambda a: resample(a) > thresholds)
        on = np.asarray(up(acts))
        shown = _display_images(setup, batch.inputs, out)
        for j, idx in enumerate(batch.indices[:len(rng)]):
            images[int(idx)] = thumbnail(shown[j], size)
            masks[int(idx)] = on[j]
    strips = {}
    blank = np.full((size, size, 3), 255, np.uint8)
    for unit in range(top.shape[0]):
        row = [masked_image(images[int(i)], masks[int(i)][:, :, unit]) if i >= 0 else blank for i in top[unit]]
        strips[unit] = unit_strip(row)
    return strips


def unit_records(result, top_labels: int = 3) -> list[dict]:
    """The per-unit entries of report.json (the original's keys plus threshold and top labels)."""
    units = []
    for u in range(len(result.best_label)):
        order = np.argsort(-result.iou[:, u], kind="stable")
        tops = [{"label": result.label_names[l], "cat": result.label_categories[l], "iou": float(result.iou[l, u])}
                for l in order if l != 0][:top_labels]
        b = int(result.best_label[u])
        units.append({"image": f"image/unit{u}.jpg", "unit": u, "iou": float(result.best_iou[u]),
                      "label": result.label_names[b], "cat": result.label_categories[b],
                      "threshold": float(result.thresholds[u]), "top_labels": tops})
    return units


def write_layer_outputs(setup, result, skipped: dict) -> None:
    """Write thumbnails, report.json, concepts.svg and report.html into the layer's folder."""
    from jaxdissect.report.bargraph import concept_bargraph_svg
    from jaxdissect.report.html import write_report_html
    from jaxdissect.report.report_json import write_report_json
    from jaxdissect.report.unit_images import save_unit_images

    cfg, d = setup.config, result.directory
    save_unit_images(d, unit_strips(setup, result))
    svg = concept_bargraph_svg(result.unit_labels(), min_iou=cfg.miniou)
    atomic_write_text(os.path.join(d, "concepts.svg"), svg)
    name = f"{setup.model.name} {os.path.basename(os.path.normpath(cfg.dataset))} {setup.seg_name}"
    header = {"name": name, "image": "concepts.svg", "model": setup.model.name, "layer": result.layer,
              "dataset": cfg.dataset, "seg": setup.seg_name, "quantile": cfg.quantile, "miniou": cfg.miniou,
              "samples": len(setup.source), "skipped_images": skipped}
    units = unit_records(result)
    write_report_json(os.path.join(d, "report.json"), header, units)
    from jaxdissect.report.report_json import make_report

    write_report_html(os.path.join(d, "report.html"), make_report(header, units), title=f"{name} {result.layer}")
