"""Which models exist: the built-in families (imported here, each registers itself) and the
extra model modules of users and tests, named in $JAXDISSECT_EXTRA_MODELS (comma-separated
module paths) or passed to `register_extra_models`."""
from __future__ import annotations

import importlib
import os
from typing import Iterable

from jaxdissect.models import alexnet, clip, proggan, registry, resnet152, segmenter_nets, toy, toy_clip, vgg, vit
from jaxdissect.models.registry import ModelSpec

# The built-in families: importing them registers their models.
BUILTIN_FAMILIES = (vgg, alexnet, resnet152, proggan, toy, vit, segmenter_nets, toy_clip, clip)
EXTRA_MODELS_ENV = "JAXDISSECT_EXTRA_MODELS"
_imported_extras: set[str] = set()


def register_extra_models(modules: Iterable[str] | None = None) -> None:
    """Import model modules that call `registry.register` (default: those in $JAXDISSECT_EXTRA_MODELS)."""
    if modules is None:
        modules = os.environ.get(EXTRA_MODELS_ENV, "").split(",")
    for mod in (m.strip() for m in modules):
        if not mod or mod in _imported_extras:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ImportError(f"cannot import model module {mod!r} (from --register or ${EXTRA_MODELS_ENV}): {e}") from e
        _imported_extras.add(mod)


def get_spec(name: str) -> ModelSpec:
    """The registered spec of `name` (built-in or extra models); KeyError lists known names."""
    register_extra_models()
    return registry.get_spec(name)


def available() -> list[str]:
    """Names of every registered model, extra models included."""
    register_extra_models()
    return registry.available()
