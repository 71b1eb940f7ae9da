"""report.html: one self-contained page (no CDN, no fetch) that works from a file:// URL offline.

The report data travel inside the page as JSON in a <script type="application/json"> tag with
'<', '>' and '&' escaped, so no label can close the tag; the page's script builds the unit cards
with textContent only. Sort and category filter follow the URL hash (#sort=label&cat=object).
"""
from __future__ import annotations

import html
import json
import os
import re
from importlib import resources

from jaxdissect.atomic import atomic_write_text
from jaxdissect.report.bargraph import CATEGORY_ORDER
from jaxdissect.report.report_json import UNIT_KEYS, to_json_value

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_XML_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)


def script_json(data) -> str:
    """JSON safe to place inside a <script> element: no '<', '>' or '&' characters remain."""
    text = json.dumps(to_json_value(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _template() -> str:
    return resources.files("jaxdissect.report").joinpath("template.html").read_text(encoding="utf-8")


def _bargraph_html(report: dict, directory: str, svg: str | None) -> str:
    """The bar graph inline (given, or read from the header's .svg beside the page) or as an <img>."""
    image = str(report.get("header", {}).get("image") or "")
    if svg is None and image.lower().endswith(".svg"):
        candidate = os.path.join(directory, image)
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as f:
                svg = f.read()
    if svg is not None:
        return _XML_PROLOG.sub("", svg, count=1)
    if image:
        return f'<img src="{html.escape(image)}" alt="units per concept">'
    return ""


def _header_details_html(header: dict) -> str:
    """The header's other fields (model, layer, samples, ...): scalars inline, lists and dicts folded."""
    items, folded = [], []
    for key, value in header.items():
        if key in ("name", "image", "subtitle", "seg_description"):
            continue
        value = to_json_value(value)
        if isinstance(value, (dict, list)):
            if value:
                text = json.dumps(value, indent=1, ensure_ascii=False)
                folded.append(f"<details><summary>{html.escape(str(key))} ({len(value)})</summary>"
                              f"<pre>{html.escape(text)}</pre></details>")
        else:
            items.append(f"<span><b>{html.escape(str(key))}</b> {html.escape(str(value))}</span>")
    inline = f'<p class="details">{" ".join(items)}</p>' if items else ""
    return inline + "".join(folded)


def _bargraph_caption(header: dict, units: list) -> str:
    """What the bar graph counts, with this layer's numbers."""
    miniou = header.get("miniou")
    if not isinstance(miniou, (int, float)):
        return ""
    ious = [u.get("iou") for u in units]
    labelled = sum(1 for v in ious if isinstance(v, (int, float)) and v > miniou)
    dead = sum(1 for u in units if u.get("label") == "-" or u.get("iou") == 0)
    return (f'<p class="caption">Units per concept: how many of the layer\'s units have each concept as their label '
            f"with IoU &gt; {miniou:g}, grouped by category (the caption of each group counts its concepts). "
            f"{labelled} of {len(units)} units are labelled; {dead} overlap no concept at all.</p>")


def legend_html(header: dict) -> str:
    """What a reader needs to read the cards: what a unit, its images, its outline, its label and
    IoU are, with this run's numbers (quantile, threshold, IoU cut-off) where the header has them."""
    h = {k: to_json_value(v) for k, v in header.items()}
    layer = html.escape(str(h.get("layer", "the layer")))
    samples = h.get("samples")
    n_images = f"{samples:,} images" if isinstance(samples, int) else "the dataset's images"
    q = h.get("quantile")
    shown = h.get("top_images", 5)
    miniou = h.get("miniou")
    seg = html.escape(str(h.get("seg_description") or h.get("seg") or "the segmentation"))
    on = (f"its top {q * 100:g}% of activations over all {n_images} (threshold = the exact {1 - q:g} quantile of "
          "the unit's activations, upsampled to the segmentation grid; each card shows it)" if isinstance(q, (int, float))
          else "above its threshold")
    labelled = (f"A unit counts as <b>labelled</b> when its IoU exceeds {miniou:g}; below that the card is greyed "
                "and marked <span class=\"status unlabelled\">unlabelled</span>" if isinstance(miniou, (int, float))
                else "Greyed cards are unlabelled")
    items = [
        f"<dt>Unit</dt><dd>one channel of layer <b>{layer}</b> (numbered from 0): a feature map the network "
        "computes at every position of the image.</dd>",
        f"<dt>Images</dt><dd>the {shown} images (of {n_images}) where the unit's strongest activation is highest, "
        "best first.</dd>",
        f"<dt>Outline</dt><dd>where the unit is <b>on</b>: {on}; the yellow line surrounds that region and the rest "
        "of the image is dimmed.</dd>",
        f"<dt>Label and IoU</dt><dd>the concept whose pixels (from {seg}) best coincide with the unit's <b>on</b> "
        "region over the whole dataset, scored by IoU = pixels where both hold / pixels where either holds (0: no "
        f"overlap, 1: the same region). The runner-up concepts follow after 'also'. {labelled}; a unit whose IoU is "
        "0 with every concept shows <span class=\"status dead\">no label</span> and the label '-'.</dd>",
    ]
    rule = h.get("label_rule")
    rules = {"iou-best": "each concept's IoU at its own best threshold (of the levels below)",
             "iqr": "the information quality ratio (mutual information / joint entropy) of unit and concept at the "
                    "concept's best threshold",
             "mi": "the mutual information of unit and concept at the concept's best threshold"}
    if rule in rules:
        items.append(f"<dt>Rule</dt><dd>labels here are chosen by <b>{html.escape(rule)}</b>: {rules[rule]}; the IoU "
                     "shown is that concept's at the chosen threshold.</dd>")
    if isinstance(h.get("levels"), list) and len(h["levels"]) > 1:
        items.append("<dt>Curve</dt><dd>the IoU of the unit's top concepts (colours as named) at each of "
                     f"{len(h['levels'])} thresholds, from the unit's top 50% of activations (left) to its top 0.05% "
                     "(right); the grey line marks this run's threshold.</dd>")
    if h.get("formula_length"):
        items.append(f"<dt>Formula</dt><dd>the best combination of up to {h['formula_length']} concepts with AND, OR, "
                     "AND NOT (a beam search), scored by the same IoU over the dataset.</dd>")
    if h.get("clip_model"):
        on_windows = h.get("clip_probe") == "windows"
        items.append(f"<dt>CLIP</dt><dd>an open-vocabulary name: of {h.get('clip_concepts', 'the')} candidate phrases, "
                     f"the one whose {html.escape(str(h['clip_model']))} image-text similarity over the "
                     f"{'windows of the images (3x3 per image, half its side)' if on_windows else 'images'}"
                     f" best matches the unit's per-{'window' if on_windows else 'image'} "
                     f"{html.escape(str(h.get('clip_summary', 'mean')))} activation "
                     f"({html.escape(str(h.get('clip_method')))}).</dd>")
    return "<section class=\"legend\" id=\"legend\"><h2>How to read this page</h2><dl>" + "".join(items) + \
        "</dl></section>"


def _sections_html(sections) -> str:
    """Extra blocks from our own code: the title is escaped, the html is trusted as given."""
    parts = []
    for i, section in enumerate(sections or []):
        if not isinstance(section, dict) or not isinstance(section.get("title"), str) \
                or not isinstance(section.get("html"), str):
            raise ValueError(f"report.html: section {i} must be {{'title': str, 'html': str}}, got {section!r}")
        parts.append(f"<section><h2>{html.escape(section['title'])}</h2>\n{section['html']}\n</section>")
    return "\n".join(parts)


def render_report_html(report: dict, title: str, svg: str | None = None, directory: str = ".") -> str:
    """The page's text: header, bar graph, one card per unit, extra sections, embedded data."""
    if not isinstance(report, dict) or not isinstance(report.get("units"), list):
        raise ValueError("report.html: report must be a dict with a 'units' list")
    for i, unit in enumerate(report["units"]):
        missing = [k for k in UNIT_KEYS if k not in unit]
        if missing:
            raise ValueError(f"report.html: unit record {i} lacks {missing}: {unit!r}")
    header = dict(report.get("header") or {})
    name = str(header.get("name") or title)
    n = len(report["units"])
    subtitle = str(header.get("subtitle") or (f"{title} \u2014 {n} unit{'' if n == 1 else 's'}" if title != name
                                              else f"{n} units"))
    data = {"header": header, "units": report["units"],
            "category_order": list(report.get("category_order", CATEGORY_ORDER))}
    values = {
        "title": html.escape(str(title)),
        "name": html.escape(name),
        "subtitle": html.escape(subtitle),
        "details": _header_details_html(header),
        "legend": legend_html(header) if "layer" in header else "",
        "bargraph": _bargraph_html(report, directory, svg) + _bargraph_caption(header, report["units"]),
        "sections": _sections_html(report.get("sections")),
        "data": script_json(data),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template())


def write_report_html(path: str | os.PathLike, report: dict, title: str, svg: str | None = None) -> None:
    """Write report.html atomically beside the unit images (image/unitN.jpg links are relative).

    The bar graph is `svg` if given, else the header's .svg file beside the page inlined, else an
    <img> of the header's image. `report['sections']` ([{'title', 'html'}]) go below the cards.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    atomic_write_text(path, render_report_html(report, title, svg=svg, directory=directory))
