"""Models: Flax Linen modules with the original layer names, and the registry that loads them.

`load(name, weights=None)` returns a frozen `LoadedModel`; `available()` lists the names.
"""
from jaxdissect.models.loading import available, get_spec, load, places365_labels, register_extra_models
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel, ModelSpec, register

__all__ = ["load", "register", "get_spec", "available", "ModelSpec", "LoadedModel", "IMAGENET_NORMALIZATION",
           "places365_labels", "register_extra_models"]
