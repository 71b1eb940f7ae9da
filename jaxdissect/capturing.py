"""Run a model with some layers captured and some layers edited, in one jitted call.

Layers are named by their dotted Flax module path ('features.conv5_3'); a layer's value is its
module's `__call__` output. Capturing uses `capture_intermediates` with a filter on that path,
so unrequested layers are never kept. An edit is a pytree with `__call__(self, x) -> x`
(e.g. a flax.struct.dataclass holding a unit mask): it is applied to its layer's output through
`nn.intercept_methods`, entered inside the jitted function, and its arrays are traced jit
arguments, so one compilation serves every edit of the same structure and shapes. A plain
function is also accepted as an edit; it is static (a new function object compiles anew).
Captured values show the edits.

Flax NNX models work the same way: `models.load` (or `models.nnx_linen.nnx_to_linen`) wraps an
NNX module so that each NNX sub-module call is a Linen layer named by its attribute path
('features.conv1', 'blocks.3.mlp'); capture and edits then need nothing NNX-specific.
`capture_views_fn` returns layers as the (N, H, W, units) arrays a dissection reads (token layers
through their patch grid, attention heads as units; see models.views).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.models import views
from jaxdissect.models.registry import LoadedModel

_COMPILED: dict[Any, Callable] = {}
_VALID_NAMES: dict[Any, tuple[str, ...]] = {}


def _dotted(module: nn.Module) -> str:
    return ".".join(module.path)


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _paths_with_call(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for key, value in tree.items():
        if key == "__call__":
            if prefix:
                out.append(".".join(prefix))
        elif isinstance(value, Mapping):
            out.extend(_paths_with_call(value, prefix + (key,)))
    return out


def valid_layer_names(model: LoadedModel, x: Any = None) -> tuple[str, ...]:
    """Every dotted module path that a forward pass calls (a dry run via eval_shape, cached per module)."""
    if model.module not in _VALID_NAMES:
        example = model.abstract_input() if x is None else _abstract(x)

        def dry(variables, x):
            _, state = model.module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
            return state

        state = jax.eval_shape(dry, model.variables, example)
        _VALID_NAMES[model.module] = tuple(_paths_with_call(state.get("intermediates", {})))
    return _VALID_NAMES[model.module]


def _check_names(model: LoadedModel, names: Sequence[str], what: str, x: Any) -> None:
    valid = valid_layer_names(model, x)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(
            f"unknown layer name(s) {unknown} to {what} in model {model.name!r}; dissectable layers: "
            f"{', '.join(model.layer_names)}; all valid names: {', '.join(valid)}")


def _is_static_edit(edit: Any) -> bool:
    """A plain function (a pytree leaf that is callable) is a static edit; anything else is traced."""
    leaves = jax.tree_util.tree_leaves(edit)
    return len(leaves) == 1 and leaves[0] is edit and callable(edit)


def _get_captured(intermediates: Mapping, name: str) -> Any:
    """The captured output of the layer `name`. A key may itself hold dots (an NNX layer called
    from an ancestor, e.g. 'blocks.0' under the root), so each step takes the longest key that
    starts the rest of the name."""
    node, rest = intermediates, name
    while rest:
        key = max((k for k in node if k != "__call__" and (rest == k or rest.startswith(k + "."))), key=len)
        node, rest = node[key], rest[len(key) + 1:]
    return node["__call__"][-1]  # a module called several times: its last output, as a hook would keep


def capture_fn(module: nn.Module, layers: Sequence[str] = (),
               static_edits: Sequence[tuple[str, Callable]] = ()) -> Callable:
    """The jitted `(variables, x, traced_edits) -> (output, {layer: value})` that `capture` uses,
    for composing into other jitted code; names are not checked here (see valid_layer_names)."""
    layers = tuple(layers)
    static_edits = tuple(static_edits)
    wanted = frozenset(layers)

    def run(variables, x, traced_edits):
        edits = {**dict(static_edits), **traced_edits}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if edits and context.method_name == "__call__":
                name = _dotted(context.module)
                edit = edits.get(name)
                if edit is not None:
                    try:
                        out = edit(out)
                    except (ValueError, TypeError) as e:
                        raise ValueError(f"edit of layer {name!r} (output {tuple(out.shape)}): {e}") from e
            return out

        with nn.intercept_methods(interceptor):
            if not wanted:
                return module.apply(variables, x), {}
            y, state = module.apply(
                variables, x, mutable=["intermediates"],
                capture_intermediates=lambda mdl, method: method == "__call__" and _dotted(mdl) in wanted)
        inter = state["intermediates"]
        return y, {name: _get_captured(inter, name) for name in layers}

    return jax.jit(run)




def capture_views_fn(model: LoadedModel, specs: Sequence[str],
                     static_edits: Sequence[tuple[str, Callable]] = ()) -> Callable:
    """The jitted `(variables, x, traced_edits) -> (output, {spec: (N, H, W, units)})` for layer
    specs ('blocks.3', 'blocks.3.attn.heads:head_norms'): each spec's layer is captured once and
    read through its view (models.views.spatial_view); a layer without a spatial view raises a
    ValueError naming it, when traced."""
    specs = tuple(specs)
    layers = tuple(dict.fromkeys(views.parse_spec(spec)[0] for spec in specs))
    run = capture_fn(model.module, layers, static_edits)

    def spatial(variables, x, traced_edits):
        y, acts = run(variables, x, traced_edits)
        return y, {spec: views.spatial_view(model, spec, acts[views.parse_spec(spec)[0]]) for spec in specs}

    return jax.jit(spatial)


def capture(model: LoadedModel, x: Any, layers: Sequence[str] | str = (),
            edits: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, jax.Array]]:
    """Run `model` on `x` (already normalized as model.normalization says); return
    (output, {layer: value}) for the requested layers, with `edits` ({layer: edit}) applied."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    edits = dict(edits or {})
    _check_names(model, layers, "capture", x)
    _check_names(model, tuple(edits), "edit", x)
    static = tuple(sorted(((k, e) for k, e in edits.items() if _is_static_edit(e)), key=lambda kv: kv[0]))
    traced = {k: e for k, e in edits.items() if not _is_static_edit(e)}
    key = (model.module, layers, jax.tree.structure(traced), static)
    fn = _COMPILED.get(key)
    if fn is None:
        fn = _COMPILED[key] = capture_fn(model.module, layers, static)
    return fn(model.variables, x, traced)


def layer_shapes(model: LoadedModel, layers: Sequence[str] | str | None = None,
                 x: Any = None) -> dict[str, tuple[int, ...]]:
    """Shapes of the given layers (default: model.layer_names) for input `x` (default: a batch
    of one at the model's input size), computed with eval_shape (nothing is run)."""
    layers = model.layer_names if layers is None else ((layers,) if isinstance(layers, str) else tuple(layers))
    example = model.abstract_input() if x is None else _abstract(x)
    _check_names(model, layers, "capture", example)
    fn = capture_fn(model.module, tuple(layers))
    _, acts = jax.eval_shape(fn, model.variables, example, {})
    return {name: tuple(a.shape) for name, a in acts.items()}


def clear_caches() -> None:
    """Forget compiled functions and layer-name lists (e.g. after redefining a module class)."""
    _COMPILED.clear()
    _VALID_NAMES.clear()


__all__ = ["capture", "capture_fn", "capture_views_fn", "layer_shapes", "valid_layer_names", "clear_caches"]
