"""Run safety for long tallies: one writer per results folder, resumable pass checkpoints.

- `ExclusiveRun(dir)`: a lock file (`lockfile.pid`, created with O_EXCL, holding pid@host) that
  a second run on the same folder finds and refuses; a lock left by a dead process is taken over.
- `save_pass` / `load_pass`: a pass's statistics states and its progress, written together in
  one atomic folder, so a killed run resumes from the last checkpoint with nothing counted twice.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Mapping

from jaxdissect import checkpoints
from jaxdissect.atomic import atomic_write_text

LOCK_FILE = "lockfile.pid"
DONE_FILE = "done.txt"


class RunLockedError(RuntimeError):
    """Another live process is writing this results folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExclusiveRun:
    """Context manager holding the folder's lock file for the duration of a run."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)

    def __enter__(self) -> "ExclusiveRun":
        os.makedirs(self.directory, exist_ok=True)
        me = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._stale(owner):
                    raise RunLockedError(
                        f"{self.directory} is being written by another run (process {owner}); wait for it to "
                        f"finish, or remove {self.path} if that process is gone") from None
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def _owner(self) -> str | None:
        try:
            with open(self.path) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    @staticmethod
    def _stale(owner: str) -> bool:
        pid, _, host = owner.partition("@")
        if host != socket.gethostname() or not pid.isdigit():
            return False  # cannot check a process on another host: assume it is alive
        return not _alive(int(pid))

    def __exit__(self, *exc) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


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
