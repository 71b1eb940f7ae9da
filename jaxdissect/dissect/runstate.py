"""Run safety for long tallies: one writer per results folder, and its "done" mark.

- `ExclusiveRun(dir)` (from `jaxdissect.run_lock`): the folder's lock file, which a second run
  finds and refuses; a lock left by a dead process is taken over.
- `mark_done` / `is_done`: a layer folder whose results are complete.
(Checkpoints and resuming are the pass engine's: jaxdissect.passes.)
"""
from __future__ import annotations

import os

from jaxdissect.atomic import atomic_write_text
from jaxdissect.run_lock import LOCK_FILE, ExclusiveRun, RunLockedError  # noqa: F401 (re-exported)

DONE_FILE = "done.txt"


def is_done(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(os.fspath(directory), DONE_FILE))


def mark_done(directory: str | os.PathLike, summary: str) -> None:
    atomic_write_text(os.path.join(os.fspath(directory), DONE_FILE), summary + "\n")
