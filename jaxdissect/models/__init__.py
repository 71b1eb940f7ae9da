"""Models: Flax Linen modules with the original layer names, and the registry that loads them.

`load(name, weights=None)` returns a frozen `LoadedModel`; `available()` lists the names;
`convert_checkpoint(name, pth, out_dir)` writes a weights folder from a published checkpoint.
`load('package.module:factory', weights=..., input_size=..., normalization=...)` loads a user's
own Linen or NNX module (user_model.load_factory).
"""
from jaxdissect.models.conversion import convert_checkpoint
from jaxdissect.models.loading import available, get_spec, load, places365_labels, register_extra_models
from jaxdissect.models.nnx_linen import nnx_to_linen
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel, ModelSpec, register
from jaxdissect.models.user_model import load_factory
from jaxdissect.models.views import LayerView, spatial_view

__all__ = ["load", "register", "get_spec", "available", "ModelSpec", "LoadedModel", "IMAGENET_NORMALIZATION",
           "places365_labels", "register_extra_models", "load_factory", "nnx_to_linen", "LayerView", "spatial_view",
           "convert_checkpoint"]
