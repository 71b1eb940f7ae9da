"""The classifier ablation's outputs: tables (npz + json), the paper's figures as PNGs, and a
section of the dissection's report.html.

Figures (matplotlib, imported lazily: `pip install jaxdissect[plots]`): the one-class curve
(removing a class's most important units together vs. removing all but them), the all-classes
distribution (baseline / best N removed / all others removed), and importance vs. IoU.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

import numpy as np

from jaxdissect.atomic import atomic_write_bytes, atomic_write_text
from jaxdissect.report.figures import figure_png, new_figure
from jaxdissect.report.html import write_report_html
from jaxdissect.report.report_json import read_report_json, to_json_value

SECTION_TITLE = "Classifier interventions: what units do for each class"
BA_DROP_LISTED = -0.005  # units listed per class in ttv_unit_ablation.json: train BA change below this




def _nanmean(a, axis=None):
    """np.nanmean without the warning for all-NaN slices (a class absent from the data)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _bottom(*values) -> float:
    """The y axis bottom: 0.4 (the paper's), lower when some value lies below it."""
    low = min((float(np.nanmin(v)) for v in values if np.isfinite(v).any()), default=0.4)
    return min(0.4, np.floor((low - 0.02) * 20) / 20)


def _n_index(result, n: int) -> int:
    if n not in result.ns:
        raise ValueError(f"N={n} was not measured; measured N: {list(result.ns)}")
    return result.ns.index(n)


def headline(result, n: int) -> dict:
    """Means over classes (NaN-free classes) of the class's own val BA: baseline, best N removed,
    only best N kept, N random units removed."""
    i = _n_index(result, n)
    base = np.asarray(result.baseline["balanced_accuracy"])
    rand = _nanmean(result.random_removed_ba[i], axis=0)  # (classes,) over draws
    rand_kept = _nanmean(result.random_kept_ba[i], axis=0)
    ok = ~(np.isnan(base) | np.isnan(result.removed_ba[:, i]) | np.isnan(result.kept_ba[:, i]))
    m = lambda a: float(np.mean(np.asarray(a)[ok])) if ok.any() else float("nan")  # noqa: E731
    return {"n": n, "classes": int(ok.sum()), "baseline_ba": m(base), "best_removed_ba": m(result.removed_ba[:, i]),
            "others_removed_ba": m(result.kept_ba[:, i]), "random_removed_ba": m(rand),
            "only_random_kept_ba": m(rand_kept),
            "units_kept_when_others_removed": n, "units": result.num_units}


# ---------------------------------------------------------------------------------------------
# Figures


def plot_one_class(result, index: int, n: int) -> bytes:
    """PNG: class `result.curve_classes[index]`'s val BA against the number of units removed,
    most important first vs. least important first; points at 0, n and units - n."""
    c = result.curve_classes[index]
    units = result.num_units
    k = np.arange(1, units)
    base = float(result.baseline["balanced_accuracy"][c])
    removed = np.concatenate([[base], result.curve_removed_ba[index]])
    others = np.concatenate([[base], result.curve_kept_ba[index][::-1]])  # x = units removed = units - kept
    x = np.concatenate([[0], k])
    fig = new_figure((6, 4))
    ax = fig.subplots()
    ax.plot(x, removed, color="tab:red", label="removing the most important units together")
    ax.plot(x, others, color="tab:blue", label="removing the least important units first")
    for xi, yi, col in ((0, base, "black"), (n, removed[n], "tab:red"), (units - n, others[units - n], "tab:blue")):
        ax.plot([xi], [yi], "o", color=col)
        ax.annotate(f"{yi:.2f}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xlim(0, units - 1)
    ax.set_ylim(_bottom(removed, others), 1.02)
    ax.set_xlabel(f"number of units removed from {result.layer} (of {units})")
    ax.set_ylabel("balanced accuracy (val)")
    ax.set_title(f"{result.class_names[c]}: {n} most important units kept vs removed")
    ax.legend(fontsize=8, loc="lower left")
    return figure_png(fig)


def plot_all_classes(result, n: int, seed: int = 0) -> bytes:
    """PNG: every class's own val BA for the baseline, with its best n units removed, and with
    all other units removed (violins with the classes as jittered points)."""
    i = _n_index(result, n)
    groups = [("baseline", np.asarray(result.baseline["balanced_accuracy"]), "black"),
              (f"best {n} removed", result.removed_ba[:, i], "tab:red"),
              (f"{result.num_units - n} others removed", result.kept_ba[:, i], "tab:blue")]
    fig = new_figure((6, 4))
    ax = fig.subplots()
    rng = np.random.default_rng(seed)
    for j, (name, values, col) in enumerate(groups):
        v = values[~np.isnan(values)]
        if v.size > 1 and np.ptp(v) > 0:
            parts = ax.violinplot([v], positions=[j], widths=0.8, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(col)
                body.set_alpha(0.2)
        ax.scatter(j + rng.uniform(-0.15, 0.15, v.size), v, s=8, color=col, alpha=0.7)
        if v.size:
            ax.plot([j - 0.3, j + 0.3], [v.mean()] * 2, color=col, lw=2)
            ax.annotate(f"mean {v.mean():.2f}", (j, 1.0), ha="center", fontsize=8)
    ax.set_xticks(range(3), [g[0] for g in groups])
    ax.set_ylim(_bottom(*(g[1] for g in groups)), 1.05)
    ax.set_ylabel("balanced accuracy of the class (val)")
    ax.set_title(f"all {len(result.class_names)} classes, {result.layer}")
    return figure_png(fig)


def plot_importance_vs_iou(result) -> bytes:
    """PNG: mean best IoU (with standard error) of the units per importance group."""
    g = result.iou_groups
    mean = np.asarray(g["mean_iou"], float)
    se = np.asarray(g["se_iou"], float)
    fig = new_figure((6, 4))
    ax = fig.subplots()
    x = np.arange(len(g["group"]))
    ax.bar(x, np.nan_to_num(mean), yerr=np.nan_to_num(se), color="tab:green", alpha=0.7, capsize=3)
    for xi, m, count in zip(x, mean, g["units"]):
        ax.annotate(f"{count} units", (xi, 0 if np.isnan(m) else m), textcoords="offset points", xytext=(0, 12),
                    ha="center", fontsize=7)
    ax.set_xticks(x, g["group"])
    ax.set_xlabel("number of classes for which the unit is among the 4 most important")
    ax.set_ylabel("mean best IoU of the unit's concept")
    ax.set_title(f"importance vs interpretability, {result.layer}")
    return figure_png(fig)


# ---------------------------------------------------------------------------------------------
# Tables


def tables(result, n: int) -> dict[str, dict[str, Any]]:
    """{file stem: {name: array or value}} of every table of the experiment."""
    names = list(result.class_names)
    deltas = result.train_single_ba - result.baseline_train_ba[None, :]  # (units, classes)
    listed = {}
    for c, name in enumerate(names):
        order = np.argsort(deltas[:, c], kind="stable")
        listed[name] = [{"unit": int(u), "train_ba_change": float(deltas[u, c])} for u in order
                        if deltas[u, c] < BA_DROP_LISTED]
    return {
        "baseline": {"class_names": names, **{k: np.asarray(v) for k, v in result.baseline.items()},
                     "train_balanced_accuracy": result.baseline_train_ba},
        "single_unit_ablation": {"class_names": names, "train_ba": result.train_single_ba,
                                 "val_ba": result.val_single_ba, "baseline_train_ba": result.baseline_train_ba,
                                 "baseline_val_ba": np.asarray(result.baseline["balanced_accuracy"])},
        "ttv_unit_ablation": listed,
        "class_units": {"class_names": names, "ns": np.asarray(result.ns), "ranking": result.ranking,
                        "best_removed_ba": result.removed_ba, "others_removed_ba": result.kept_ba,
                        "random_removed_ba": result.random_removed_ba, "random_kept_ba": result.random_kept_ba,
                        "baseline_ba": np.asarray(result.baseline["balanced_accuracy"])},
        "curves": {"classes": [names[c] for c in result.curve_classes],
                   "units_removed_or_kept": np.arange(1, result.num_units),
                   "best_removed_ba": result.curve_removed_ba, "only_best_kept_ba": result.curve_kept_ba},
        "importance": {"unit": np.arange(result.num_units), "importance": result.importance,
                       "best_iou": result.best_iou, "best_label": list(result.best_label),
                       "groups": result.iou_groups, "cutoff": 4},
        "summary": {"model": result.model, "layer": result.layer, "units": result.num_units,
                    "classes": len(names), "headline": headline(result, n),
                    "by_n": [headline(result, m) for m in result.ns],
                    "dissection": result.dissection_dir},
    }


def _npz_arrays(table: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            continue
        a = np.asarray(v)
        if a.dtype.kind in "iufbU":
            out[k] = a
    return out


def write_tables(directory: str, result, n: int) -> dict[str, dict]:
    """Every table as <stem>.json (and .npz for the array ones), atomically."""
    out = tables(result, n)
    for stem, table in out.items():
        atomic_write_text(os.path.join(directory, f"{stem}.json"),
                          json.dumps(to_json_value(table), indent=1, allow_nan=False) + "\n")
        arrays = _npz_arrays(table) if stem not in ("ttv_unit_ablation", "summary") else {}
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(os.path.join(directory, f"{stem}.npz"), buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------
# The report section


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:100%">'


def section_html(result, n: int, images: dict[str, bytes]) -> str:
    """HTML of the report section: headline, figures (embedded), per-class table, top units."""
    h = headline(result, n)
    i = _n_index(result, n)
    e = html.escape
    parts = [
        f"<p>Units of <b>{e(result.layer)}</b> ranked per class by how much removing each one alone lowers "
        f"the class's balanced accuracy on the ranking split; measured on the held-out split. Mean over "
        f"{h['classes']} classes: baseline {h['baseline_ba']:.3f}, its best {n} units removed "
        f"{h['best_removed_ba']:.3f}, {n} random units removed {h['random_removed_ba']:.3f}, only its best "
        f"{n} kept ({result.num_units - n} removed) {h['others_removed_ba']:.3f}, only {n} random units kept "
        f"{h['only_random_kept_ba']:.3f}.</p>",
        '<div style="display:flex;flex-wrap:wrap;gap:8px">',
        *(f"<figure style='margin:0;flex:0 1 600px'>{_img(png, name)}<figcaption>{e(name)}</figcaption></figure>"
          for name, png in images.items()),
        "</div>",
        f"<details{' open' if len(result.class_names) <= 20 else ''}><summary>per class "
        f"({len(result.class_names)} classes)</summary>",
        "<table><thead><tr><th>class</th><th>baseline BA</th>"
        f"<th>best {n} removed</th><th>{n} random removed</th><th>only best {n} kept</th>"
        "<th>4 most important units</th></tr></thead><tbody>",
    ]
    rand = _nanmean(result.random_removed_ba[i], axis=0)
    for c, name in enumerate(result.class_names):
        top = ", ".join(f"{int(u)} ({e(result.best_label[int(u)])})" for u in result.ranking[c, :4])
        parts.append(f"<tr><td>{e(name)}</td><td>{result.baseline['balanced_accuracy'][c]:.3f}</td>"
                     f"<td>{result.removed_ba[c, i]:.3f}</td><td>{rand[c]:.3f}</td>"
                     f"<td>{result.kept_ba[c, i]:.3f}</td><td>{top}</td></tr>")
    parts.append("</tbody></table></details>")
    order = np.argsort(-result.importance, kind="stable")[:10]
    parts.append("<p>Most important units (classes for which the unit is among the 4 most important): " + ", ".join(
        f"unit {int(u)}: {int(result.importance[u])} ({e(result.best_label[int(u)])}, IoU {result.best_iou[u]:.2f})"
        for u in order) + ".</p>")
    return "\n".join(parts)


def add_report_section(dissection_dir: str, title: str, section: str) -> str:
    """Re-render the dissection's report.html from its report.json with `section` (replacing a
    section of the same title, keeping any others); returns the page's path."""
    report = read_report_json(os.path.join(dissection_dir, "report.json"))
    sections = [s for s in report.get("sections") or [] if s.get("title") != title]
    report["sections"] = sections + [{"title": title, "html": section}]
    header = report.get("header", {})
    name = str(header.get("name", ""))
    page_title = f"{name} {header['layer']}" if header.get("layer") else name
    path = os.path.join(dissection_dir, "report.html")
    write_report_html(path, report, title=page_title)
    return path


def write_outputs(result, distribution_n: int = 20) -> dict[str, str]:
    """Tables, PNG figures and the report section of a finished experiment; returns their paths."""
    d = result.directory
    n = distribution_n if distribution_n in result.ns else min(result.ns, key=lambda m: abs(m - distribution_n))
    write_tables(d, result, n)
    images = {}
    for j, c in enumerate(result.curve_classes):
        images[f"one_class_{result.class_names[c]}"] = plot_one_class(result, j, n)
    images["all_classes"] = plot_all_classes(result, n)
    images["importance_vs_iou"] = plot_importance_vs_iou(result)
    paths = {}
    for name, png in images.items():
        paths[name] = os.path.join(d, "plots", f"{name}.png")
        atomic_write_bytes(paths[name], png)
    section = section_html(result, n, images)
    atomic_write_text(os.path.join(d, "section.html"), section + "\n")
    if result.dissection_dir and os.path.exists(os.path.join(result.dissection_dir, "report.json")):
        paths["report"] = add_report_section(result.dissection_dir, SECTION_TITLE, section)
    return paths
