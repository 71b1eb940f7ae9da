"""Layer views: how a captured layer becomes the (N, H, W, units) array a dissection reads.

A convolutional layer (N, H, W, C) is its own view. A token layer (N, T, C) of a vision
transformer is read through its patch grid: the first `prefix_tokens` tokens (class and register
tokens) are dropped and the remaining T - prefix tokens, a square grid in row-major order, become
(N, sqrt(T - prefix), sqrt(T - prefix), C). Units are the layer's channels by default; for the
heads' concatenated outputs of an attention layer (channels [h * d, (h + 1) * d) are head h),
`units='head_norms'` makes one unit per head, the L2 norm of that head's output at each patch.

A layer spec names a layer and, optionally, the units: 'blocks.3.attn.heads' (channels) or
'blocks.3.attn.heads:head_norms'. `LayerView`s are static (hashable) and pure on arrays, so they
run inside jitted code and under `jax.eval_shape`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

UNITS = ("channels", "head_norms")
SPEC_SEPARATOR = ":"


def _isqrt_exact(n: int) -> int | None:
    r = math.isqrt(n) if n >= 0 else -1
    return r if r >= 1 and r * r == n else None


def token_prefix(num_tokens: int, prefix_tokens: int | None = None) -> int:
    """The number of leading non-patch tokens: `prefix_tokens` when given, else 0 when
    `num_tokens` is a square, else 1 (a class token) when num_tokens - 1 is; ValueError otherwise."""
    if prefix_tokens is not None:
        if not 0 <= prefix_tokens < num_tokens or _isqrt_exact(num_tokens - prefix_tokens) is None:
            raise ValueError(f"{num_tokens} tokens minus {prefix_tokens} prefix tokens = {num_tokens - prefix_tokens} "
                             "patch tokens, not a square grid")
        return prefix_tokens
    for prefix in (0, 1):
        if num_tokens > prefix and _isqrt_exact(num_tokens - prefix) is not None:
            return prefix
    raise ValueError(f"{num_tokens} tokens are neither a square patch grid nor one class token plus a square grid; "
                     "give the number of leading class/register tokens (LayerView(prefix_tokens=...))")


def tokens_to_grid(x: jax.Array, prefix_tokens: int | None = None) -> jax.Array:
    """(N, T, C) tokens -> (N, s, s, C) patch grid, dropping the first `prefix_tokens` tokens
    (None: 0 or 1, whichever leaves a square; see token_prefix). Patches are row-major."""
    if x.ndim != 3:
        raise ValueError(f"token layer must be (N, T, C), got shape {tuple(x.shape)}")
    n, t, c = x.shape
    prefix = token_prefix(t, prefix_tokens)
    side = _isqrt_exact(t - prefix)
    return x[:, prefix:].reshape(n, side, side, c)


def head_norms(x: jax.Array, heads: int) -> jax.Array:
    """(..., heads * head_dim) -> (..., heads): the L2 norm of each head's output channels."""
    c = x.shape[-1]
    if heads < 1 or c % heads:
        raise ValueError(f"{c} channels do not split into {heads} heads")
    per_head = x.reshape(*x.shape[:-1], heads, c // heads).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(per_head * per_head, axis=-1)).astype(x.dtype)


def same_aspect(hw: tuple[int, int], input_size: tuple[int, int]) -> bool:
    """Whether an h x w grid has the aspect ratio of an H x W image, within one grid cell."""
    (h, w), (ih, iw) = hw, input_size
    return abs(h * iw - w * ih) <= max(ih, iw)


@dataclasses.dataclass(frozen=True)
class LayerView:
    """How one layer is read as (N, H, W, units).

    prefix_tokens: leading class/register tokens of a token layer (None: 0 or 1, inferred from
    a square grid). heads: the head count when the layer's channels are attention heads'
    outputs, concatenated head by head. units: 'channels' (every channel is a unit) or
    'head_norms' (one unit per head: the norm of its output; needs `heads`).
    """

    prefix_tokens: int | None = None
    heads: int | None = None
    units: str = "channels"

    def __post_init__(self):
        if self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; choose one of {', '.join(UNITS)}")
        if self.units == "head_norms" and not self.heads:
            raise ValueError("units='head_norms' needs the layer's head count (heads=...)")

    def __call__(self, value: jax.Array, layer: str = "layer", input_size: tuple[int, int] | None = None) -> jax.Array:
        """The (N, H, W, units) view of a captured value; ValueError naming `layer` if it has none.
        With the model's `input_size`, a 4-D value must also have the input's aspect ratio (within
        a cell), which tells a feature map from e.g. a (N, T, heads, head_dim) array."""
        shape = tuple(value.shape)
        try:
            if value.ndim == 3:
                value = tokens_to_grid(value, self.prefix_tokens)
            elif value.ndim != 4:
                raise ValueError("only (N, H, W, C) maps and (N, T, C) token layers with a square patch grid "
                                 "are spatial")
            elif input_size is not None and not same_aspect(shape[1:3], input_size):
                raise ValueError(f"a 4-D layer is read as (N, H, W, C), but {shape[1]}x{shape[2]} is not a map of "
                                 f"the {input_size[0]}x{input_size[1]} input")
            if self.units == "head_norms":
                value = head_norms(value, int(self.heads))
        except ValueError as e:
            raise ValueError(f"layer {layer!r} of shape {shape} cannot be dissected: {e}") from None
        return value

    def is_spatial(self, shape: tuple[int, ...], input_size: tuple[int, int] | None = None) -> bool:
        """Whether a value of `shape` has a view (a 4-D map, or tokens with a square grid)."""
        try:
            jax.eval_shape(lambda v: self(v, input_size=input_size), jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
        except ValueError:
            return False
        return True


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'blocks.3.attn.heads:head_norms' -> ('blocks.3.attn.heads', 'head_norms'); no suffix -> (spec, None)."""
    layer, sep, units = spec.partition(SPEC_SEPARATOR)
    if not sep:
        return spec, None
    if units not in UNITS:
        raise ValueError(f"layer spec {spec!r}: unknown units {units!r}; write LAYER or LAYER:{'|'.join(UNITS)}")
    return layer, units


def view_for(views: Mapping[str, LayerView], spec: str) -> tuple[str, LayerView]:
    """(layer name to capture, its view) for a layer spec, given a model's registered views
    (layers without one get the default view: 4-D as is, tokens through an inferred grid)."""
    layer, units = parse_spec(spec)
    view = views.get(layer, LayerView())
    if units is not None and units != view.units:
        view = dataclasses.replace(view, units=units)
    return layer, view


def spatial_view(model: Any, spec: str, value: jax.Array) -> jax.Array:
    """The (N, H, W, units) view of `value`, the captured output of the layer `spec` names in
    `model` (a LoadedModel: its `layer_views` say how its token layers are read)."""
    layer, view = view_for(getattr(model, "layer_views", None) or {}, spec)
    input_size = getattr(model, "input_size", None)
    return view(value, layer, tuple(input_size) if input_size and getattr(model, "kind", None) != "generator" else None)


def heads_mask(heads: Any, num_heads: int, head_dim: int) -> jax.Array:
    """A (num_heads * head_dim,) 0/1 channel mask covering the given heads: edit.Ablate(mask) on
    a heads layer ablates whole heads."""
    sel = jnp.zeros((num_heads,), jnp.float32).at[jnp.asarray(heads, jnp.int32).reshape(-1)].set(1)
    return jnp.repeat(sel, head_dim)


__all__ = ["LayerView", "tokens_to_grid", "head_norms", "token_prefix", "parse_spec", "view_for", "spatial_view",
           "heads_mask", "same_aspect", "UNITS"]
