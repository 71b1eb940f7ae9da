"""Where a dissection's stages keep their results: per stage and layer a folder written
atomically with the fingerprint of what made it, and the one table of where each statistic lives."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from jaxdissect import checkpoints, stats
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text
from jaxdissect.dissect.run import DissectRun

STAGE_ACTIVATIONS, STAGE_IOU, THRESHOLDS_FILE = "activations", "iou", "thresholds.json"
FORMULAS_FILE, CLIP_FILE = "formulas.json", "clip.json"


def stats_dir(run: DissectRun, layer: str, stage: str) -> str:
    return os.path.join(run.dirs[layer], "stats", stage)


def load_stage(run: DissectRun, stage: str, template: Mapping[str, Any], expected: Callable[[str], dict]) -> dict | None:
    """Per layer, the stored states of `stage` if every layer's fingerprint matches, else None."""
    out = {}
    for layer in run.layers:
        loaded = checkpoints.load_states(stats_dir(run, layer, stage), template[layer])
        if loaded is None or loaded[1].get("fingerprint") != fp.canonical(expected(layer)):
            return None
        out[layer] = loaded
    return out


def save_stage(run: DissectRun, stage: str, layer: str, states: Mapping[str, Any], fingerprint: dict, **meta) -> None:
    checkpoints.save_states(stats_dir(run, layer, stage), states, {"fingerprint": fp.canonical(fingerprint), **meta})


# Where a finished layer's statistics live in its results folder (the one place that knows).


STATS_LAYOUT = {
    "quantiles": os.path.join("stats", STAGE_ACTIVATIONS, "quantiles"),  # QuantileSketch, upsampled activations
    "topk": os.path.join("stats", STAGE_ACTIVATIONS, "topk"),  # TopK of per-image peaks
    "top_maps": os.path.join("stats", STAGE_ACTIVATIONS, "top_maps"),  # TopK with the top images' maps
    "nonfinite": os.path.join("stats", STAGE_ACTIVATIONS, "nonfinite"),  # UnitCounts of NaN/inf samples
    "iou": os.path.join("stats", STAGE_IOU, "iou"),  # IoUTally
    "thresholds": os.path.join("stats", THRESHOLDS_FILE),  # the exact thresholds (JSON)
}


def layer_stats(directory: str, which: tuple[str, ...] | None = None) -> dict:
    """The statistics a finished dissection stored for one layer, read from `directory` (its
    results folder): the STATS_LAYOUT keys in `which` (default: all); 'thresholds' as numpy."""
    out = {}
    for key in which or tuple(STATS_LAYOUT):
        path = os.path.join(directory, STATS_LAYOUT[key])
        if key == "thresholds":
            saved = read_json(path)
            if saved is None:
                raise FileNotFoundError(f"{path!r} is missing (is {directory!r} a finished dissection's folder?)")
            out[key] = np.asarray(saved["thresholds"], np.float32)
        else:
            try:
                out[key] = stats.load(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path!r} is missing (is {directory!r} a finished dissection's folder?)") \
                    from None
    return out


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def save_errors(directory: str, errors: Mapping[int, str]) -> None:
    atomic_write_text(os.path.join(directory, "skipped_images.json"),
                      json.dumps({str(k): v for k, v in sorted(errors.items())}, indent=1, ensure_ascii=True))


def load_errors(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "skipped_images.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
