"""Converting a registered model's published checkpoint into Flax variables and weights folders.

read_pth -> spec.config_from_torch -> spec.convert (the key map) -> a check of every converted
array against the shapes `module.init` would create -> weights_io.save_weights. The reading,
downloads, cache and key maps themselves are weight_conversion's; this is the model-aware part.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from jaxdissect.models import catalog
from jaxdissect.models.registry import ModelSpec
from jaxdissect.models.weights_io import save_weights
from weight_conversion import cache
from weight_conversion.downloads import fetch_cached, file_hashes
from weight_conversion.errors import KeyMapError
from weight_conversion.torchscript import read_checkpoint


def expected_variables(spec: ModelSpec, config: Mapping[str, Any]) -> Any:
    """The variable tree (of jax.ShapeDtypeStruct) `module.init` creates, without computing it."""
    module = spec.build(config)
    key = jax.random.key(0)
    return jax.eval_shape(lambda x: module.init({"params": key, "dropout": key}, x),
                          spec.abstract_input(config))


def check_variables(name: str, variables: Any, expected: Any) -> dict:
    """Compare a converted tree with the expected one; return it with the expected dtypes.

    Raises KeyMapError naming every missing, unexpected and mis-shaped variable path.
    """
    got = traverse_util.flatten_dict(unfreeze(variables), sep="/")
    want = traverse_util.flatten_dict(unfreeze(expected), sep="/")
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = [f"{k}: converted {tuple(np.shape(got[k]))}, module expects {tuple(want[k].shape)}"
                 for k in sorted(set(got) & set(want)) if tuple(np.shape(got[k])) != tuple(want[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected))
        if misshaped:
            parts.append("mis-shaped: " + "; ".join(misshaped))
        raise KeyMapError(f"converted variables of {name!r} do not fit its module ({' | '.join(parts)})")
    flat = {k: np.asarray(v, dtype=want[k].dtype) for k, v in got.items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def convert_state(spec: ModelSpec, state: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(variables, config) for a state dict already read into numpy, checked against the module."""
    if spec.convert is None:
        raise ValueError(f"model {spec.name!r} has no key map: it cannot be converted from a .pth file")
    config = dict(spec.config_from_torch(state)) if spec.config_from_torch else dict(spec.default_config)
    variables = spec.convert(state, config)
    return check_variables(spec.name, variables, expected_variables(spec, config)), config


def convert_original_files(spec: ModelSpec, folder: str | os.PathLike | None) -> tuple[dict, dict]:
    """(variables, config) of a model made of several original files (the segmenters), from the
    folder holding them (None: the cached download), checked against the module."""
    variables, config = spec.original_files(folder)
    config = {**dict(spec.default_config), **config}
    return check_variables(spec.name, variables, expected_variables(spec, config)), config


def fetch_checkpoint(spec: ModelSpec) -> str:
    """The model's official .pth in the cache, downloading (and verifying) it when absent."""
    if not spec.url:
        raise ValueError(f"model {spec.name!r} has no published checkpoint URL; pass a .pth file "
                         "(--pth FILE or weights=FILE)")
    return fetch_cached(spec.url, spec.md5, spec.sha256_prefix)


def convert_checkpoint(model_name: str, pth_path: str | os.PathLike | None = None,
                       out_dir: str | os.PathLike | None = None) -> str:
    """Convert `model_name`'s checkpoint (the official one when `pth_path` is None) into a
    weights folder (default <cache>/weights/<model_name>); returns the folder path."""
    spec = catalog.get_spec(model_name)
    out_dir = os.fspath(out_dir) if out_dir is not None else str(cache.weights_dir(model_name))
    if spec.original_files is not None:  # several files (encoder, decoder, labels.json) in a folder
        folder = None if pth_path is None else os.fspath(pth_path)
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"model {model_name!r} is made of several original files (encoder, decoder, "
                             f"labels.json): pass the folder holding them, not {folder!r}")
        variables, config = convert_original_files(spec, folder)
        save_weights(out_dir, model_name, variables, config, source=os.path.basename(folder or "") or "download")
        return out_dir
    source_url = None
    if pth_path is None:
        pth_path, source_url = fetch_checkpoint(spec), spec.url
    pth_path = os.fspath(pth_path)
    state = read_checkpoint(pth_path)  # a .pth, or a TorchScript archive (OpenAI's CLIP files)
    variables, config = convert_state(spec, state)
    _, sha256 = file_hashes(pth_path)
    save_weights(out_dir, model_name, variables, config, source=os.path.basename(pth_path),
                 source_sha256=sha256, source_url=source_url)
    return out_dir
