"""One writer per results folder: a lock file that exactly one of any number of runs started
together can hold.

The lock `lockfile.pid` holds one line, `pid@host token start-time`. It is written whole to a
private file first and then hard-linked to the lock name, so it appears atomically with its full
content and the link fails if a lock exists: a lock is never seen half-written, and a lock that
cannot be read is never taken for stale. A lock whose process is gone (same host, pid not
alive) is taken over: under an advisory lock on a side file (released by the kernel when its
holder dies, so it can never go stale) the taker renames the stale lock to a name of its own,
checks that it moved the very lock it inspected, and then links its own. A lock from another
host is assumed alive: its process cannot be checked from here.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import uuid
from typing import Iterator, NamedTuple

try:
    import fcntl
except ImportError:  # no POSIX file locks (Windows): stale locks are then removed by hand
    fcntl = None

LOCK_FILE = "lockfile.pid"
_TAKEOVER_FILE = ".lockfile.pid.takeover"  # flock'ed while a stale lock is replaced; stays in place


class RunLockedError(RuntimeError):
    """Another live process (or one that cannot be checked) holds this results folder."""


class _Owner(NamedTuple):
    """The parsed content of a lock file."""

    pid: int
    host: str
    token: str
    started: str
    text: str


def _parse(text: str) -> _Owner | None:
    """The owner written in a lock, or None if the text is not a complete lock line.

    Accepts the older `pid@host` line too (its token is the whole line)."""
    if not text.endswith("\n"):
        return None
    fields = text.split()
    if len(fields) not in (1, 3):
        return None
    pid, sep, host = fields[0].partition("@")
    if not sep or not host or not pid.isdigit():
        return None
    token, started = (fields[1], fields[2]) if len(fields) == 3 else (text, "an unknown time")
    return _Owner(int(pid), host, token, started, text)


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _read(path: str) -> str | None:
    """The text of a file, or None if there is no file; undecodable bytes are kept as escapes."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "backslashreplace")
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _takeover_guard(directory: str) -> Iterator[None]:
    """Serialise stale-lock takeovers on this folder (an flock, dropped by the kernel on exit)."""
    fd = os.open(os.path.join(directory, _TAKEOVER_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class ExclusiveRun:
    """Context manager holding the results folder's lock for the duration of a run.

    Raises RunLockedError on entry if a live run (or a run on another host, or an unreadable
    lock) holds the folder; takes over a lock whose process on this host is gone."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.token: str | None = None

    def __enter__(self) -> "ExclusiveRun":
        os.makedirs(self.directory, exist_ok=True)
        token = uuid.uuid4().hex
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{os.getpid()}@{socket.gethostname()} {token} {started}\n"
        tmp = os.path.join(self.directory, f".{LOCK_FILE}.{token}.new")
        with open(tmp, "w") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        try:
            for _ in range(100):  # each retry means a lock vanished while we looked: another run ended
                if self._link(tmp):
                    self.token = token
                    return self
                owner_text = _read(self.path)
                if owner_text is None:
                    continue
                owner = self._refuse_unless_stale(owner_text)
                if fcntl is None:
                    raise RunLockedError(f"{self.path} was left by process {owner.pid}, which is gone; remove it "
                                         f"to run again (taking it over needs POSIX file locks)")
                with _takeover_guard(self.directory):
                    if self._remove_if_still(owner) and self._link(tmp):
                        self.token = token
                        return self
            raise RunLockedError(f"could not take the lock {self.path}: runs keep starting and ending on "
                                 f"{self.directory}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def _link(self, tmp: str) -> bool:
        """Create the lock atomically with its full content; False if a lock exists."""
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        return True

    def _refuse_unless_stale(self, text: str) -> _Owner:
        """The owner of a lock known to be stale; RunLockedError for any lock that may be alive."""
        owner = _parse(text)
        remove = f"if no run is writing {self.directory}, remove {self.path}"
        if owner is None:
            raise RunLockedError(f"{self.directory} is locked by {self.path}, which cannot be read as a lock "
                                 f"({text!r}); {remove}")
        if owner.host != socket.gethostname():
            raise RunLockedError(
                f"{self.directory} is being written by a run on host {owner.host} (process {owner.pid}, started "
                f"{owner.started}); it cannot be checked from {socket.gethostname()}: wait for it to finish, or "
                f"{remove}")
        if _alive(owner.pid):
            raise RunLockedError(
                f"{self.directory} is being written by another run (process {owner.pid}, started {owner.started}); "
                f"wait for it to finish, or remove {self.path} if that process is gone")
        return owner

    def _remove_if_still(self, owner: _Owner) -> bool:
        """Under the takeover guard: move aside the lock if it is still the stale one inspected.

        False if it is gone or changed (another run took it over first: the caller looks again).
        Between the check and the rename nothing can change it: only guard holders move a stale
        lock, and its dead owner cannot remove it."""
        if _read(self.path) != owner.text:
            return False
        aside = os.path.join(self.directory, f".{LOCK_FILE}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = _read(aside)
        if moved != owner.text:  # cannot happen (see above); never delete a lock not inspected
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.remove(aside)
            raise RunLockedError(f"{self.path} changed while a stale lock was being replaced ({owner.text!r} "
                                 f"became {moved!r}); start the run again")
        os.remove(aside)
        return True

    def __exit__(self, *exc) -> None:
        """Remove the lock, if it is still ours."""
        if self.token is None:
            return
        text = _read(self.path)
        owner = _parse(text) if text is not None else None
        if owner is not None and owner.token == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.token = None
