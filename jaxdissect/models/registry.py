"""The model registry: a name -> how to build the module, where its weights come from, and
how its inputs are prepared. `load(name)` returns a ready `LoadedModel`. The model families
register themselves here at import (models.catalog imports the built-in ones)."""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models.views import LayerView

IMAGENET_NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def normalize_pixels(x: jax.Array, normalization: Mapping[str, Any]) -> jax.Array:
    """Images with values in [0, 1] -> the model's input: (x - mean) / std, or the value range
    {'range': (lo, hi)}. The one normalization every driver and `LoadedModel.prepare` use."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if "range" in normalization:
        lo, hi = normalization["range"]
        return lo + (hi - lo) * x
    mean = jnp.asarray(normalization["mean"], x.dtype)  # x's precision (float64 gradient checks)
    std = jnp.asarray(normalization["std"], x.dtype)
    return (x - mean) / std


def check_image_batch(images: Any, input_size: tuple[int, int] | None, what: str = "images") -> tuple[int, ...]:
    """The shape of an NHWC RGB batch, or a ValueError saying what is wrong with it (NCHW order,
    a single image without its batch axis, another size than the model's)."""
    shape = tuple(int(d) for d in np.shape(images))
    if len(shape) == 3 and shape[-1] == 3:
        raise ValueError(f"{what} of shape {shape} is one image; models take a batch (N, H, W, 3): "
                         "add the batch axis with images[None]")
    if len(shape) != 4:
        raise ValueError(f"{what} must be a batch of RGB images (N, H, W, 3); got shape {shape}")
    if shape[-1] != 3:
        hint = (" (this looks channels-first, NCHW: use images.transpose(0, 2, 3, 1))"
                if shape[1] == 3 else "")
        raise ValueError(f"{what} must be channels-last (N, H, W, 3); got shape {shape}{hint}")
    if input_size is not None and tuple(shape[1:3]) != tuple(input_size):
        raise ValueError(f"{what} are {shape[1]}x{shape[2]}; the model takes {input_size[0]}x{input_size[1]} "
                         "(resize them first, e.g. with PIL)")
    return shape


def abstract_input(name: str, kind: str, input_size: tuple[int, int] | None, config: Mapping[str, Any],
                   batch: int = 1) -> jax.ShapeDtypeStruct:
    """The shape and dtype of a model's input batch, without data: (batch, z_dim) latents for a
    generator, (batch, H, W, 3) float images otherwise. The one place input shapes are made."""
    if kind == "generator":
        z_dim = config.get("z_dim")
        if not z_dim:
            raise ValueError(f"model {name!r}: generator config has no 'z_dim': {dict(config)}")
        return jax.ShapeDtypeStruct((batch, int(z_dim)), jnp.float32)
    if input_size is None:
        raise ValueError(f"model {name!r} has no input_size; build an input yourself")
    return jax.ShapeDtypeStruct((batch, *map(int, input_size), 3), jnp.float32)


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

    def abstract_input(self, config: Mapping[str, Any] | None = None, batch: int = 1) -> jax.ShapeDtypeStruct:
        """The module's input batch as a jax.ShapeDtypeStruct, for `config` (default: the default config)."""
        return abstract_input(self.name, self.kind, self.input_size,
                              self.default_config if config is None else config, batch)


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

    def prepare(self, images: Any) -> jax.Array:
        """uint8 NHWC RGB images (0..255) at the model's input size -> its normalized float input.
        A generator's latents pass through (checked to be (N, z_dim))."""
        if self.kind == "generator":
            z = jnp.asarray(images, jnp.float32)
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"{self.name} takes latents of shape (N, {self.z_dim}); got {tuple(z.shape)}")
            return z
        check_image_batch(images, self.input_size)
        if np.asarray(images).dtype != np.uint8:
            raise ValueError(f"prepare takes uint8 images (0..255); got {np.asarray(images).dtype} "
                             "(for floats in [0, 1] use registry.normalize_pixels(x, model.normalization))")
        return normalize_pixels(jnp.asarray(images, jnp.float32) / 255.0, self.normalization)

    def abstract_input(self, batch: int = 1) -> jax.ShapeDtypeStruct:
        """The module's input batch as a jax.ShapeDtypeStruct (for jax.eval_shape), no data."""
        return abstract_input(self.name, self.kind, self.input_size, self.config, batch)

    def example_input(self, batch: int = 1) -> jax.Array:
        """A zero input batch of the right shape and dtype: (batch, z_dim) latents for a
        generator, (batch, H, W, 3) normalized images otherwise."""
        shape = self.abstract_input(batch)
        if self.kind == "generator":
            return jnp.zeros(shape.shape, shape.dtype)
        return self.prepare(np.zeros(shape.shape, np.uint8))


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
