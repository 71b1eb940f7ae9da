"""Outputs of the class-selectivity analysis: the unit plot (matplotlib PNG), a small SVG of the
same data for HTML reports (no matplotlib needed), the JSON table and a report section."""
from __future__ import annotations

import html
from typing import Sequence
from xml.etree import ElementTree as ET

import numpy as np

from jaxdissect.experiments.selectivity import ClassSelectivity, UnitPlotData
from jaxdissect.report.figures import new_figure

SECTION_TITLE = "Class selectivity"
FONT = "font-family:sans-serif"


def plot_unit_selectivity(data: UnitPlotData, layer: str, model: str, what: str = "peak activation"):
    """A matplotlib Figure: the unit's images as jittered points per class, with the class mean
    and its standard error, classes sorted by mean (matplotlib: the 'plots' extra)."""
    n = len(data.classes)
    fig = new_figure((max(6.5, 0.32 * n + 2.0), 4.2))
    ax = fig.subplots()
    ax.scatter(data.points_x, data.points_y, s=5, color="tab:blue", alpha=0.35, lw=0,
               label="one image (jittered)")
    x = np.arange(n)
    ax.errorbar(x, data.means, yerr=np.nan_to_num(data.ses), fmt="o", color="black", ms=4, capsize=3,
                label="class mean ± standard error")
    ax.set_xticks(x, [f"{c} ({k})" for c, k in zip(data.classes, data.counts)], rotation=60, ha="right",
                  fontsize=8)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("class (images), by descending mean" + (
        f"; best {n} of {data.classes_total} shown" if n < data.classes_total else ""))
    ax.set_ylabel(f"{what} of unit {data.unit}")
    ax.set_title(f"{model} {layer} unit {data.unit}: class selectivity index {_si(data.index)}", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def _si(index: float) -> str:
    return "undefined" if np.isnan(index) else f"{index:.2f}"


def _text(parent, text: str, x: float, y: float, size: float, anchor: str, rotate: float = 0) -> None:
    transform = f"translate({x:.6g},{y:.6g})" + (f" rotate({rotate:.6g})" if rotate else "")
    el = ET.SubElement(parent, "text", x="0", y="0", transform=transform,
                       style=f"{FONT};font-size:{size:.6g}px;text-anchor:{anchor}")
    el.text = text


def unit_svg(data: UnitPlotData, max_classes: int = 12, height: int = 90, bar: int = 12) -> str:
    """SVG: the unit's best classes as bars of their mean peak with standard-error whiskers, class
    names below, the selectivity index in the title (for embedding in report.html)."""
    n = min(len(data.classes), max_classes)
    means, ses = np.nan_to_num(data.means[:n]), np.nan_to_num(data.ses[:n])
    top = float(max((means + ses).max(initial=0.0), 1e-12))
    gap, left, title_h = 4, 34, 16
    longest = max((len(c) for c in data.classes[:n]), default=0)
    below = int(longest * 6.5 / np.sqrt(2)) + 10
    width = left + n * (bar + gap) + 10
    total = title_h + height + below
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", version="1.1", width=str(width), height=str(total),
                     viewBox=f"0 0 {width} {total}")
    ET.SubElement(svg, "title").text = (f"unit {data.unit}: mean peak activation per class (± standard error), "
                                        f"class selectivity index {_si(data.index)}")
    _text(svg, f"unit {data.unit}: selectivity {_si(data.index)}", 2, 11, 11, "start")
    base = title_h + height
    ET.SubElement(svg, "line", x1=str(left - 2), y1=str(base), x2=str(width - 8), y2=str(base), stroke="#888")
    _text(svg, f"{top:.3g}", left - 4, title_h + 8, 9, "end")
    _text(svg, "0", left - 4, base, 9, "end")
    for i in range(n):
        x = left + i * (bar + gap)
        h = height * means[i] / top
        ET.SubElement(svg, "rect", x=f"{x:.6g}", y=f"{base - h:.6g}", width=str(bar), height=f"{h:.6g}",
                      fill="#4B4CBF" if i == 0 else "#B6B6F2")
        lo, hi = base - height * (means[i] - ses[i]) / top, base - height * (means[i] + ses[i]) / top
        cx = x + bar / 2
        ET.SubElement(svg, "line", x1=f"{cx:.6g}", y1=f"{lo:.6g}", x2=f"{cx:.6g}", y2=f"{hi:.6g}", stroke="black")
        _text(svg, data.classes[i], x + bar, base + 10, 10, "end", rotate=-45)
    return ET.tostring(svg, encoding="unicode")


def selectivity_table(sel: ClassSelectivity, model: str, layer: str, samples: int) -> dict:
    """selectivity.json: per unit its index, best class and per-class means / SEs."""
    return {"header": {"model": model, "layer": layer, "samples": samples, "classes": list(sel.class_names),
                       "images_per_class": sel.counts,
                       "index": "(mu_max - mu_rest) / (mu_max + mu_rest) of per-image peak activations "
                                "(Morcos et al. 2018); mu_rest = mean of the other classes' means"},
            "units": [{"unit": u, "selectivity": float(sel.index[u]),
                       "top_class": sel.class_names[int(sel.top_class[u])] if sel.top_class[u] >= 0 else None,
                       "mean": sel.means[:, u], "se": sel.ses[:, u]} for u in range(sel.num_units)]}


def section_html(sel: ClassSelectivity, svgs: dict[int, str], notes: Sequence[str] = ()) -> str:
    """The report section: what the index means, notes (e.g. which units), one SVG per unit."""
    valid = sel.index[~np.isnan(sel.index)]
    parts = [f"<p>For each unit, its peak activation (maximum over the image) on every image, averaged per "
             f"class ({len(sel.class_names)} classes, {int(sel.counts.sum())} images). Class selectivity index = "
             "(largest class mean - mean of the other class means) / (their sum): 0 when every class excites the "
             f"unit alike, 1 when only one does. Median over the {valid.size} units with a defined index: "
             f"{np.median(valid) if valid.size else float('nan'):.2f}.</p>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append('<div style="display:flex;flex-wrap:wrap;gap:12px">')
    parts += [f"<figure style='margin:0'>{svg}</figure>" for svg in svgs.values()]
    parts.append("</div>")
    return "\n".join(parts)
