"""A pass's statistics states and their metadata, written together in one atomic folder.

`save_states(folder, states, meta)` writes {key: stats state, a dataclass of stats states, or
any other pytree of arrays} and a JSON `meta` (progress, fingerprint) so that a reader sees
either the previous checkpoint or the new one, never a mix; `load_states(folder, template)`
reads them back shaped like the template, or None when there is nothing (or something else)
there. Statistics states are saved with `stats.save` (readable without a template); other
pytrees as their leaves, restored into the template's structure.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import stats
from jaxdissect.atomic import atomic_directory, existing_version
from jaxdissect.stats.io import is_state, local_checkpointer

META_FILE = "meta.json"


_TREE = ".tree"  # suffix of a pytree saved as its leaves


def _is_composite(state: Any) -> bool:
    """A dataclass whose fields are statistics states (or None), like ActivationStats."""
    return dataclasses.is_dataclass(state) and all(
        getattr(state, f.name) is None or is_state(getattr(state, f.name)) for f in dataclasses.fields(state))


def _flatten(states: Mapping[str, Any]) -> dict[str, Any]:
    """{key: state} -> {name: stats state or pytree}: composite dataclasses of states opened into
    key~field, any other pytree kept whole under key.tree."""
    flat = {}
    for key, state in states.items():
        if is_state(state):
            flat[key] = state
        elif _is_composite(state):
            for f in dataclasses.fields(state):
                value = getattr(state, f.name)
                if value is not None:
                    flat[f"{key}~{f.name}"] = value
        else:
            flat[key + _TREE] = state
    return flat


def _save_tree(path: str, tree: Any) -> None:
    leaves = {f"{i:05d}": np.asarray(jax.device_get(leaf)) for i, leaf in enumerate(jax.tree.leaves(tree))}
    with local_checkpointer() as ckpt:
        ckpt.save(os.path.abspath(path), leaves)
        ckpt.wait_until_finished()


def _load_tree(path: str, template: Any) -> Any:
    with local_checkpointer() as ckpt:
        leaves = ckpt.restore(os.path.abspath(path))
    want = jax.tree.leaves(template)
    got = [leaves[k] for k in sorted(leaves)]
    if len(got) != len(want) or any(np.shape(a) != np.shape(b) for a, b in zip(got, want)):
        raise ValueError(f"{path!r} does not hold a state shaped like the one expected")
    return jax.tree.unflatten(jax.tree.structure(template), [jnp.asarray(a) for a in got])


def write_states(folder: str, states: Mapping[str, Any]) -> None:
    """Write `states` into an (empty, private) folder; `save_states` makes it atomic."""
    for key, state in _flatten(states).items():
        if key.endswith(_TREE):
            _save_tree(os.path.join(folder, key), state)
        else:
            stats.save(os.path.join(folder, key), state)


def save_states(folder: str | os.PathLike, states: Mapping[str, Any], meta: Mapping) -> None:
    """Save `states` and `meta` atomically together (replacing what `folder` held)."""
    with atomic_directory(folder) as tmp:
        write_states(tmp, states)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(dict(meta), f, indent=1)


def load_meta(folder: str | os.PathLike) -> dict | None:
    """The metadata saved in `folder`, or None."""
    try:
        path = existing_version(folder)
        with open(os.path.join(path, META_FILE)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def load_states(folder: str | os.PathLike, template: Mapping[str, Any]) -> tuple[dict, dict] | None:
    """(states shaped like `template`, meta) saved in `folder`, or None if there is nothing there
    or it holds other keys than the template."""
    try:
        path = existing_version(folder)
    except FileNotFoundError:
        return None
    meta = load_meta(path)
    if meta is None:
        return None
    states = read_states(path, template)
    return None if states is None else (states, meta)


def read_states(path: str, template: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> dict | None:
    """The states written by `write_states` in `path`, shaped like `template` (None if the folder
    holds other keys; names in `ignore` are other files of the folder)."""
    keys = sorted(k for k in os.listdir(path) if k != META_FILE and k not in ignore)
    expected = _flatten(template)
    if keys != sorted(expected):
        return None
    flat = {key: _load_tree(os.path.join(path, key), expected[key]) if key.endswith(_TREE)
            else stats.load(os.path.join(path, key)) for key in keys}
    states = {}
    for key, state in template.items():
        if is_state(state):
            states[key] = flat[key]
        elif key + _TREE in flat:
            states[key] = flat[key + _TREE]
        else:
            states[key] = state.replace(**{f.name: flat[f"{key}~{f.name}"] for f in dataclasses.fields(state)
                                           if getattr(state, f.name) is not None})
    return states


def remove(folder: str | os.PathLike) -> None:
    """Remove a saved folder (and its parent when that is left empty)."""
    folder = os.fspath(folder)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder + ".old", ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))
    except OSError:
        pass
