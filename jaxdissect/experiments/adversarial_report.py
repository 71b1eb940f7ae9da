"""The adversarial experiment's outputs: summary.json, per-target tables, the peak-change bar chart
and example pictures with the changed regions outlined (the original's masked_delta look: green
border where a unit's activation rose, red where it fell, the rest dimmed).

matplotlib is imported lazily (`pip install jaxdissect[plots]`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Sequence

import numpy as np

from jaxdissect.atomic import atomic_write_bytes, atomic_write_text
from jaxdissect.report.unit_images import outside_border
from jaxdissect.report.figures import figure_png, new_figure

ROSE_COLOR = np.array([0, 255, 0], np.uint8)  # green: activation rose above the level
FELL_COLOR = np.array([255, 0, 0], np.uint8)  # red: activation fell below minus the level
GROUP_COLORS = {"target": "#4B4CBF", "source": "#F0883B", "other": "#55B05B"}  # the original's
GROUP_LABELS = {"target": "{k} units most important to target class",
                "source": "{k} units most important to source class", "other": "other units"}


def masked_delta(image: np.ndarray, delta: np.ndarray, above: float, below: float) -> np.ndarray:
    """The image where `delta` > above or < below, a 1-pixel green border outside the first region
    and a red one outside the second, everything else at half brightness."""
    image = np.asarray(image)
    delta = np.asarray(delta)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"masked_delta: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if delta.shape != image.shape[:2]:
        raise ValueError(f"masked_delta: delta must have shape {image.shape[:2]}, got {delta.shape}")
    rose, fell = delta > above, delta < below
    out = image // 2
    inside = rose | fell
    out[inside] = image[inside]
    out[outside_border(rose)] = ROSE_COLOR
    out[outside_border(fell)] = FELL_COLOR
    return out


def perturbation_image(perturbation: np.ndarray, gain: float = 100.0) -> np.ndarray:
    """A perturbation (H, W, 3) in [0, 1] units as uint8: gray 128 is zero, gain x delta clamped to +-1."""
    v = np.clip(np.asarray(perturbation, np.float32) * gain, -1.0, 1.0)
    return np.rint((v + 1.0) * 127.5).astype(np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) activation map resized bilinearly to `size` (pixel centres aligned)."""
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.image.resize(jnp.asarray(values, jnp.float32), tuple(size), "bilinear"))




def bar_chart_png(summary: dict, k: int) -> bytes:
    """PNG: mean |peak activation change| of the three groups per target class (and all targets
    pooled), with the 99% interval as error bars."""
    names = list(summary["per_target"]) + (["all"] if len(summary["per_target"]) > 1 else [])
    blocks = [summary["per_target"].get(n, summary["all"]) for n in names]
    fig = new_figure((max(5.0, 1.4 * len(names) + 1.5), 3.2))
    ax = fig.subplots()
    x = np.arange(len(names))
    for i, g in enumerate(("target", "source", "other")):
        means = [b["groups"][g]["mean"] for b in blocks]
        err = [b["groups"][g]["mean"] - b["groups"][g]["low"] for b in blocks]
        ax.bar(x + (i - 1) * 0.25, means, width=0.22, yerr=err, color=GROUP_COLORS[g],
               error_kw=dict(lw=1, capsize=4, capthick=1), label=GROUP_LABELS[g].format(k=k))
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("_", " ") for n in names], rotation=20 if len(names) > 5 else 0)
    ax.set_ylabel("peak activation change")
    ax.set_xlabel("target class for adversarial attack")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False)
    return figure_png(fig)


def example_png(original: np.ndarray, adversarial: np.ndarray, maps_orig: np.ndarray, maps_adv: np.ndarray,
                source_units: Sequence[int], target_units: Sequence[int], threshold: float,
                titles: tuple[str, str]) -> bytes:
    """PNG of one attacked image: row 1 the original, its perturbation and masked_delta of the
    source class's units; row 2 the adversarial image, minus the perturbation and the target
    class's units. maps_*: (h, w, units) activations of the layer."""
    orig8 = np.rint(np.clip(original, 0, 1) * 255).astype(np.uint8)
    adv8 = np.rint(np.clip(adversarial, 0, 1) * 255).astype(np.uint8)
    pert = adversarial - original
    size = orig8.shape[:2]
    cols = 2 + max(len(source_units), len(target_units))
    fig = new_figure((1.6 * cols, 3.6))
    axes = fig.subplots(2, cols)
    for ax in axes.ravel():
        ax.axis("off")
    peak = lambda m, u: float(m[..., u].max())  # noqa: E731
    rows = ((orig8, perturbation_image(pert), source_units, titles[0], "delta x100"),
            (adv8, perturbation_image(-pert), target_units, titles[1], "-delta x100"))
    for r, (img, pimg, units, title, ptitle) in enumerate(rows):
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(title, fontsize=7)
        axes[r, 1].imshow(pimg)
        axes[r, 1].set_title(ptitle, fontsize=7)
        for c, u in enumerate(units):
            delta_map = resize_map(maps_adv[..., u] - maps_orig[..., u], size)
            axes[r, 2 + c].imshow(masked_delta(adv8, delta_map, threshold, -threshold))
            axes[r, 2 + c].set_title(f"unit {u}  Δmax {peak(maps_adv, u) - peak(maps_orig, u):+.2f}", fontsize=7)
    return figure_png(fig)


@dataclasses.dataclass
class Example:
    """One successful attack to picture: the images in [0, 1], the layer's maps on each, classes."""

    target_name: str
    index: int  # the image's sample index
    original: np.ndarray  # (H, W, 3) float in [0, 1]
    adversarial: np.ndarray
    maps_original: np.ndarray  # (h, w, units)
    maps_adversarial: np.ndarray
    source: int  # the class the image showed
    predicted: int  # the class the attacked image was taken for
    target: int


def write_examples(result, examples: Sequence[Example], threshold: float) -> list[str]:
    """Each example as examples/<target>_<index>.png (the driver picks and computes them)."""
    written = []
    k = int(result.summary["important_units"])
    for ex in examples:
        titles = (f"{ex.index} original: {result.class_names[ex.source]}",
                  f"attacked: {result.class_names[ex.predicted]}")
        png = example_png(ex.original, ex.adversarial, ex.maps_original, ex.maps_adversarial,
                          result.ranking[ex.source, :k], result.ranking[ex.target, :k], threshold, titles)
        path = os.path.join(result.directory, "examples", f"{ex.target_name}_{ex.index}.png")
        atomic_write_bytes(path, png)
        written.append(path)
    return written


def default_threshold(result) -> float:
    """0.1 x the mean peak activation of the layer over the attacked images (the original's
    absolute +-10 is about that for VGG16 conv5_3)."""
    peaks = [r.peak_orig for r in result.records.values() if r.peak_orig.size]
    return 0.1 * float(np.mean(np.concatenate(peaks))) if peaks else 0.0


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v))


def write_outputs(result, examples: Sequence[Example] = (), threshold: float | None = None) -> dict[str, str]:
    """summary.json, per_image.npz (every record), peak_change.png and the example pictures."""
    d = result.directory
    paths = {"summary": os.path.join(d, "summary.json"), "per_image": os.path.join(d, "per_image.npz"),
             "bar_chart": os.path.join(d, "peak_change.png")}
    atomic_write_text(paths["summary"], json.dumps(result.summary, indent=1, default=_json_default, allow_nan=True))
    buf = io.BytesIO()
    arrays = {f"{name}~{field}": getattr(rec, field) for name, rec in result.records.items()
              for field in ("indices", "labels", "sources", "success", "predicted", "l2", "linf", "peak_orig", "peak_adv")}
    np.savez(buf, ranking=result.ranking, **arrays)
    atomic_write_bytes(paths["per_image"], buf.getvalue())
    atomic_write_bytes(paths["bar_chart"], bar_chart_png(result.summary, int(result.summary["important_units"])))
    if examples:
        level = default_threshold(result) if threshold is None else float(threshold)
        for i, p in enumerate(write_examples(result, examples, level)):
            paths[f"example_{i}"] = p
    return paths
