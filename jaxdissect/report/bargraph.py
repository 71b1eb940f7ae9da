"""The concept bar graph: how many units took each label, grouped by category (as the original's).

Geometry and palette follow the original's make_svg_bargraph; text is placed with SVG transform
attributes (not CSS) so that every SVG viewer draws it, and all text is XML-escaped by ElementTree.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence
from xml.etree import ElementTree as ET

CATEGORY_ORDER = ("object", "part", "material", "texture", "color")
# (bar, background) colours per category position.
PALETTE = (
    ("#4B4CBF", "#B6B6F2"),
    ("#55B05B", "#B6F2BA"),
    ("#50BDAC", "#A5E5DB"),
    ("#81C679", "#C0FF9B"),
    ("#F0883B", "#F2CFB6"),
    ("#D4CF24", "#F2F1B6"),
    ("#D92E2B", "#F2B6B6"),
    ("#AB6BC6", "#CFAAFF"),
)
FONT = "font-family:sans-serif"


def count_concepts(unit_labels: Iterable[tuple[str, str, float]], min_iou: float = 0.04,
                   category_order: Sequence[str] = CATEGORY_ORDER
                   ) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
    """Units per (label, category) for units with IoU > min_iou, in graph order.

    Returns ([(label, cat, units)], [(cat, distinct labels)]): categories in `category_order`
    (any others after them, in order of appearance), labels by descending count within a
    category, ties in order of first appearance (as the original's stable sort).
    """
    counts: Counter = Counter()
    for i, item in enumerate(unit_labels):
        try:
            label, cat, iou = item
        except (TypeError, ValueError):
            raise ValueError(f"concept bar graph: entry {i} must be (label, category, iou), got {item!r}") from None
        if iou is not None and float(iou) > min_iou:  # NaN compares False: left out
            counts[(str(label), str(cat))] += 1
    cats = list(category_order) + [c for _, c in counts if c not in category_order]
    cats = list(dict.fromkeys(cats))
    rank = {c: i for i, c in enumerate(cats)}
    concepts = sorted(counts, key=lambda lc: (rank[lc[1]], -counts[lc]))
    bars = [(label, cat, counts[(label, cat)]) for label, cat in concepts]
    per_cat = Counter(cat for _, cat, _ in bars)
    return bars, [(c, per_cat[c]) for c in cats]


def _text(parent: ET.Element, text: str, x: float, y: float, size: float, anchor: str,
          rotate: float = 0, **attrs: str) -> ET.Element:
    transform = f"translate({x:.6g},{y:.6g})" + (f" rotate({rotate:.6g})" if rotate else "")
    el = ET.SubElement(parent, "text", x="0", y="0", transform=transform,
                       style=f"{FONT};font-size:{size:.6g}px;text-anchor:{anchor}", **attrs)
    el.text = text
    return el


def concept_bargraph_svg(unit_labels: Iterable[tuple[str, str, float]], min_iou: float = 0.04,
                         category_order: Sequence[str] = CATEGORY_ORDER, barheight: int = 80,
                         barwidth: int = 12, scale: float = 1.4) -> str:
    """SVG bar graph of units per concept among units whose best IoU exceeds `min_iou`.

    `unit_labels` holds one (label, category, iou) per unit. A pale rectangle per category with
    the caption "N objects" (N = distinct concepts), a dark bar per concept, labels at -45 degrees
    below, a left axis with ticks at 1, (max+1)//2 and max and the word "units". The drawing is
    `scale` times its natural size (width/height attributes; the viewBox keeps the geometry). The
    label '-' (no concept) is never a bar.
    """
    unit_labels = [u for u in unit_labels if not (isinstance(u, (tuple, list)) and len(u) == 3 and u[0] == "-")]
    bars, cats = count_concepts(unit_labels, min_iou, category_order)
    heights = [n for _, _, n in bars]
    top = max(heights, default=1)
    unit_h = barheight / max(top, 1)
    labelsize = float(barwidth)
    gap = barwidth / 4
    textsize = int(barwidth + gap / 2)
    textmargin = labelsize * 2 / 3
    topmargin = math.ceil(textsize * 0.6)  # room for the top tick's glyphs above the bars
    # The axis: ticks right-aligned left of the bars, the word "units" left of the widest tick.
    tick_width = len(str(top)) * textsize * 0.62
    leftmargin, rightmargin = math.ceil(gap + tick_width + textsize * 1.6), 8
    # Room below the bars for the rotated labels.
    longest = max((len(label) for label, _, _ in bars), default=0)
    textheight = max(textsize * 2, math.ceil(longest * labelsize * 0.6 / math.sqrt(2) + textmargin + 4))
    # Widen the left margin when the first labels, hanging down-left, would start before x = 0.
    char_w = labelsize * 0.6 / math.sqrt(2)
    overhang = max(len(label) * char_w - (leftmargin + i * (barwidth + gap) + barwidth)
                   for i, (label, _, _) in enumerate(bars)) if bars else 0
    width = len(bars) * (barwidth + gap) + 2 * leftmargin + rightmargin
    extra = max(0, math.ceil(overhang) + 2)
    leftmargin, width = leftmargin + extra, width + extra
    height = topmargin + barheight + textheight
    basey = topmargin + barheight

    if not bars:  # room for the one-line message instead of bars
        width = max(width, leftmargin + math.ceil(textsize * 0.6 * 24) + rightmargin)
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", version="1.1",
                     width=f"{width * scale:.6g}", height=f"{height * scale:.6g}",
                     viewBox=f"0 0 {width:.6g} {height:.6g}")
    ET.SubElement(svg, "title").text = f"units per concept (IoU > {min_iou:.6g})"
    if not bars:
        _text(svg, f"no unit has IoU > {min_iou:.6g}", leftmargin, basey - barheight / 2, textsize,
              "start", **{"class": "empty"})
        return ET.tostring(svg, encoding="unicode")

    x = leftmargin
    axis = ET.SubElement(svg, "g", {"class": "axis"})
    for h in sorted({1, (top + 1) // 2, top}):
        # baseline a cap height below the tick's bar height, so the number sits on its level
        _text(axis, str(h), x - gap, basey - h * unit_h + textsize * 0.7, textsize, "end", **{"class": "tick"})
    _text(axis, "units", x - gap - tick_width - textsize * 0.35, basey - top * unit_h / 2, textsize, "middle",
          rotate=-90, **{"class": "axis-title"})

    color = {c: PALETTE[i % len(PALETTE)] for i, (c, _) in enumerate(cats)}
    backgrounds = ET.SubElement(svg, "g", {"class": "categories"})
    for cat, n in cats:
        if not n:
            continue
        span = (barwidth + gap) * n - gap
        ET.SubElement(backgrounds, "rect", x=f"{x:.6g}", y=f"{basey - top * unit_h:.6g}", width=f"{span:.6g}",
                      height=f"{top * unit_h:.6g}", fill=color[cat][1], **{"class": "category"})
        x += (barwidth + gap) * n

    x = leftmargin
    group = ET.SubElement(svg, "g", {"class": "bars"})
    for label, cat, n in bars:
        ET.SubElement(group, "rect", x=f"{x:.6g}", y=f"{basey - n * unit_h:.6g}", width=f"{barwidth:.6g}",
                      height=f"{n * unit_h:.6g}", fill=color[cat][0], **{"class": "bar"})
        x += barwidth
        _text(group, label, x, basey + textmargin, labelsize, "end", rotate=-45, **{"class": "label"})
        x += gap

    x = leftmargin
    captions = ET.SubElement(svg, "g", {"class": "captions"})
    for cat, n in cats:
        if not n:
            continue
        span = (barwidth + gap) * n
        _text(captions, f"{n} {cat}{'' if n == 1 else 's'}", x + span - gap, basey - top * unit_h + gap,
              textsize, "end", rotate=-90, **{"class": "caption"})
        x += span
    return ET.tostring(svg, encoding="unicode")
