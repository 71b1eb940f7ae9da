"""Run safety for long tallies: one writer per results folder, resumable pass checkpoints.

- `ExclusiveRun(dir)` (from `jaxdissect.run_lock`): the folder's lock file, which a second run
  finds and refuses; a lock left by a dead process is taken over.
- `save_pass` / `load_pass`: a pass's statistics states and its progress, written together in
  one atomic folder, so a killed run resumes from the last checkpoint with nothing counted twice.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from jaxdissect import checkpoints
from jaxdissect.atomic import atomic_write_text
from jaxdissect.run_lock import LOCK_FILE, ExclusiveRun, RunLockedError  # noqa: F401 (re-exported)

DONE_FILE = "done.txt"


def is_done(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(os.fspath(directory), DONE_FILE))


def mark_done(directory: str | os.PathLike, summary: str) -> None:
    atomic_write_text(os.path.join(os.fspath(directory), DONE_FILE), summary + "\n")


def pass_dir(directory, name) -> str:
    """Where the checkpoint of pass `name` lives in a results folder."""
    return os.path.join(os.fspath(directory), "checkpoints", name)


def save_pass(directory: str | os.PathLike, name: str, states: Mapping[str, Any], progress: Mapping) -> None:
    """Save the states ({key: stats state or a dataclass of them}) and progress of pass `name`,
    atomically together."""
    checkpoints.save_states(pass_dir(directory, name), states, progress)


def load_pass(directory: str | os.PathLike, name: str, template: Mapping[str, Any]) -> tuple[dict, dict] | None:
    """(states shaped like `template`, progress) of the last checkpoint of pass `name`, or None
    if there is none or it holds other keys than the template."""
    return checkpoints.load_states(pass_dir(directory, name), template)


def clear_pass(directory: str | os.PathLike, name: str) -> None:
    """Remove a pass's checkpoint (and the checkpoints folder once it is empty)."""
    checkpoints.remove(pass_dir(directory, name))
