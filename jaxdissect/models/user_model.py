"""A user's own model as a LoadedModel: `load_factory('package.module:factory', weights=...)`.

The factory is a callable taking no arguments that returns a Flax Linen module, a Flax NNX
module, or a ready LoadedModel. Weights come from an orbax checkpoint folder (or a jaxdissect
weights folder), a flax.serialization `.msgpack` file, or a PyTorch `.pth` file plus a key map;
they are checked against the module's variables, naming every missing, extra and mis-shaped
key. Without weights a Linen module is initialized with jax.random.PRNGKey(0) (the random
network the paper also dissects) and an NNX module keeps the parameters it was built with.
An NNX module runs through `nnx_linen.nnx_to_linen`, in evaluation mode, its layers named by
attribute path. Every user mistake is a ValueError naming what is wrong.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization, traverse_util

from jaxdissect.models import nnx_linen
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel, abstract_input
from jaxdissect.models.views import LayerView
from jaxdissect.models.weights_io import META_FILE, load_weights
from jaxdissect.stats.io import local_checkpointer
from weight_conversion import read_pth

DEFAULT_INPUT_SIZE = (224, 224)
NORMALIZATIONS = {
    "imagenet": dict(IMAGENET_NORMALIZATION),
    "[-1,1]": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "range": (-1, 1)},
    "none": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "range": (0, 1)},
}
KINDS = ("classifier", "generator", "segmenter")


def is_factory_path(name: str) -> bool:
    """Whether a model name is a 'package.module:attribute' factory path (not a registered name)."""
    return isinstance(name, str) and ":" in name


# ---- small parsers --------------------------------------------------------------------------
def parse_normalization(value: Any) -> dict:
    """'imagenet', '[-1,1]', 'none' (pixels in [0, 1]), 'MEAN,STD' (one value for all channels),
    'M1,M2,M3,S1,S2,S3', a (mean, std) pair or a {'mean', 'std'} mapping -> {'mean': (3,), 'std': (3,)}.
    Images in [0, 1] are fed to the model as (x - mean) / std."""
    if value is None:
        return dict(NORMALIZATIONS["imagenet"])
    if isinstance(value, Mapping):
        if "mean" not in value or "std" not in value:
            raise ValueError(f"normalization {dict(value)!r} needs 'mean' and 'std'")
        mean, std = value["mean"], value["std"]
    elif isinstance(value, str):
        key = value.replace(" ", "").lower()
        if key in ("-1,1", "[-1,1]", "pm1"):
            key = "[-1,1]"
        if key in NORMALIZATIONS:
            return dict(NORMALIZATIONS[key])
        try:
            numbers = [float(v) for v in key.strip("()[]").split(",")]
        except ValueError:
            numbers = []
        if len(numbers) == 2:
            mean, std = numbers[:1] * 3, numbers[1:] * 3
        elif len(numbers) == 6:
            mean, std = numbers[:3], numbers[3:]
        else:
            raise ValueError(f"normalization {value!r}: use imagenet, [-1,1], none, MEAN,STD or M1,M2,M3,S1,S2,S3")
    else:
        try:
            mean, std = value
        except (TypeError, ValueError):
            raise ValueError(f"normalization {value!r}: give a name, a (mean, std) pair or a mapping") from None
    mean = tuple(float(m) for m in np.broadcast_to(np.asarray(mean, np.float64), (3,)))
    std = tuple(float(s) for s in np.broadcast_to(np.asarray(std, np.float64), (3,)))
    if min(std) <= 0:
        raise ValueError(f"normalization std must be positive, got {std}")
    return {"mean": mean, "std": std}


def parse_input_size(value: Any) -> tuple[int, int]:
    """128, '128', '128x96', '128,96' or (128, 96) -> (H, W)."""
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        try:
            value = tuple(int(p) for p in parts if p.strip())
        except ValueError:
            raise ValueError(f"input size {value!r}: write H, HxW or H,W") from None
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        value = value * 2
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"input size {value!r}: expected (H, W) with positive sides")
    return value


def resolve(path: str, what: str = "factory") -> Any:
    """The object a 'package.module:attribute[.attribute]' path names, imported; ValueError
    naming the module or attribute that is not there."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {path!r}: expected package.module:name")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"{what} {path!r}: no module named {e.name!r} (is its folder on PYTHONPATH?)") from None
        raise ValueError(f"{what} {path!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:  # the user's module raised while importing
        raise ValueError(f"{what} {path!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name + (":" + ".".join(attr.split(".")[:i]) if i else "")
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise ValueError(f"{what} {path!r}: {where!r} has no attribute {part!r}; it has: {', '.join(public[:40])}")
        obj = getattr(obj, part)
    return obj


# ---- weights ---------------------------------------------------------------------------------
def _plain(tree: Any) -> Any:
    """Nested mappings with string keys (msgpack and orbax give dicts; State/FrozenDict too)."""
    if isinstance(tree, nnx.Variable):
        return tree.get_value()
    if isinstance(tree, Mapping) or (hasattr(tree, "items") and not hasattr(tree, "shape")):
        items = dict(tree.items())
        if set(items) == {"value"} and not isinstance(items["value"], Mapping):  # a saved nnx Variable
            return _plain(items["value"])
        return {str(k): _plain(v) for k, v in items.items()}
    return tree


def _flatten(tree: Mapping) -> dict[str, Any]:
    return {".".join(k): v for k, v in traverse_util.flatten_dict(_plain(tree)).items()} if tree else {}


def read_weights(path: str | os.PathLike, key_map: Any = None) -> dict:
    """The weights tree in a file or folder: orbax checkpoint folder, jaxdissect weights folder,
    .msgpack (flax.serialization), or .pth converted by `key_map` (see convert_pth)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, META_FILE)):
            return _plain(load_weights(path)[0])
        try:
            with local_checkpointer() as ckpt:
                return _plain(ckpt.restore(os.path.abspath(path)))
        except Exception as e:
            raise ValueError(f"weights folder {path!r} is not an orbax checkpoint readable here: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not os.path.isfile(path):
        raise ValueError(f"weights {path!r}: no such file or folder")
    if path.endswith(".msgpack"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            return _plain(serialization.msgpack_restore(data))
        except Exception as e:
            raise ValueError(f"weights {path!r} is not a flax.serialization msgpack file: {e}") from e
    if path.endswith((".pth", ".pt", ".bin")):
        if key_map is None:
            raise ValueError(f"weights {path!r} are PyTorch weights: give a key map (key_map=, --key-map) "
                             "from their names to the module's variables")
        return convert_pth(read_pth(path), key_map)
    raise ValueError(f"weights {path!r}: expected an orbax checkpoint folder, a .msgpack file or a .pth file")


def convert_pth(state: Mapping[str, np.ndarray], key_map: Any) -> dict:
    """A PyTorch state dict -> a variables tree. `key_map` is a callable (state -> tree), a
    'package.module:name' path to one, or a mapping {torch key: dotted variable path}; with a
    mapping, 4-D weights go from OIHW to HWIO and 2-D weights mapped to a '.kernel' are transposed
    (torch Linear is (out, in)); keys mapped to None are dropped, unmapped keys are an error."""
    if isinstance(key_map, str):
        key_map = resolve(key_map, "key map")
    if callable(key_map):
        try:
            return _plain(key_map(dict(state)))
        except Exception as e:
            raise ValueError(f"key map {getattr(key_map, '__name__', key_map)!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(key_map, Mapping):
        raise ValueError(f"key map must be a callable or a mapping, got {type(key_map).__name__}")
    unmapped = sorted(set(state) - set(key_map))
    absent = sorted(set(k for k, v in key_map.items() if v is not None) - set(state))
    if unmapped or absent:
        parts = ([f"torch keys without a mapping: {', '.join(unmapped)}"] if unmapped else []) + \
                ([f"mapped keys not in the .pth: {', '.join(absent)}"] if absent else [])
        raise ValueError("key map does not fit the .pth (" + " | ".join(parts) + ")")
    flat = {}
    for torch_key, target in key_map.items():
        if target is None:
            continue
        a = np.asarray(state[torch_key])
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
        elif a.ndim == 2 and target.endswith(".kernel"):
            a = a.T
        flat[tuple(target.split("."))] = a
    return traverse_util.unflatten_dict(flat)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(np.shape(a))


def fit_weights(loaded: Mapping, expected: Mapping, source: str) -> dict:
    """`loaded` arranged as `expected` (trees of arrays / ShapeDtypeStructs) with its dtypes;
    ValueError naming every missing, extra and mis-shaped key (with shapes) when it does not fit."""
    got, want = _flatten(loaded), _flatten(expected)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = [f"{k} {_shape(got[k])} (module: {_shape(want[k])})" for k in sorted(set(got) & set(want))
           if _shape(got[k]) != _shape(want[k])]
    if missing or extra or bad:
        parts = ([f"missing: {', '.join(f'{k} {_shape(want[k])}' for k in missing)}"] if missing else []) + \
                ([f"extra: {', '.join(f'{k} {_shape(got[k])}' for k in extra)}"] if extra else []) + \
                ([f"mis-shaped: {'; '.join(bad)}"] if bad else [])
        raise ValueError(f"weights {source} do not fit the module ({' | '.join(parts)})")
    dtypes = {k: getattr(v, "dtype", None) for k, v in want.items()}
    return traverse_util.unflatten_dict({tuple(k.split(".")): np.asarray(v, dtype=dtypes[k]) for k, v in got.items()})


def _linen_weights(module: nn.Module, example: jax.ShapeDtypeStruct, weights: Any, key_map: Any) -> dict:
    key = jax.random.PRNGKey(0)
    rngs = {"params": key, "dropout": key}  # modules with dropout ask for a 'dropout' key at init
    if weights is None:
        return jax.tree.map(np.asarray, jax.jit(module.init)(rngs, jnp.zeros(example.shape, example.dtype)))
    expected = jax.eval_shape(module.init, rngs, example)
    loaded = read_weights(weights, key_map)
    if "params" not in loaded and set(expected) == {"params"}:
        loaded = {"params": loaded}  # a file holding the params alone
    return fit_weights(loaded, expected, repr(os.fspath(weights)))


def _nnx_weights(entries: Sequence[nnx_linen.StateEntry], variables: dict, weights: Any, key_map: Any) -> dict:
    """Read NNX weights saved as the module's state (nnx.state(model), attribute paths) or in the
    Linen layout ({collection: ...}); return them in the Linen layout."""
    loaded = read_weights(weights, key_map)
    by_path = {".".join(e.linen_path): e for e in entries}
    expected = {}
    for e in entries:
        node = variables[e.collection]
        for part in e.linen_path:
            node = node[part]
        expected[e.linen_path] = node
    expected_tree = traverse_util.unflatten_dict(expected)
    collections = {e.collection for e in entries}
    if loaded and set(loaded) <= collections and not set(loaded) <= {e.linen_path[0] for e in entries}:
        loaded = {k: v for tree in loaded.values() for k, v in _flatten(tree).items()}
        loaded = traverse_util.unflatten_dict({tuple(k.split(".")): v for k, v in loaded.items()})
    # RNG state (keys and counters of dropout and the like) is not a weight: keep the module's own
    # when the file has none.
    flat_loaded = _flatten(loaded)
    for e in entries:
        path = ".".join(e.linen_path)
        if issubclass(e.var_type, nnx.RngState) and path not in flat_loaded:
            flat_loaded[path] = expected[e.linen_path]
    loaded = traverse_util.unflatten_dict({tuple(k.split(".")): v for k, v in flat_loaded.items()})
    fitted = _flatten(fit_weights(loaded, expected_tree, repr(os.fspath(weights))))
    out: dict = {}
    for path, value in fitted.items():
        e = by_path[path]
        node = out.setdefault(e.collection, {})
        for part in e.linen_path[:-1]:
            node = node.setdefault(part, {})
        node[e.linen_path[-1]] = value
    return out


# ---- layers ---------------------------------------------------------------------------------
def called_layers(module: nn.Module, variables: Any, example: jax.ShapeDtypeStruct) -> list[tuple[str, tuple]]:
    """(dotted name, output shape) of every sub-module `__call__` in the order the calls finish
    (a dry run under eval_shape; array outputs only)."""
    seen: list[tuple[str, tuple]] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = ".".join(context.module.path)
        if context.method_name == "__call__" and name and hasattr(out, "shape"):
            seen.append((name, tuple(out.shape)))
        return out

    def run(v, x):
        with nn.intercept_methods(interceptor):
            return module.apply(v, x)

    jax.eval_shape(run, variables, example)
    out, names = [], set()
    for name, shape in seen:
        if name not in names:
            names.add(name)
            out.append((name, shape))
    return out


def spatial_layers(calls: Sequence[tuple[str, tuple]], views: Mapping[str, LayerView],
                   input_size: tuple[int, int] | None) -> tuple[str, ...]:
    """The names among `calls` that have an (N, H, W, C) view."""
    return tuple(name for name, shape in calls if views.get(name, LayerView()).is_spatial(shape, input_size))


# ---- the loader -----------------------------------------------------------------------------
def _call_factory(factory: Any, path: str) -> Any:
    if isinstance(factory, (nn.Module, nnx.Module, LoadedModel)):
        return factory
    if not callable(factory):
        raise ValueError(f"factory {path!r} is a {type(factory).__name__}, not a callable")
    try:
        return factory()
    except Exception as e:
        raise ValueError(f"factory {path!r} failed: {type(e).__name__}: {e}") from e


def load_factory(factory: str | Callable | nn.Module | nnx.Module | LoadedModel,
                 weights: str | os.PathLike | None = None, *,
                 input_size: Any = None, normalization: Any = None, key_map: Any = None,
                 kind: str | None = None, layers: Sequence[str] | None = None, default_layer: str | None = None,
                 layer_views: Mapping[str, LayerView] | None = None, prefix_tokens: int | None = None,
                 labels: Sequence[str] | None = None, name: str | None = None) -> LoadedModel:
    """A LoadedModel from a factory ('package.module:name', or the callable / module itself).

    input_size: (H, W) of the images (default: the LoadedModel's, else 224). normalization: see
    parse_normalization (default: the LoadedModel's, else imagenet). kind: 'classifier' (default)
    or 'generator'/'segmenter'. layers: the dissectable layers (default: every layer whose output
    is spatial, from a dry run); default_layer: the default (the last spatial layer to finish).
    layer_views / prefix_tokens: how token layers are read (models.views); prefix_tokens applies
    to every token layer without a view of its own.
    """
    path = factory if isinstance(factory, str) else getattr(factory, "__qualname__", type(factory).__name__)
    obj = _call_factory(resolve(factory) if isinstance(factory, str) else factory, path)
    base = obj if isinstance(obj, LoadedModel) else None
    if base is None and not isinstance(obj, (nn.Module, nnx.Module)):
        raise ValueError(f"factory {path!r} returned a {type(obj).__name__}; expected a flax.linen.Module, "
                         "a flax.nnx.Module or a jaxdissect LoadedModel")
    kind = kind or (base.kind if base else "classifier")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if input_size is not None:
        input_size = parse_input_size(input_size)
    elif base is not None:
        input_size = base.input_size
    else:
        input_size = DEFAULT_INPUT_SIZE if kind != "generator" else None
    if kind == "generator" and base is None:
        raise ValueError("a generator from a factory must be a LoadedModel (kind='generator', config={'z_dim': ...}); "
                         "a bare module's input shape is unknown")
    norm = parse_normalization(normalization) if normalization is not None or base is None else base.normalization
    example = abstract_input(name or path, kind, input_size, base.config if base is not None else {})

    if base is not None:
        module, variables = base.module, base.variables
        if weights is not None:
            if isinstance(module, nnx_linen.NNXModule):
                variables = _nnx_weights(module.entries, jax.tree.map(np.asarray, variables), weights, key_map)
            else:
                variables = _linen_weights(module, example, weights, key_map)
    elif isinstance(obj, nnx.Module):
        obj.eval()
        module, variables = nnx_linen.nnx_to_linen(obj)
        if weights is not None:
            variables = _nnx_weights(module.entries, variables, weights, key_map)
    else:
        module, variables = obj, _linen_weights(obj, example, weights, key_map)

    views = dict(base.layer_views) if base is not None else {}
    views.update(layer_views or {})
    try:
        calls = called_layers(module, variables, example)
    except Exception as e:
        raise ValueError(f"model {path!r} does not run on a {example.shape} input: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if prefix_tokens is not None:
        for layer, shape in calls:
            if len(shape) == 3 and layer not in views:
                views[layer] = LayerView(prefix_tokens=int(prefix_tokens))
    known = {n for n, _ in calls}
    if layers:
        layers = tuple(layers)
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown} in model {path!r}; layers: {', '.join(sorted(known))}")
    elif base is not None and base.layer_names:
        layers = tuple(base.layer_names)
    else:
        layers = spatial_layers(calls, views, input_size)
    if not layers:
        raise ValueError(f"model {path!r} has no spatial layer ((N, H, W, C) maps or (N, T, C) tokens on a square "
                         f"grid) at input size {input_size}; layers: {', '.join(f'{n} {s}' for n, s in calls)}")
    spatial = spatial_layers([c for c in calls if c[0] in layers], views, input_size)
    if default_layer is None:
        default_layer = base.default_layer if base is not None else (spatial or layers)[-1]
    elif default_layer not in known:
        raise ValueError(f"default layer {default_layer!r} is not a layer of model {path!r}")
    name = name or (base.name if base is not None else path.replace(":", "."))
    labels = tuple(labels) if labels is not None else (base.labels if base is not None else None)
    config = dict(base.config) if base is not None else {}
    return LoadedModel(name=name, kind=kind, module=module, variables=jax.tree.map(jnp.asarray, variables),
                       config=config, input_size=input_size, normalization=norm, default_layer=default_layer,
                       layer_names=tuple(layers), labels=labels, layer_views=views)


__all__ = ["load_factory", "is_factory_path", "parse_normalization", "parse_input_size", "resolve", "read_weights",
           "convert_pth", "fit_weights", "called_layers", "spatial_layers", "NORMALIZATIONS"]
