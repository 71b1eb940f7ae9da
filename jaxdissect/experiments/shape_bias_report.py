"""The shape-bias experiment's outputs: shape_bias.json, figures (agreement per layer, labels
kept by category), thumbnails of the top stylized pairs, and per layer a report.json / report.html
in the dissection's format with the experiment's fields and section.

Everything here takes finished results (a ShapeBiasResult and, for the thumbnails, the `TopPairs`
the driver jaxdissect.experiments.shape_bias computed); nothing runs a network."""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from typing import Mapping

import numpy as np

from jaxdissect.atomic import atomic_write_bytes, atomic_write_text
from jaxdissect.experiments.label_confinement import SEPARABLE_BELOW
from jaxdissect.experiments.label_groups import in_group
from jaxdissect.folder_names import layer_short_name
from jaxdissect.report.bargraph import concept_bargraph_svg
from jaxdissect.report.figures import figure_png, new_figure
from jaxdissect.report.html import write_report_html
from jaxdissect.report.report_json import dumps_report, make_report, to_json_value
from jaxdissect.report.unit_images import encode_jpeg, masked_image, unit_strip

SECTION_TITLE = "Shape versus texture"
GROUP_COLORS = {"shape": "tab:blue", "surface": "tab:orange", "surface_separable": "tab:orange",
                "surface_confined": "tab:gray"}
GROUP_NAMES = {"shape": "shape units (object, part)", "surface": "surface units (material, color)",
               "surface_separable": "surface units, label seen on several shapes",
               "surface_confined": f"surface units, label inside one shape (>= {SEPARABLE_BELOW:.0%} of its pixels)"}


def plotted_groups(result) -> tuple[str, ...]:
    """The unit groups the figures compare: surface units split by their label's confinement
    when it was measured."""
    if result.confinement is None:
        return ("shape", "surface")
    return ("shape", "surface_separable", "surface_confined")


@dataclasses.dataclass
class TopPairs:
    """What the report shows of one layer's units (computed by the driver, shape_bias.top_pairs):
    each unit's top pairs by its peak on the second (stylized) images, their thumbnails, and the
    unit's region in each, thresholded with each set's threshold."""

    layer: str
    indices: np.ndarray  # (units, k) pair ids, best first; -1 where there are fewer pairs
    thumbnails: dict[int, tuple[np.ndarray, np.ndarray]]  # pair id -> (first, second) (size, size, 3) uint8
    regions: tuple[np.ndarray, np.ndarray]  # (units, k, size, size) bool per set: the unit's region


def unit_records(result, lb, miniou: float) -> list[dict]:
    """report.json unit entries of one layer: the label on the stylized (second) set as the card's
    label, the original set's label, and the mask agreement; `same_label`: the same label on both
    sets with IoU > miniou on each."""
    names, cats = result.label_names, result.label_categories
    out = []
    for u in range(len(lb.agreement)):
        a, b = int(lb.labels[0][u]), int(lb.labels[1][u])
        kept = a == b and lb.ious[0][u] > miniou and lb.ious[1][u] > miniou
        out.append({"image": f"image/unit{u}.jpg", "unit": u, "iou": float(lb.ious[1][u]), "label": names[b],
                    "cat": cats[b], "threshold": float(lb.thresholds[1][u]), "agreement": float(lb.agreement[u]), "chance_agreement": float(lb.chance[u]),
                    "both_fraction": float(lb.both_fraction[u]), "original_label": names[a], "original_cat": cats[a],
                    "original_iou": float(lb.ious[0][u]), "original_threshold": float(lb.thresholds[0][u]),
                    "original_image": f"original/unit{u}.jpg", "same_label": bool(kept), "group": lb.groups[u]})
    return out


def tables(result, miniou: float) -> dict:
    """shape_bias.json: the run's header and, per layer, the summary and every unit."""
    return {"header": {"model": result.model, "dataset": result.dataset, "paired_dataset": result.paired_dataset,
                       "samples": result.samples, "layers": [lb.layer for lb in result.layers],
                       "agreement": "IoU of the unit's thresholded masks on paired images, summed over the pairs",
                       "groups": {"shape": ["object", "part"], "surface": ["material", "color"]},
                       **({} if result.confinement is None else {
                           "surface_labels": result.confinement.table(result.label_names),
                           "surface_labels_note": "share: the largest fraction of the label's pixels (original set) "
                           f"inside one shape label ('inside'); separable: share < {SEPARABLE_BELOW:g}. A unit "
                           "labelled with a confined surface label (group surface_confined) cannot be told from a "
                           "unit of that shape on the first set; gap_separable compares shape units with the "
                           "separable ones (group surface_separable)"})},
            "layers": [{"layer": lb.layer, "summary": lb.summary, "units": unit_records(result, lb, miniou)}
                       for lb in result.layers]}


def _group_values(lb, group: str) -> np.ndarray:
    """Agreements (NaN left out) of the layer's units in `group`."""
    v = lb.agreement[in_group(lb.groups, group)]
    return v[~np.isnan(v)]


def plot_agreement_by_layer(result, miniou: float, seed: int = 0) -> bytes:
    """PNG: per layer, the mask agreement of shape-labelled and surface-labelled units (points,
    violins, means)."""
    fig = new_figure((max(6.0, 1.3 * len(result.layers) + 2), 4.2))
    ax = fig.subplots()
    rng = np.random.default_rng(seed)
    chance_label = "agreement of independent masks (chance)"
    groups = plotted_groups(result)
    step = 0.72 / len(groups)
    top = 0.0
    for i, lb in enumerate(result.layers):
        for j, g in enumerate(groups):
            v = _group_values(lb, g)
            x = i + (j - (len(groups) - 1) / 2) * step
            col = GROUP_COLORS[g]
            if v.size > 1 and np.ptp(v) > 0:
                parts = ax.violinplot([v], positions=[x], widths=step * 0.95, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(col)
                    body.set_alpha(0.2)
            ax.scatter(x + rng.uniform(-0.07, 0.07, v.size), v, s=7, color=col, alpha=0.7,
                       label=GROUP_NAMES[g] if i == 0 else None)
            if v.size:
                top = max(top, float(v.max()))
                ax.plot([x - step / 2.4, x + step / 2.4], [v.mean()] * 2, color=col, lw=2)
                ax.annotate(f"{v.mean():.3f}", (x, max(v.max(), v.mean())), textcoords="offset points", xytext=(0, 4),
                            ha="center", fontsize=7, color=col)
                c = lb.summary[g]["chance_mean"]
                ax.plot([x - step / 2.4, x + step / 2.4], [c] * 2, color="black", lw=1, ls=":", label=chance_label)
                chance_label = None
    ax.set_xticks(range(len(result.layers)), [layer_short_name(lb.layer) for lb in result.layers])
    top = min(1.0, max(0.1, 1.25 * top))  # the scale follows the data (agreements are often a few percent)
    ax.set_ylim(-0.02 * top, top * 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mask agreement (IoU, {result.dataset} vs {result.paired_dataset})", fontsize=9)
    ax.set_title(f"{result.model}: do units fire in the same place on stylized images?\n"
                 f"units labelled (IoU > {miniou:g}) on {result.dataset}; solid bars: means", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return figure_png(fig)


def plot_label_survival(result) -> bytes:
    """PNG: per layer and group, the fraction of labelled units whose label on the stylized set
    is the same as on the originals."""
    fig = new_figure((max(6.0, 1.3 * len(result.layers) + 2), 4.0))
    ax = fig.subplots()
    groups = plotted_groups(result)
    step = 0.76 / len(groups)
    for j, g in enumerate(groups):
        xs = np.arange(len(result.layers)) + (j - (len(groups) - 1) / 2) * step
        fr = [lb.summary[g]["label_kept_fraction"] for lb in result.layers]
        ax.bar(xs, np.nan_to_num(fr), width=step * 0.95, color=GROUP_COLORS[g], alpha=0.8, label=GROUP_NAMES[g])
        for x, lb in zip(xs, result.layers):
            s = lb.summary[g]
            ax.annotate(f"{s['label_kept']}/{s['units']}", (x, np.nan_to_num(s["label_kept_fraction"])),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(range(len(result.layers)), [layer_short_name(lb.layer) for lb in result.layers])
    ax.set_ylim(0, 1.45)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of labelled units keeping their label")
    ax.set_title(f"{result.model}: labels that survive stylization (same label, IoU above the cut)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return figure_png(fig)


def confined_labels_text(result) -> str:
    """'stone (100% in mountain), ...': the surface labels confined to one shape on the originals."""
    if result.confinement is None:
        return ""
    table = result.confinement.table(result.label_names)
    return ", ".join(f"{n} ({t['share']:.0%} in {t['inside']})" for n, t in sorted(table.items())
                     if not t["separable"]) or "none"


def summary_text(result) -> str:
    lines = [f"{result.model} on {result.samples} pairs ({result.dataset} / {result.paired_dataset}): "
             "mean mask agreement of labelled units"]
    for lb in result.layers:
        s = lb.summary
        line = (f"  {lb.layer}: shape {s['shape']['mean']:.3f} ({s['shape']['units']} units, label kept "
                f"{s['shape']['label_kept']}), surface {s['surface']['mean']:.3f} ({s['surface']['units']} units, "
                f"label kept {s['surface']['label_kept']}), gap {s['gap']:+.3f}")
        if "gap_separable" in s:
            sep, con = s["surface_separable"], s["surface_confined"]
            line += (f"; surface labels seen on several shapes {sep['mean']:.3f} ({sep['units']} units), "
                     f"gap {s['gap_separable']:+.3f}; inside one shape {con['mean']:.3f} ({con['units']} units)")
        lines.append(line + f"; chance {s['shape']['chance_mean']:.3f} / {s['surface']['chance_mean']:.3f}")
    if result.confinement is not None:
        lines.append(f"surface labels inside one shape label on {result.dataset} (>= {SEPARABLE_BELOW:.0%} of their "
                     f"pixels): {confined_labels_text(result)}")
    return "\n".join(lines)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:100%">'


def section_html(result, images: dict[str, bytes], layer: str | None = None) -> str:
    """The report section: what was compared, the table per layer, the figures."""
    e = html.escape
    split = result.confinement is not None
    rows = []
    for lb in result.layers:
        s = lb.summary
        mark = " style='font-weight:bold'" if lb.layer == layer else ""
        sep = (f"<td>{s['surface_separable']['units']}</td><td>{s['surface_separable']['mean']:.3f}</td>"
               f"<td>{s['gap_separable']:+.3f}</td>" if split else "")
        rows.append(f"<tr{mark}><td>{e(lb.layer)}</td><td>{s['shape']['units']}</td><td>{s['shape']['mean']:.3f}</td>"
                    f"<td>{s['surface']['units']}</td><td>{s['surface']['mean']:.3f}</td><td>{s['gap']:+.3f}</td>{sep}"
                    f"<td>{s['shape']['chance_mean']:.3f} / {s['surface']['chance_mean']:.3f}</td>"
                    f"<td>{s['shape']['label_kept']}/{s['shape']['units']}</td>"
                    f"<td>{s['surface']['label_kept']}/{s['surface']['units']}</td></tr>")
    sep_head = ("<th>separable surface units</th><th>agreement</th><th>gap</th>" if split else "")
    confined = (f"<p>Surface labels that lie inside one shape label on the first images ({e(result.dataset)}: at least "
                f"{SEPARABLE_BELOW:.0%} of their pixels): {e(confined_labels_text(result))}. A unit labelled with "
                "one of them cannot be told from a unit of that shape there, so the table also compares shape units "
                "with the units of the separable surface labels (seen on several shapes) alone.</p>" if split else "")
    return "\n".join([
        f"<p>Each image was paired with a stylized version of it ({e(result.paired_dataset)}: the same shapes and "
        "layout, other textures and colours). A unit's agreement is the IoU of its thresholded masks on the two "
        f"images of each pair (each set with its own top-{result.quantile * 100:g}% threshold), over all "
        f"{result.samples} pairs; chance is the agreement masks of the same coverage would have if they moved "
        f"independently. Units are grouped by their label on the first images ({e(result.dataset)}). Cards below: "
        "label and top images on the stylized set; each unit's original label and agreement are in report.json.</p>",
        confined,
        "<table><thead><tr><th>layer</th><th>shape units</th><th>agreement</th><th>surface units</th>"
        f"<th>agreement</th><th>gap</th>{sep_head}<th>chance (shape / surface)</th><th>shape labels kept</th>"
        "<th>surface labels kept</th></tr></thead><tbody>",
        *rows, "</tbody></table>",
        '<div style="display:flex;flex-wrap:wrap;gap:8px">',
        *(f"<figure style='margin:0;flex:0 1 600px'>{_img(png, n)}<figcaption>{e(n)}</figcaption></figure>"
          for n, png in images.items()),
        "</div>"])


def unit_strips(pairs: TopPairs, size: int) -> tuple[dict, dict]:
    """For each unit, its top pairs: ({unit: stylized strip with the unit's region (stylized
    threshold)}, {unit: originals of the same pairs (original threshold)})."""
    blank = np.full((size, size, 3), 255, np.uint8)
    strips: tuple[dict, dict] = ({}, {})
    for u, top in enumerate(pairs.indices):
        for side, out in ((1, strips[0]), (0, strips[1])):
            out[u] = unit_strip([masked_image(pairs.thumbnails[int(i)][side], pairs.regions[side][u, r])
                                 if i >= 0 else blank for r, i in enumerate(top)])
    return strips


def write_layer_report(config, result, lb, section: str, pairs: TopPairs) -> str:
    """<dir>/<layer>/report.json, concepts.svg, report.html and the unit strips; returns the folder.
    `config` is the run's ShapeBiasConfig."""
    d = os.path.join(result.directory, layer_short_name(lb.layer))
    styl, orig = unit_strips(pairs, config.thumbsize)
    for u in styl:
        atomic_write_bytes(os.path.join(d, "image", f"unit{u}.jpg"), encode_jpeg(styl[u]))
        atomic_write_bytes(os.path.join(d, "original", f"unit{u}.jpg"), encode_jpeg(orig[u]))
    units = unit_records(result, lb, config.miniou)
    svg = concept_bargraph_svg([(r["label"], r["cat"], r["iou"]) for r in units], min_iou=config.miniou)
    atomic_write_text(os.path.join(d, "concepts.svg"), svg)
    name = f"{result.model} {result.paired_dataset} (stylized) vs {result.dataset}"
    header = {"name": name, "image": "concepts.svg", "model": result.model, "layer": lb.layer,
              "dataset": result.paired_dataset, "original_dataset": result.dataset, "seg": config.seg or "scenes",
              "quantile": config.quantile, "miniou": config.miniou, "samples": result.samples,
              "shape_bias": lb.summary}
    report = make_report(header, units)
    report["sections"] = [{"title": SECTION_TITLE, "html": section}]
    atomic_write_text(os.path.join(d, "report.json"), dumps_report(report) + "\n")
    write_report_html(os.path.join(d, "report.html"), report, title=f"{name} {lb.layer}")
    return d


def write_run_outputs(config, result) -> tuple[dict[str, str], dict[str, bytes]]:
    """shape_bias.json, the figures and summary.txt of a finished run: (paths, {figure: PNG}) (the
    figures go into each layer's report section)."""
    d = result.directory
    atomic_write_text(os.path.join(d, "shape_bias.json"),
                      json.dumps(to_json_value(tables(result, config.miniou)), indent=1, allow_nan=False) + "\n")
    images = {"agreement_by_layer": plot_agreement_by_layer(result, config.miniou),
              "label_survival": plot_label_survival(result)}
    paths = {"json": os.path.join(d, "shape_bias.json")}
    for n, png in images.items():
        paths[n] = os.path.join(d, "plots", f"{n}.png")
        atomic_write_bytes(paths[n], png)
    atomic_write_text(os.path.join(d, "summary.txt"), summary_text(result) + "\n")
    return paths, images


def write_outputs(config, result, pairs: Mapping[str, TopPairs]) -> dict[str, str]:
    """Every output of a finished run, given each layer's TopPairs; returns the main paths."""
    paths, images = write_run_outputs(config, result)
    for lb in result.layers:
        paths[lb.layer] = write_layer_report(config, result, lb, section_html(result, images, lb.layer),
                                             pairs[lb.layer])
    return paths
