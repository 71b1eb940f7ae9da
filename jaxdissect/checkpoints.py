"""A pass's statistics states and their metadata, written together in one atomic folder.

`save_states(folder, states, meta)` writes {key: stats state, or a dataclass of stats states}
and a JSON `meta` (progress, fingerprint) so that a reader sees either the previous checkpoint
or the new one, never a mix; `load_states(folder, template)` reads them back shaped like the
template, or None when there is nothing (or something else) there.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

from jaxdissect import stats
from jaxdissect.atomic import atomic_directory, existing_version
from jaxdissect.stats.io import is_state

META_FILE = "meta.json"


def _flatten(states: Mapping[str, Any]) -> dict[str, Any]:
    """{key: state} -> {key or key~field: stats state}, opening composite dataclasses of states."""
    flat = {}
    for key, state in states.items():
        if is_state(state):
            flat[key] = state
        else:
            for f in dataclasses.fields(state):
                value = getattr(state, f.name)
                if value is not None:
                    flat[f"{key}~{f.name}"] = value
    return flat


def save_states(folder: str | os.PathLike, states: Mapping[str, Any], meta: Mapping) -> None:
    """Save `states` and `meta` atomically together (replacing what `folder` held)."""
    with atomic_directory(folder) as tmp:
        for key, state in _flatten(states).items():
            stats.save(os.path.join(tmp, key), state)
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
    keys = sorted(k for k in os.listdir(path) if k != META_FILE)
    if keys != sorted(_flatten(template)):
        return None
    flat = {key: stats.load(os.path.join(path, key)) for key in keys}
    states = {}
    for key, state in template.items():
        if is_state(state):
            states[key] = flat[key]
        else:
            states[key] = state.replace(**{f.name: flat[f"{key}~{f.name}"] for f in dataclasses.fields(state)
                                           if getattr(state, f.name) is not None})
    return states, meta


def remove(folder: str | os.PathLike) -> None:
    """Remove a saved folder (and its parent when that is left empty)."""
    folder = os.fspath(folder)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder + ".old", ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))
    except OSError:
        pass
