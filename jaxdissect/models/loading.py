"""`load(name, weights=None)`: a registered model with its weights, ready to run.

Weights come from the package (embedded models), the converted-weights cache (converting the
official checkpoint on first use), a weights folder, or a `.pth` file. Extra model modules
(user or test models) register themselves when named in $JAXDISSECT_EXTRA_MODELS
(comma-separated module paths) or passed to `register_extra_models` (models.catalog).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from jaxdissect.models import conversion, user_model
from jaxdissect.models.catalog import EXTRA_MODELS_ENV, available, get_spec, register_extra_models
from jaxdissect.models.registry import LoadedModel, ModelSpec, places365_labels
from jaxdissect.models.weights_io import META_FILE, load_weights
from weight_conversion import cache as weights_cache
from weight_conversion.downloads import file_hashes
from weight_conversion.pth_reader import read_pth

# The jaxdissect package folder, from this module's own file: `jaxdissect.__file__` is None when a
# folder named jaxdissect (a clone's root) shadows the package as a namespace package.
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent


def _load_folder(spec: ModelSpec, folder: str | os.PathLike) -> tuple[Any, dict]:
    """Variables and config from a weights folder, checked against the module's shapes."""
    variables, config, meta = load_weights(folder)
    if meta.get("model") not in (None, spec.name):
        raise ValueError(f"weights folder {os.fspath(folder)!r} holds model {meta.get('model')!r}, not {spec.name!r}")
    config = {**dict(spec.default_config), **config}
    variables = conversion.check_variables(spec.name, variables, conversion.expected_variables(spec, config))
    return variables, config


def _default_weights(spec: ModelSpec) -> tuple[Any, dict]:
    if spec.packaged_weights:
        return _load_folder(spec, PACKAGE_DIR / spec.packaged_weights)
    if spec.original_files is not None:
        return conversion.convert_original_files(spec, None)
    if spec.convert is None:
        raise ValueError(f"model {spec.name!r} has no packaged weights and no checkpoint to convert; "
                         "pass weights=DIR")
    folder = weights_cache.weights_dir(spec.name)
    if not (folder / META_FILE).is_file():
        conversion.convert_checkpoint(spec.name, out_dir=folder)
    return _load_folder(spec, folder)


def _pth_weights(spec: ModelSpec, path: str, cache_converted: bool) -> tuple[Any, dict]:
    if not cache_converted:
        return conversion.convert_state(spec, read_pth(path))
    _, sha256 = file_hashes(path)
    folder = weights_cache.weights_dir(f"{spec.name}-{sha256[:16]}")
    if not (folder / META_FILE).is_file():
        conversion.convert_checkpoint(spec.name, path, out_dir=folder)
    return _load_folder(spec, folder)


def _is_weights_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def load(name: Any, /, weights: str | os.PathLike | None = None, *, cache: bool = True, **options: Any) -> LoadedModel:
    """The model `name` with its weights, as a frozen LoadedModel.

    name='package.module:factory' (or a factory callable, a Linen/NNX module): a user's model,
    see user_model.load_factory for `weights` and the `options` (input_size, normalization,
    key_map, kind, layers, default_layer, layer_views, prefix_tokens, labels, name).

    weights=None: the packaged weights, or the converted official checkpoint (downloaded and
    converted into the cache on first use). weights=DIR: a weights folder (weights_io format).
    weights=FILE.pth: converted into the cache under the file's hash (or in memory with
    cache=False). The segmenters (`upp_segmenter`, `color_segmenter`) take weights=None (the
    original's files, downloaded into the cache) or a folder of those files, converted at load.
    """
    if not isinstance(name, str) or user_model.is_factory_path(name):
        return user_model.load_factory(name, weights, **options)
    if options:
        raise ValueError(f"{', '.join(sorted(options))} apply to a user's model (package.module:factory), "
                         f"not to the registered model {name!r}")
    spec = get_spec(name)
    if weights is None:
        variables, config = _default_weights(spec)
    else:
        path = os.fspath(weights)
        if os.path.isdir(path) and spec.original_files is not None and not _is_weights_folder(path):
            variables, config = conversion.convert_original_files(spec, path)
        elif os.path.isdir(path):
            variables, config = _load_folder(spec, path)
        elif os.path.isfile(path) and spec.original_files is not None:
            raise ValueError(f"model {name!r} is made of several original files (encoder, decoder, labels.json): "
                             f"pass the folder holding them, not {path!r}")
        elif os.path.isfile(path):
            variables, config = _pth_weights(spec, path, cache)
        else:
            raise FileNotFoundError(f"weights {path!r} for model {name!r}: no such file or folder")
    labels = tuple(spec.labels()) if spec.labels is not None else None
    return LoadedModel(
        name=spec.name, kind=spec.kind, module=spec.build(config),
        variables=jax.tree.map(jnp.asarray, variables), config=config,
        input_size=spec.input_size, normalization=spec.normalization,
        default_layer=spec.default_layer, labels=labels,
        layer_names=tuple(spec.layer_names_for(config) if spec.layer_names_for else spec.layer_names),
        layer_views=dict(spec.layer_views_for(config)) if spec.layer_views_for else {})


__all__ = ["load", "get_spec", "available", "register_extra_models", "places365_labels", "EXTRA_MODELS_ENV"]
