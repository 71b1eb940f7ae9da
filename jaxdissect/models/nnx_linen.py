"""Flax NNX modules as Linen modules whose every sub-module call is a Linen layer.

`nnx_to_linen(module)` splits an NNX module into its static graph and its state and returns
`(linen_module, variables)`: `linen_module.apply(variables, x)` merges the state back and runs the
NNX module. While it runs, each NNX sub-module's `__call__` goes through a small Linen module
named by the sub-module's attribute path ('features.conv1', 'blocks.3.mlp'). So everything the
project does with Linen models works unchanged on NNX ones: `capture_intermediates` captures any
such layer, `nn.intercept_methods` edits it (inside jit, with traced edit arrays), and code that
calls `module.apply(variables, x)` needs no NNX branch.

Why not `flax.nnx.bridge.ToLinen`: it rebuilds the NNX module from its class and constructor
arguments (not an existing instance with trained weights), and runs it as one opaque Linen
module, so no NNX sub-module is a Linen layer that capture or edits could name. NNX's own
`nnx.capture(..., method_outputs=...)` captures method outputs but cannot edit them, and it
patches the module classes globally while it runs. Here each merged (throw-away) instance gets a
hooked subclass for the duration of one call and its class back afterwards; nothing global changes.

The state is stored by variable type in Linen collections ('params' for nnx.Param,
'batch_stats' for nnx.BatchStat, ...) under the attribute paths, with list indices as strings;
RNG keys are stored as their raw key data. The module runs as it is: put it in evaluation mode
(`model.eval()`) first if it has dropout or batch norm. Sub-modules called inside NNX transforms
(nnx.scan, nnx.remat, nnx.vmap) run but are not layers.
"""
from __future__ import annotations

import contextvars
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from flax.nnx import variablelib

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class StateEntry:
    """One NNX variable: its Linen collection and key path, its NNX path and type, and the PRNG
    implementation when it holds a key (stored as key data)."""

    collection: str
    linen_path: tuple[str, ...]
    nnx_path: Path
    var_type: type
    key_impl: str | None = None


def _collection(var_type: type) -> str:
    return variablelib.variable_name_from_type(var_type, allow_register=True)


def state_entries(module: nnx.Module) -> tuple[tuple[StateEntry, ...], dict]:
    """(the entries of every variable of `module`, the Linen variables holding their values)."""
    _, state = nnx.split(module)
    entries, variables = [], {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        impl = None
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            impl, value = str(jax.random.key_impl(value)), jax.random.key_data(value)
        entry = StateEntry(_collection(type(var)), tuple(str(p) for p in path), tuple(path), type(var), impl)
        entries.append(entry)
        node = variables.setdefault(entry.collection, {})
        for part in entry.linen_path[:-1]:
            node = node.setdefault(part, {})
        node[entry.linen_path[-1]] = value
    return tuple(entries), variables


@dataclasses.dataclass
class _Frame:
    """A running layer: its NNX path, its Linen module and the child layers made during this run."""

    path: Path
    linen: nn.Module
    children: dict[str, nn.Module] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Run:
    """One call of an NNXModule: which merged instances are hooked, at which paths."""

    paths: dict[int, Path]
    stack: list[_Frame]


_ACTIVE: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("jaxdissect_nnx_run", default=None)
_HOOKED: dict[type, type] = {}


class Layer(nn.Module):
    """The Linen face of one NNX sub-module call: `__call__` runs it (capture and interceptors
    see this module's path and its output)."""

    call: Callable = None
    nnx_path: Path = ()

    @nn.compact
    def __call__(self, *args, **kwargs):
        run = _ACTIVE.get()
        run.stack.append(_Frame(self.nnx_path, self))
        try:
            return self.call(*args, **kwargs)
        finally:
            run.stack.pop()


def _hooked_call(self, *args, **kwargs):
    original = type(self)._jaxdissect_original
    run = _ACTIVE.get()
    path = run.paths.get(id(self)) if run is not None else None
    if path is None:
        return original.__call__(self, *args, **kwargs)
    frame = max((f for f in run.stack if f.path == path[:len(f.path)]), key=lambda f: len(f.path))
    name = ".".join(str(p) for p in path[len(frame.path):])
    layer = frame.children.get(name)
    if layer is None:
        call = original.__call__.__get__(self)
        if frame is run.stack[-1]:
            layer = Layer(call=call, nnx_path=path, name=name)
        else:  # called from outside its parent's call: attach it under its nearest running ancestor
            layer = Layer(call=call, nnx_path=path, name=name, parent=frame.linen)
        frame.children[name] = layer
    return layer(*args, **kwargs)


def _hooked_class(cls: type) -> type:
    if cls not in _HOOKED:
        _HOOKED[cls] = type(cls.__name__, (cls,), {"__call__": _hooked_call, "_jaxdissect_original": cls,
                                                   "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _HOOKED[cls]


class NNXModule(nn.Module):
    """A Linen module running a split NNX module (see the module docstring); build it with
    `nnx_to_linen`. `method` names the NNX method that `__call__` runs."""

    graphdef: Any
    entries: tuple[StateEntry, ...]
    method: str = "__call__"

    @nn.compact
    def __call__(self, *args, **kwargs):
        if self.is_initializing():
            raise ValueError("an NNX module carries its own parameters: build the variables with nnx_to_linen, "
                             "not init")
        module = nnx.merge(self.graphdef, self._merged_state())
        run = _Run({}, [_Frame((), self)])
        swapped = []
        for path, sub in nnx.iter_modules(module):
            if path and callable(getattr(type(sub), "__call__", None)) and type(sub).__call__ is not _hooked_call:
                run.paths[id(sub)] = tuple(path)
                swapped.append((sub, type(sub)))
                object.__setattr__(sub, "__class__", _hooked_class(type(sub)))
        token = _ACTIVE.set(run)
        try:
            return getattr(module, self.method)(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
            for sub, cls in swapped:
                object.__setattr__(sub, "__class__", cls)

    def _merged_state(self) -> nnx.State:
        flat = []
        for e in self.entries:
            node = self.variables[e.collection]
            for part in e.linen_path:
                node = node[part]
            if e.key_impl is not None:
                node = jax.random.wrap_key_data(node, impl=e.key_impl)
            flat.append((e.nnx_path, e.var_type(node)))
        return nnx.from_flat_state(flat)


def nnx_to_linen(module: nnx.Module, method: str = "__call__") -> tuple[NNXModule, dict]:
    """(a Linen module running `module`, its variables as numpy arrays): `apply(variables, x)`
    equals `module(x)` (or `getattr(module, method)(x)`), with every sub-module call a layer."""
    if not isinstance(module, nnx.Module):
        raise TypeError(f"expected a flax.nnx.Module, got {type(module).__name__}")
    graphdef, _ = nnx.split(module)
    entries, variables = state_entries(module)
    return NNXModule(graphdef, entries, method), jax.tree.map(np.asarray, variables)


__all__ = ["NNXModule", "nnx_to_linen", "StateEntry", "state_entries", "Layer"]
