"""Reading finished dissections back (the original's readdissect): every dissected layer of a
model under a results folder, with its report.json and its saved statistics, in one object.

    d = DissectionResults("results", model="toy_classifier")
    d.layers                        # ('features.conv1_1', ..., 'features.conv4_2')
    d.label("features.conv4_2", 7)  # 'house'
    d["features.conv4_2"].quantiles()  # the QuantileSketch of that layer (loaded on first use)

Layer folders are found by their report.json header (model, layer, dataset, seg, quantile), not
by their names, so the reader does not depend on how folders are named. What files a layer
folder holds is written down once, in `LAYOUT`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np

from jaxdissect import stats
from jaxdissect.dissect.config import MODEL_ALIASES
from jaxdissect.dissect.stage_store import STATS_LAYOUT, layer_stats
from jaxdissect.dissect.runstate import DONE_FILE
from jaxdissect.report.report_json import read_report_json

# Where things are inside one dissected layer's folder (the statistics' places: the pipeline's).
LAYOUT = {"report": "report.json", "done": DONE_FILE, **STATS_LAYOUT}


@dataclasses.dataclass
class LayerResults:
    """One dissected layer: its report (header, unit records) and, loaded on demand, its stats."""

    directory: str
    header: dict
    units: list[dict]
    _loaded: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def layer(self) -> str:
        return str(self.header.get("layer", ""))

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def done(self) -> bool:
        """Whether the dissection marked the folder finished."""
        return os.path.exists(os.path.join(self.directory, LAYOUT["done"]))

    def _unit(self, u: int) -> dict:
        if not 0 <= int(u) < len(self.units):
            raise IndexError(f"unit {u} out of range: {self.layer} has {len(self.units)} units")
        return self.units[int(u)]

    def label(self, u: int) -> str:
        return str(self._unit(u)["label"])

    def category(self, u: int) -> str:
        return str(self._unit(u)["cat"])

    def iou(self, u: int) -> float:
        return float(self._unit(u)["iou"])

    def unit_labels(self) -> list[tuple[str, str, float]]:
        """(label, category, IoU) of every unit, in unit order (what the concept bar graph takes)."""
        return [(str(r["label"]), str(r["cat"]), float(r["iou"])) for r in self.units]

    def labelled(self, min_iou: float | None = None) -> np.ndarray:
        """Unit ids whose best IoU exceeds `min_iou` (default: the header's miniou, else 0.04)."""
        cut = self.header.get("miniou", 0.04) if min_iou is None else min_iou
        return np.asarray([r["unit"] for r in self.units if float(r["iou"]) > cut], np.int64)

    @property
    def thresholds(self) -> np.ndarray:
        """(units,) activation thresholds (exact, as the dissection stored them; else the report's)."""
        if os.path.exists(os.path.join(self.directory, LAYOUT["thresholds"])):
            return np.asarray(self._stats("thresholds"), np.float64)
        return np.asarray([r["threshold"] for r in self.units], np.float64)

    def image_path(self, u: int) -> str:
        """The unit's thumbnail strip (top images with its region outlined)."""
        return os.path.join(self.directory, str(self._unit(u).get("image", f"image/unit{int(u)}.jpg")))

    def image(self, u: int) -> np.ndarray:
        """The unit's thumbnail strip as a uint8 (H, W, 3) array."""
        from PIL import Image

        path = self.image_path(u)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no thumbnail for unit {u} of {self.layer}: {path!r}") from None

    def _stats(self, what: str):
        if what not in self._loaded:
            self._loaded.update(layer_stats(self.directory, (what,)))
        return self._loaded[what]

    def quantiles(self) -> stats.QuantileSketch:
        return self._stats("quantiles")

    def topk(self) -> stats.TopK:
        return self._stats("topk")

    def iou_tally(self) -> stats.IoUTally:
        return self._stats("iou")


def read_layer(directory: str | os.PathLike) -> LayerResults:
    """One dissected layer's folder."""
    directory = os.fspath(directory)
    report = read_report_json(os.path.join(directory, LAYOUT["report"]))
    return LayerResults(directory, dict(report["header"]), list(report["units"]))


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _matches(header: dict, model: str | None, dataset: str | None, seg: str | None,
             quantile: float | None) -> bool:
    if model is not None and header.get("model") not in (model, MODEL_ALIASES.get(model, model)):
        return False
    if dataset is not None:
        d = str(header.get("dataset", ""))
        if dataset not in (d, os.path.basename(os.path.normpath(d))):
            return False
    if seg is not None and header.get("seg") != seg:
        return False
    if quantile is not None and not np.isclose(float(header.get("quantile", np.nan)), quantile):
        return False
    return True


class DissectionResults:
    """Every dissected layer of one model (and dataset, segmenter, quantile) under `outdir`.

    Layers are keyed by their full name ('features.conv4_2'); the original's short names
    ('conv4_2') work too. Two folders holding the same layer (e.g. two thumbnail sizes) are an
    error naming both; pass `directories=` to choose."""

    def __init__(self, outdir: str | os.PathLike = "results", model: str | None = None, dataset: str | None = None,
                 seg: str | None = None, quantile: float | None = None, layers: Sequence[str] | None = None,
                 directories: Sequence[str | os.PathLike] | None = None):
        if directories is None:
            outdir = os.fspath(outdir)
            if not os.path.isdir(outdir):
                raise FileNotFoundError(f"results folder {outdir!r} does not exist")
            directories = [os.path.join(outdir, d) for d in sorted(os.listdir(outdir))
                           if os.path.isfile(os.path.join(outdir, d, LAYOUT["report"]))]
        found: dict[str, LayerResults] = {}
        for d in directories:
            layer = read_layer(d)
            if not _matches(layer.header, model, dataset, seg, quantile):
                continue
            if layer.layer in found:
                raise ValueError(f"layer {layer.layer} is in two result folders, {found[layer.layer].directory!r} "
                                 f"and {layer.directory!r}; narrow down with dataset=/seg=/quantile= or directories=")
            found[layer.layer] = layer
        if layers is not None:
            found = {full: found[full] for full in (self._resolve(name, found) for name in layers)}
        if not found:
            what = ", ".join(f"{k}={v!r}" for k, v in (("model", model), ("dataset", dataset), ("seg", seg),
                                                        ("quantile", quantile)) if v is not None)
            raise FileNotFoundError(f"no dissected layer ({what or 'any'}) under {os.fspath(outdir)!r}")
        self._layers = {k: found[k] for k in sorted(found, key=_natural_key)}
        models = {str(l.header.get("model")) for l in self._layers.values()}
        self.model = models.pop() if len(models) == 1 else None

    @staticmethod
    def _resolve(name: str, found: dict) -> str:
        for candidate in (name, f"features.{name}"):
            if candidate in found:
                return candidate
        raise KeyError(f"layer {name!r} was not dissected here; dissected layers: {', '.join(sorted(found)) or 'none'}")

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self._layers)

    def __getitem__(self, layer: str) -> LayerResults:
        return self._layers[self._resolve(layer, self._layers)]

    def __iter__(self):
        return iter(self._layers.values())

    def __len__(self) -> int:
        return len(self._layers)

    def label(self, layer: str, u: int) -> str:
        return self[layer].label(u)

    def category(self, layer: str, u: int) -> str:
        return self[layer].category(u)

    def iou(self, layer: str, u: int) -> float:
        return self[layer].iou(u)

    def dir(self, layer: str) -> str:
        return self[layer].directory

    def thresholds(self, layer: str) -> np.ndarray:
        return self[layer].thresholds

    def __repr__(self) -> str:
        return f"DissectionResults(model={self.model!r}, layers={list(self._layers)})"
