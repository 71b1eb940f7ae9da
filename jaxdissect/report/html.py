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
        if key in ("name", "image"):
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
    subtitle = f"{title} \u2014 {n} unit{'' if n == 1 else 's'}" if title != name else f"{n} units"
    data = {"header": header, "units": report["units"],
            "category_order": list(report.get("category_order", CATEGORY_ORDER))}
    values = {
        "title": html.escape(str(title)),
        "name": html.escape(name),
        "subtitle": html.escape(subtitle),
        "details": _header_details_html(header),
        "bargraph": _bargraph_html(report, directory, svg),
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
