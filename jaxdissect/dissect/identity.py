"""What a model, a data source and a segmenter are, as fingerprints (never the Python objects).

A model is its name, architecture, configuration, input preparation and a digest of its
weights; a source is its kind and settings plus a digest of its contents (a folder's file list
with sizes and times, the first rendered scene, ...); a segmenter is its class, configuration,
labels and weights digest. Objects may define `identity() -> dict` to say it themselves.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np

from jaxdissect import fingerprint as fp

_DIGESTS: dict[int, tuple[Any, int, str]] = {}  # id(owner) -> (weak ref to owner, id(variables), digest)


def _weights_digest(owner: Any, variables: Any) -> str:
    """sha256 of a weights pytree, computed once per owning object (hashing VGG16's weights takes
    about a second); the entry goes away with its owner."""
    key = id(owner)
    hit = _DIGESTS.get(key)
    if hit is not None and hit[0]() is owner and hit[1] == id(variables):
        return hit[2]
    d = fp.array_digest(variables)
    try:
        ref = weakref.ref(owner, lambda _, key=key: _DIGESTS.pop(key, None))
    except TypeError:  # an object that cannot be weakly referenced: not cached
        return d
    _DIGESTS[key] = (ref, id(variables), d)
    return d


def model_identity(model: Any) -> dict:
    """A LoadedModel's fingerprint: name, kind, module class and fields, config, input, weights digest."""
    module = model.module
    return {"name": model.name, "kind": model.kind,
            "module": f"{type(module).__module__}.{type(module).__qualname__}",
            "module_fields": _module_fields(module),
            "config": fp.canonical(_plain(dict(model.config))),
            "input_size": None if model.input_size is None else list(model.input_size),
            "normalization": fp.canonical(_plain(dict(model.normalization))),
            "weights": _weights_digest(model, model.variables)}


def _module_fields(module: Any) -> str:
    """The module's repr (its dataclass fields), hashed: catches an architecture change."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Config values as JSON-able data (unknown objects by their repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return value
    return repr(value)


def source_identity(source: Any) -> dict | None:
    """A source's fingerprint from its `identity()`, or None when it cannot say what it holds."""
    ident = getattr(source, "identity", None)
    if ident is None:
        return None
    return {"class": f"{type(source).__module__}.{type(source).__qualname__}", **fp.canonical(ident())}


def segmenter_identity(segmenter: Any, name: str) -> dict:
    """A segmenter's fingerprint: its own `identity()` if it has one, else class, labels and
    the digest of its weights (a `variables` or `model.variables` attribute)."""
    ident = getattr(segmenter, "identity", None)
    if ident is not None:
        return {"name": name, **fp.canonical(ident())}
    variables = getattr(segmenter, "variables", None)
    if variables is None and hasattr(segmenter, "model"):
        variables = getattr(segmenter.model, "variables", None)
    labels = segmenter.labels
    return {"name": name, "class": f"{type(segmenter).__module__}.{type(segmenter).__qualname__}",
            "labels": fp.digest({"names": list(labels.names), "categories": list(labels.categories)}),
            "weights": None if variables is None else _weights_digest(segmenter, variables),
            "settings": _plain({k: v for k, v in vars(segmenter).items()
                                if isinstance(v, (bool, int, float, str, tuple)) and not k.startswith("_")})}


def labels_digest(labels: Any) -> str:
    """Digest of a label list (names and categories)."""
    return fp.digest({"names": list(labels.names), "categories": list(labels.categories)})
