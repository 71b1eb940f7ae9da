"""The single-unit class-selectivity analysis (the original's classifier unit plots) as a run:
per-image peaks of a layer over a labelled image source, then plots for chosen units and for
each class's most important units when the classifier ablation's ranking exists.

The per-batch work is one pure function (`image_peaks`); the loop here is a plain single pass
(one forward per image, no state beyond the peaks), not yet on the resumable pass engine.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.atomic import atomic_write_bytes, atomic_write_text
from jaxdissect.experiments.selectivity import ClassSelectivity, class_selectivity, unit_plot_data
from jaxdissect.report.report_json import to_json_value

RANKING_FILE = "class_units.npz"  # written by the classifier ablation (classifier_report.write_tables)


def image_peaks(acts: jax.Array) -> jax.Array:
    """(N, h, w, units) activations -> (N, units): each unit's peak (spatial max) per image."""
    return acts.reshape(acts.shape[0], -1, acts.shape[-1]).max(axis=1)


def collect_peaks(model, layer: str, source, batch_size: int = 50,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(peaks (N, units), class labels (N,)) over a source whose batches carry labels; images
    the source could not read are left out."""
    from tqdm.auto import tqdm

    from jaxdissect.experiments.mask_sweep import layer_forward, model_input_function

    forward, prepare = layer_forward(model, layer), model_input_function(model)

    @jax.jit
    def peaks_of(variables, images):
        return image_peaks(forward(variables, prepare(images)))

    out_peaks, out_labels = [], []
    for start in tqdm(range(0, len(source), batch_size), disable=not progress, desc=f"peaks of {layer}"):
        idx = np.arange(start, min(start + batch_size, len(source)))
        pad = np.concatenate([idx, np.repeat(idx[:1], batch_size - len(idx))])  # one compilation
        batch = source.load(pad)
        if batch.labels is None:
            raise ValueError("the images have no class labels (use the scenes or a folder of class folders)")
        p = np.asarray(peaks_of(model.variables, jnp.asarray(batch.inputs)))[: len(idx)]
        ok = batch.ok[: len(idx)]
        out_peaks.append(p[ok])
        out_labels.append(np.asarray(batch.labels)[: len(idx)][ok])
    return np.concatenate(out_peaks), np.concatenate(out_labels).astype(np.int64)


def load_ranking(path: str, num_units: int, class_names: Sequence[str]) -> np.ndarray:
    """The (classes, units) ranking (most important unit first) from the classifier ablation's
    class_units.npz (or its folder); checked against the layer and the classes."""
    if os.path.isdir(path):
        path = os.path.join(path, RANKING_FILE)
    try:
        with np.load(path) as z:
            ranking = np.asarray(z["ranking"])
    except FileNotFoundError:
        raise FileNotFoundError(f"no unit ranking at {path!r} (run scripts/intervene_classifier.py first)") from None
    except KeyError:
        raise ValueError(f"{path!r} has no 'ranking' array") from None
    if ranking.shape != (len(class_names), num_units):
        raise ValueError(f"the ranking in {path!r} is {ranking.shape}, expected (classes, units) = "
                         f"({len(class_names)}, {num_units}); is it of another layer or model?")
    return ranking


@dataclasses.dataclass
class SelectivityRun:
    directory: str
    model: str
    layer: str
    selectivity: ClassSelectivity
    peaks: np.ndarray
    labels: np.ndarray
    units: tuple[int, ...]  # units plotted
    important: dict[str, list[int]]  # class -> its most important units (when a ranking was given)


def write_outputs(run: SelectivityRun, max_classes: int = 30, dissection_dir: str | None = None) -> dict[str, str]:
    """selectivity.json, peaks.npz, plots/unit<u>.png (matplotlib, when installed), and the
    report section (in the dissection's report.html when its folder is given)."""
    import io

    from jaxdissect.experiments import selectivity_report as rep

    d, sel = run.directory, run.selectivity
    paths = {"json": os.path.join(d, "selectivity.json")}
    table = rep.selectivity_table(sel, run.model, run.layer, len(run.labels))
    if run.important:
        table["important_units"] = {c: [{"unit": u, "selectivity": float(sel.index[u]),
                                         "top_class": sel.class_names[sel.top_class[u]] if sel.top_class[u] >= 0
                                         else None} for u in us] for c, us in run.important.items()}
    atomic_write_text(paths["json"], json.dumps(to_json_value(table), indent=1, allow_nan=False) + "\n")
    buf = io.BytesIO()
    np.savez(buf, peaks=run.peaks, labels=run.labels, class_names=np.asarray(sel.class_names))
    atomic_write_bytes(os.path.join(d, "peaks.npz"), buf.getvalue())
    svgs = {}
    try:
        from jaxdissect.report.figures import figure_png

        have_plots = True
    except ImportError:
        have_plots = False
    for u in run.units:
        data = unit_plot_data(sel, run.peaks, run.labels, u, max_classes=max_classes)
        svgs[u] = rep.unit_svg(data)
        if have_plots:
            try:
                png = figure_png(rep.plot_unit_selectivity(data, run.layer, run.model))
            except ImportError:
                have_plots = False
                continue
            paths[f"unit{u}"] = os.path.join(d, "plots", f"unit{u}.png")
            atomic_write_bytes(paths[f"unit{u}"], png)
    notes = []
    if run.important:
        served = sum(sel.class_names.index(c) == sel.top_class[u] for c, us in run.important.items() for u in us)
        total = sum(len(us) for us in run.important.values())
        notes.append(f"Units shown: each class's {max(len(us) for us in run.important.values())} most important "
                     f"units (classifier ablation). {served} of {total} have that class as their best class.")
    section = rep.section_html(sel, svgs, notes)
    atomic_write_text(os.path.join(d, "section.html"), section + "\n")
    if dissection_dir and os.path.exists(os.path.join(dissection_dir, "report.json")):
        from jaxdissect.experiments.classifier_report import add_report_section

        paths["report"] = add_report_section(dissection_dir, rep.SECTION_TITLE, section)
    return paths


def run_selectivity(model, layer: str, source, class_names: Sequence[str], directory: str,
                    units: Sequence[int] = (), ranking: np.ndarray | None = None, top_units: int = 4,
                    batch_size: int = 50, progress: bool = False) -> SelectivityRun:
    """Peaks over the source, the class selectivity of every unit, and the units to plot: those
    given, plus each class's `top_units` most important units from `ranking` (classes, units)."""
    peaks, labels = collect_peaks(model, layer, source, batch_size, progress)
    sel = class_selectivity(peaks, labels, len(class_names), class_names)
    for u in units:
        if not 0 <= int(u) < sel.num_units:
            raise ValueError(f"unit {u} out of range: {layer} has {sel.num_units} units")
    important = {}
    if ranking is not None:
        important = {class_names[c]: [int(u) for u in ranking[c, :top_units]] for c in range(len(class_names))}
    shown = tuple(dict.fromkeys([int(u) for u in units] + [u for us in important.values() for u in us]))
    return SelectivityRun(directory, model.name, layer, sel, peaks, labels, shown, important)
