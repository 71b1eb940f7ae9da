"""Run safety for long tallies: one writer per results folder, resumable pass checkpoints.

- `ExclusiveRun(dir)` (from `jaxdissect.run_lock`): the folder's lock file, which a second run
  finds and refuses; a lock left by a dead process is taken over.
- `save_pass` / `load_pass`: a pass's statistics states and its progress, written together in
  one atomic folder, so a killed run resumes from the last checkpoint with nothing counted twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from jaxdissect import stats
from jaxdissect.atomic import atomic_directory, atomic_write_text, existing_version
from jaxdissect.run_lock import LOCK_FILE, ExclusiveRun, RunLockedError  # noqa: F401 (re-exported)

_STAT_TYPES = (stats.QuantileSketch, stats.TopK, stats.Moments, stats.CrossCovariance, stats.Bincount, stats.IoUTally)
DONE_FILE = "done.txt"


def is_done(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(os.fspath(directory), DONE_FILE))


def mark_done(directory: str | os.PathLike, summary: str) -> None:
    atomic_write_text(os.path.join(os.fspath(directory), DONE_FILE), summary + "\n")


def _pass_dir(directory, name) -> str:
    return os.path.join(os.fspath(directory), "checkpoints", name)


def _flatten(states: Mapping[str, Any]) -> dict[str, Any]:
    """{key: state} -> {key or key~field: stats state}, opening composite dataclasses of states."""
    flat = {}
    for key, state in states.items():
        if isinstance(state, _STAT_TYPES):
            flat[key] = state
        else:
            for f in dataclasses.fields(state):
                flat[f"{key}~{f.name}"] = getattr(state, f.name)
    return flat


def save_pass(directory: str | os.PathLike, name: str, states: Mapping[str, Any], progress: Mapping) -> None:
    """Save the states ({key: stats state or a dataclass of them}) and progress of pass `name`,
    atomically together."""
    with atomic_directory(_pass_dir(directory, name)) as tmp:
        for key, state in _flatten(states).items():
            stats.save(os.path.join(tmp, key), state)
        with open(os.path.join(tmp, "progress.json"), "w") as f:
            json.dump(dict(progress), f, indent=1)


def load_pass(directory: str | os.PathLike, name: str, template: Mapping[str, Any]) -> tuple[dict, dict] | None:
    """(states shaped like `template`, progress) of the last checkpoint of pass `name`, or None
    if there is none or it holds other keys than the template."""
    try:
        path = existing_version(_pass_dir(directory, name))
    except FileNotFoundError:
        return None
    with open(os.path.join(path, "progress.json")) as f:
        progress = json.load(f)
    keys = sorted(k for k in os.listdir(path) if k != "progress.json")
    if keys != sorted(_flatten(template)):
        return None
    flat = {key: stats.load(os.path.join(path, key)) for key in keys}
    states = {}
    for key, state in template.items():
        if isinstance(state, _STAT_TYPES):
            states[key] = flat[key]
        else:
            states[key] = state.replace(**{f.name: flat[f"{key}~{f.name}"] for f in dataclasses.fields(state)})
    return states, progress


def clear_pass(directory: str | os.PathLike, name: str) -> None:
    """Remove a pass's checkpoint (and the checkpoints folder once it is empty)."""
    import shutil

    shutil.rmtree(_pass_dir(directory, name), ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(_pass_dir(directory, name)))
    except OSError:
        pass
