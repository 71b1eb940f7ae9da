"""save/load of any statistics state with orbax, atomically.

The folder holds the orbax checkpoint of the array fields and `meta.json` naming the class and
its static fields, so `load(path)` needs no template.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdissect.atomic import atomic_directory, existing_version
from jaxdissect.stats.agreement import MaskAgreement
from jaxdissect.stats.counts import Bincount, IoUTally, UnitCounts
from jaxdissect.stats.formula_tally import FormulaTally
from jaxdissect.stats.moments import CrossCovariance, Moments
from jaxdissect.stats.quantile import QuantileSketch
from jaxdissect.stats.refine import QuantileRefinement
from jaxdissect.stats.thresholds import MultiThresholdTally
from jaxdissect.stats.topk import TopK

_META = "meta.json"
_ARRAYS = "arrays"


def local_checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer for this process alone: in a multi-process run the files here are
    written by process 0 and read by each process on its own, so no cross-process barrier."""
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


_STATE_CLASSES = {c.__name__: c for c in (QuantileSketch, TopK, Moments, CrossCovariance, Bincount, IoUTally,
                                          QuantileRefinement, UnitCounts, MaskAgreement, MultiThresholdTally,
                                          FormulaTally)}


def register_state_class(cls: type) -> type:
    """Let `save`/`load` handle another statistics state class (a flax.struct.dataclass)."""
    _STATE_CLASSES[cls.__name__] = cls
    return cls


def _classes() -> dict:
    return _STATE_CLASSES


def is_state(value) -> bool:
    """True for an instance of a registered statistics state class."""
    return type(value).__name__ in _STATE_CLASSES and isinstance(value, _STATE_CLASSES[type(value).__name__])


def _split_fields(state):
    """(array fields, static fields); array fields that are None (e.g. an absent payload) are left out."""
    arrays, static = {}, {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if f.metadata.get("pytree_node", True):
            if value is not None:
                arrays[f.name] = np.asarray(jax.device_get(value))
        else:
            static[f.name] = value
    return arrays, static


def save(path: str | os.PathLike, state) -> None:
    """Save a statistics state to the folder `path`, replacing any previous one atomically."""
    name = type(state).__name__
    if name not in _classes():
        raise TypeError(f"save: {name} is not a jaxdissect.stats state")
    arrays, static = _split_fields(state)
    with atomic_directory(path) as tmp:
        with local_checkpointer() as ckpt:
            ckpt.save(os.path.join(tmp, _ARRAYS), arrays)
            ckpt.wait_until_finished()
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump({"class": name, "static": static,
                       "shapes": {k: list(v.shape) for k, v in arrays.items()}}, f, indent=1)


def load(path: str | os.PathLike):
    """Load a state saved with `save`; it keeps updating like the original."""
    try:
        path = existing_version(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no statistics state at {os.fspath(path)!r}") from None
    meta_path = os.path.join(path, _META)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        cls = _classes()[meta["class"]]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path!r} is not a saved jaxdissect.stats state ({e})") from None
    with local_checkpointer() as ckpt:
        arrays = ckpt.restore(os.path.join(os.path.abspath(path), _ARRAYS))
    for k, shape in meta.get("shapes", {}).items():
        if list(np.shape(arrays[k])) != shape:
            raise ValueError(f"{path!r}: field {k} has shape {np.shape(arrays[k])}, expected {shape}")
    return cls(**{k: jax.numpy.asarray(v) for k, v in arrays.items()}, **meta["static"])
