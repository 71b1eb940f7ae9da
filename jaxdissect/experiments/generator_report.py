"""Outputs of the generator interventions: npz/json tables, PNG plots, image strips and a
section of the dissection's report.html (re-rendered from its report.json plus the section).

Files in `<dissection folder>/generator_intervention/`: tables.npz, tables.json,
removal_<class>.png (portion of the class's pixels removed vs ablated units, 99% band),
context_<class>.png (added area by context, the paper's bar chart), ablation_<class>.png and
insertion_<class>.png (example strips).
"""
from __future__ import annotations

import html
import io
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from jaxdissect.atomic import atomic_write_bytes, atomic_write_text
from jaxdissect.report.figures import figure_png, new_figure
from jaxdissect.report.html import write_report_html
from jaxdissect.report.report_json import read_report_json

SECTION_TITLE = "Generator interventions"
YELLOW = np.array([255, 255, 0], np.uint8)


def tables_dict(res) -> dict:
    """The JSON tables: baseline fractions, the removal curve, the context rows, single units."""
    names = list(res.label_names)
    r, c = res.removal, res.context
    out = {
        "layer": res.layer,
        "baseline_fraction": {names[i]: float(v) for i, v in enumerate(res.baseline) if v > 0},
        "removal": {"label": r.label, "units": r.units.tolist(), "baseline_fraction": r.baseline_fraction,
                    "samples": r.samples,
                    "curve": [{"units": int(n), "removed": float(v), "lo99": float(lo), "hi99": float(hi)}
                              for n, v, lo, hi in zip(r.counts, r.removed, r.lo99, r.hi99)]},
        "insertion": {"label": c.label, "units": c.units.tolist(), "values": c.values.tolist(),
                      "baseline_count": c.baseline_count, "contexts": c.rows(1)},
        "timings": res.timings,
    }
    if res.single_unit_delta is not None:
        d = res.single_unit_delta
        out["single_units"] = [
            {"unit": u, "most_removed": names[int(np.argmin(d[u]))], "delta": float(d[u].min()),
             "most_added": names[int(np.argmax(d[u]))], "added": float(d[u].max())} for u in range(d.shape[0])]
    return out


def save_tables(directory: str, res) -> None:
    r, c = res.removal, res.context
    arrays = {"baseline_fraction": res.baseline, "label_names": np.asarray(res.label_names),
              "removal_units": r.units, "removal_counts": r.counts, "removal": r.removed, "removal_lo99": r.lo99,
              "removal_hi99": r.hi99, "removal_mean_delta": r.mean_delta,
              "insert_units": c.units, "insert_values": c.values, "context_samples": c.samples,
              "context_mean_delta": c.mean_delta, "context_std_delta": c.std_delta, "context_added": c.added,
              "context_err": c.err, "context_ci99": c.ci99}
    if res.single_unit_delta is not None:
        arrays["single_unit_delta"] = res.single_unit_delta
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(os.path.join(directory, "tables.npz"), buf.getvalue())
    atomic_write_text(os.path.join(directory, "tables.json"), json.dumps(tables_dict(res), indent=1) + "\n")


def removal_plot(table) -> bytes:
    """PNG: portion of the class's pixels removed vs number of ablated units, with the 99% band."""
    fig = new_figure((4.5, 3.2))
    ax = fig.add_subplot()
    ax.fill_between(table.counts, table.lo99, table.hi99, alpha=0.3, color="#4B4CBF", label="99% interval")
    ax.plot(table.counts, table.removed, color="#4B4CBF", marker=".")
    ax.set_xlabel(f"number of {table.label} units ablated")
    ax.set_ylabel(f"portion of {table.label} pixels removed")
    ax.set_ylim(min(0.0, float(np.nanmin(table.lo99))), max(1.0, float(np.nanmax(table.hi99))))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return figure_png(fig)


def context_plot(rows: Sequence[dict], label: str) -> bytes:
    """PNG bar chart: added area of the class (relative to its mean area) per context label."""
    fig = new_figure((max(3.0, 0.45 * len(rows) + 1), 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, [r["added"] for r in rows], yerr=[r["err"] for r in rows], color="#F0883B", capsize=2)
    ax.set_xticks(x, [r["context"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel(f"added {label} area")
    ax.set_title(f"{label} units switched on, by context", fontsize=10)
    ax.axhline(0, color="black", lw=0.5)
    return figure_png(fig)


def draw_box(image: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """A copy of the image with a 1-pixel yellow rectangle around [y0, y1) x [x0, x1)."""
    out = np.array(image)
    out[y0, x0:x1] = YELLOW
    out[y1 - 1, x0:x1] = YELLOW
    out[y0:y1, x0] = YELLOW
    out[y0:y1, x1 - 1] = YELLOW
    return out


def grid_image(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, scale: int = 1) -> np.ndarray:
    """Rows of equal-size uint8 images tiled with white gaps (each image enlarged `scale` times)."""
    tiles = [[np.kron(im, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else im for im in row] for row in rows]
    h, w, _ = tiles[0][0].shape
    ncol = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + gap) - gap, ncol * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, im in enumerate(row):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = im
    return out


def _encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def section_html(res, min_context_samples: int, shown: Sequence[int], prefix: str = "generator_intervention") -> str:
    """The report.html section: plots, strips, and the context table (all text escaped)."""
    r, c = res.removal, res.context
    esc = html.escape
    rows = c.rows(min_context_samples) or c.rows(1)
    trs = "".join(f"<tr><td>{esc(x['context'])}</td><td>{x['samples']}</td><td>{x['added']:.3f}</td>"
                  f"<td>&plusmn;{x['ci99']:.3f}</td><td>{x['mean_delta_pixels']:.1f}</td></tr>" for x in rows)
    n_half = next((int(n) for n, v in zip(r.counts, r.removed) if v >= 0.5), None)
    summary = (f"Ablating the best {int(r.counts[-1])} {esc(r.label)} units removes {r.removed[-1]:.0%} of "
               f"{esc(r.label)} pixels (99% interval {r.lo99[-1]:.0%} to {r.hi99[-1]:.0%}, {r.samples} images)"
               + (f"; half are gone after {n_half} units." if n_half is not None else "."))
    return f"""<p>Layer {esc(res.layer)}. {summary}</p>
<figure><img src="{prefix}/removal_{esc(r.label)}.png" alt="removal curve">
<figcaption>Portion of {esc(r.label)} pixels removed when the best n {esc(r.label)} units by IoU are zeroed.</figcaption></figure>
<figure><img src="{prefix}/ablation_{esc(r.label)}.png" alt="ablation examples" style="max-width:100%">
<figcaption>Rows: generated images; columns: {', '.join(str(n) for n in shown)} {esc(r.label)} units zeroed.</figcaption></figure>
<figure><img src="{prefix}/context_{esc(c.label)}.png" alt="insertion by context">
<figcaption>Added {esc(c.label)} area (relative to its mean area {c.baseline_count:.1f} pixels) when its best
{len(c.units)} units are set to their 99.5th-percentile value at one location, by the original label there.</figcaption></figure>
<figure><img src="{prefix}/insertion_{esc(c.label)}.png" alt="insertion examples" style="max-width:100%">
<figcaption>Original, then the units inserted in the yellow cell: most receptive context, least receptive context.</figcaption></figure>
<table><tr><th>context</th><th>samples</th><th>added area</th><th>99% interval</th><th>mean pixels added</th></tr>{trs}</table>
<p>Tables: <a href="{prefix}/tables.json">tables.json</a>, <a href="{prefix}/tables.npz">tables.npz</a>.</p>"""


def add_report_section(dissection_dir: str, section: dict) -> None:
    """Re-render the dissection's report.html from its report.json plus `section`."""
    path = os.path.join(dissection_dir, "report.json")
    if not os.path.exists(path):
        return
    report = read_report_json(path)
    header = report.get("header", {})
    title = f"{header.get('name', '')} {header.get('layer', '')}".strip()
    others = [s for s in report.get("sections", []) if s.get("title") != section["title"]]
    write_report_html(os.path.join(dissection_dir, "report.html"), {**report, "sections": others + [section]}, title)


def write_outputs(res, examples: tuple[np.ndarray, np.ndarray, list], dissection,
                  min_context_samples: int = 100) -> None:
    """Write every output file of an InterventionResult and the report section; `examples` are
    the driver's (ablation grid, insertion grid, shown ablation counts)."""
    d = res.directory
    os.makedirs(d, exist_ok=True)
    save_tables(d, res)
    atomic_write_bytes(os.path.join(d, f"removal_{res.removal.label}.png"), removal_plot(res.removal))
    rows = res.context.rows(min_context_samples) or res.context.rows(1)
    atomic_write_bytes(os.path.join(d, f"context_{res.context.label}.png"), context_plot(rows, res.context.label))
    ablation_grid, insertion_grid, shown = examples
    atomic_write_bytes(os.path.join(d, f"ablation_{res.removal.label}.png"), _encode_png(ablation_grid))
    atomic_write_bytes(os.path.join(d, f"insertion_{res.context.label}.png"), _encode_png(insertion_grid))
    section = {"title": SECTION_TITLE, "html": section_html(res, min_context_samples, shown)}
    add_report_section(dissection.directory, section)
