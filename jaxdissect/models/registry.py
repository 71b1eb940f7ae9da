"""The model registry: a name -> how to build the module, where its weights come from, and
how its inputs are prepared. `load(name)` returns a ready `LoadedModel`. The model families
register themselves here at import (models.catalog imports the built-in ones)."""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import numpy as np

from jaxdissect.models.views import LayerView

IMAGENET_NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the registry knows about one model, before any weights are read.

    Layer names are dotted Flax module paths ('features.conv5_3'), equal to the PyTorch
    original's names; a layer's captured value is that module's `__call__` output.
    """

    name: str
    kind: str  # 'classifier' | 'generator' | 'segmenter'
    build: Callable[[Mapping[str, Any]], nn.Module]  # config -> module
    default_config: Mapping[str, Any]
    input_size: tuple[int, int] | None  # (H, W) for image inputs; None for generators
    normalization: Mapping[str, Any]  # e.g. IMAGENET_NORMALIZATION, or {"z": "standard_normal"}
    default_layer: str
    layer_names: tuple[str, ...]  # the dissectable layers, in forward order
    labels: Callable[[], Sequence[str]] | None = None  # class names, loaded lazily
    # Converted-from-PyTorch models: where the official .pth lives and how to map it.
    url: str | None = None
    md5: str | None = None  # full md5 of the file when the original publishes one
    sha256_prefix: str | None = None  # the hash fragment in torch-hub style file names
    config_from_torch: Callable[[Mapping[str, np.ndarray]], dict] | None = None
    convert: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict] | None = None
    # Embedded models: orbax checkpoint shipped inside the package (relative to jaxdissect/).
    packaged_weights: str | None = None
    # When the layers depend on the checkpoint (e.g. a generator's depth): config -> layer names.
    layer_names_for: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
    # Models made of several original files (the segmenters): folder holding them, or None for
    # the cached download -> (variables, config).
    original_files: Callable[[Any], tuple[Any, dict]] | None = None
    # How token layers are read as (N, H, W, units): config -> {layer: LayerView} (models.views).
    layer_views_for: Callable[[Mapping[str, Any]], Mapping[str, LayerView]] | None = None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: module + variables + how to feed it."""

    name: str
    kind: str
    module: nn.Module
    variables: Any
    config: Mapping[str, Any]
    input_size: tuple[int, int] | None
    normalization: Mapping[str, Any]
    default_layer: str
    layer_names: tuple[str, ...]
    labels: tuple[str, ...] | None
    # {layer: LayerView} for layers not read as they are (token layers, attention heads); a
    # layer without an entry gets the default view (models.views.view_for).
    layer_views: Mapping[str, LayerView] = dataclasses.field(default_factory=dict)

    @property
    def z_dim(self) -> int | None:
        """Latent size for generators (None for classifiers)."""
        return self.config.get("z_dim") if self.kind == "generator" else None


@functools.lru_cache(maxsize=None)
def places365_labels() -> tuple[str, ...]:
    """The 365 Places365 class names in class-index order ('airfield', ..., 'zen_garden');
    sub-categories are joined with '-' ('volleyball_court-outdoor')."""
    text = importlib.resources.files("jaxdissect.models").joinpath("places365_labels.txt").read_text()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 365:
        raise ValueError(f"places365_labels.txt holds {len(names)} names, expected 365")
    return names


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (a later registration of the same name replaces it)."""
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; a clear error lists the known names. (The built-in
    families register when jaxdissect.models is imported; see models.catalog.)"""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of every registered model."""
    return sorted(_REGISTRY)
