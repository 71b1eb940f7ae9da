"""Key-map helpers: a key map is a list of `Entry`s (checkpoint key, expected PyTorch shape,
destination in the Flax variables, layout change). `apply_keymap` checks every key and shape
first and raises one KeyMapError naming every missing, unexpected and mis-shaped key; only then
does it build the nested {'params': ..., 'batch_stats': ...} tree of float32 numpy arrays.
A family's `KeyMap` is its three functions bound to the architecture facts the model passes in."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from weight_conversion.errors import KeyMapError

# Checkpoint entries that carry no weights; accepted when present, never required.
IGNORED_SUFFIXES = ("num_batches_tracked",)


def same(w: np.ndarray) -> np.ndarray:
    """No layout change (biases, norm scales, running statistics)."""
    return w


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I/groups, kH, kW) -> Flax kernel (kH, kW, I/groups, O)."""
    return w.transpose(2, 3, 1, 0)


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return w.T


@dataclasses.dataclass(frozen=True)
class Entry:
    """One checkpoint tensor and where it goes in the Flax variables."""

    key: str  # PyTorch state-dict key, e.g. 'features.conv1_1.weight'
    shape: tuple[int, ...]  # the shape the model expects, in PyTorch layout
    target: tuple[str, ...]  # ('params', 'features', 'conv1_1', 'conv', 'kernel')
    transform: Callable[[np.ndarray], np.ndarray] = same


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """A model family's key map, bound to the architecture facts its model module passed in."""

    config_from_torch: Callable[[Mapping[str, np.ndarray]], dict]  # state dict -> module config
    entries: Callable[[Mapping[str, Any]], list[Entry]]  # config -> every expected checkpoint key
    convert: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict]  # (state, config) -> variables


def conv(key: str, path: Sequence[str], out_ch: int, in_ch: int, k: int, *, groups: int = 1,
         bias: bool = True) -> list[Entry]:
    """Entries of a torch Conv2d `key` -> Flax nn.Conv at module `path`."""
    entries = [Entry(f"{key}.weight", (out_ch, in_ch // groups, k, k), ("params", *path, "kernel"), conv_kernel)]
    if bias:
        entries.append(Entry(f"{key}.bias", (out_ch,), ("params", *path, "bias")))
    return entries


def linear(key: str, path: Sequence[str], out_f: int, in_f: int) -> list[Entry]:
    """Entries of a torch Linear `key` -> Flax nn.Dense at module `path`."""
    return [Entry(f"{key}.weight", (out_f, in_f), ("params", *path, "kernel"), dense_kernel),
            Entry(f"{key}.bias", (out_f,), ("params", *path, "bias"))]


def batchnorm(key: str, path: Sequence[str], n: int) -> list[Entry]:
    """Entries of a torch BatchNorm2d `key` -> Flax nn.BatchNorm at `path` (params + batch_stats)."""
    return [Entry(f"{key}.weight", (n,), ("params", *path, "scale")),
            Entry(f"{key}.bias", (n,), ("params", *path, "bias")),
            Entry(f"{key}.running_mean", (n,), ("batch_stats", *path, "mean")),
            Entry(f"{key}.running_var", (n,), ("batch_stats", *path, "var"))]


def _is_ignored(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in IGNORED_SUFFIXES


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_keys(state: Mapping[str, Any], entries: Iterable[Entry], model: str) -> None:
    """Raise KeyMapError naming every missing, unexpected and mis-shaped key (all at once)."""
    entries = list(entries)
    expected = {e.key: e.shape for e in entries}
    if len(expected) != len(entries):
        raise AssertionError(f"key map of {model} lists a key twice")  # a bug in the key map itself
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected and not _is_ignored(k))
    misshaped = []
    for key, shape in expected.items():
        if key in state:
            found = tuple(np.shape(state[key]))
            if found != tuple(shape):
                misshaped.append(f"{key!r} has shape {found} but {model} expects {tuple(shape)}")
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{_plural(len(missing), 'missing key')}: {', '.join(map(repr, missing))}")
        if unexpected:
            parts.append(f"{_plural(len(unexpected), 'unexpected key')}: {', '.join(map(repr, unexpected))}")
        if misshaped:
            parts.append(f"{_plural(len(misshaped), 'mis-shaped key')}: {'; '.join(misshaped)}")
        raise KeyMapError(f"checkpoint does not match model {model}: " + " | ".join(parts))


def apply_keymap(state: Mapping[str, Any], entries: Iterable[Entry], model: str) -> dict:
    """Check `state` against `entries`, then build the nested Flax variables (float32 numpy)."""
    entries = list(entries)
    check_keys(state, entries, model)
    tree: dict = {}
    for e in entries:
        node = tree
        for name in e.target[:-1]:
            node = node.setdefault(name, {})
        node[e.target[-1]] = np.ascontiguousarray(e.transform(np.asarray(state[e.key], dtype=np.float32)))
    return tree


def require(state: Mapping[str, Any], key: str, model: str, ndim: int | None = None) -> np.ndarray:
    """The array at `key` (for reading a config from a checkpoint), or a KeyMapError naming it."""
    if key not in state:
        raise KeyMapError(f"checkpoint does not match model {model}: missing key {key!r} "
                          f"(needed to read the model's sizes)")
    shape = np.shape(state[key])
    if ndim is not None and len(shape) != ndim:
        raise KeyMapError(f"checkpoint does not match model {model}: key {key!r} has shape "
                          f"{tuple(shape)}, expected {ndim} dimensions")
    return np.asarray(state[key])
