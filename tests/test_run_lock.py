"""The results-folder lock: exactly one of many runs started together holds it, with no lock or
a dead process's lock in place; a lock that cannot be read, or that belongs to another host or a
live process, is refused with a message saying what to remove."""
import json
import os
import socket
import subprocess
import sys

import pytest

from jaxdissect.dissect import runstate
from jaxdissect.run_lock import LOCK_FILE, ExclusiveRun, RunLockedError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.mark.parametrize("before", ["none", "stale", "stale-old"])
def test_exactly_one_of_sixteen_simultaneous_runs_holds_the_lock(tmp_path, before):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, os.path.join(HERE, "lock_contenders.py"), str(tmp_path / "run"),
                           "--procs", "16", "--rounds", "30", "--before", before],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["holders"] == [1] * 30, result["holders"]
    assert result["errors"] == []
    assert result["lock_left_after_release"] == []  # each holder removed its lock on exit
    assert result["stray_files"] == []  # no temporary or moved-aside lock left behind
    assert result["exitcodes"] == [0] * 16


def test_lock_holds_pid_host_token_and_time_and_is_removed_on_exit(tmp_path):
    with ExclusiveRun(tmp_path) as run:
        text = (tmp_path / LOCK_FILE).read_text()
        owner, token, started = text.split()
        assert owner == f"{os.getpid()}@{socket.gethostname()}"
        assert token == run.token and len(token) == 32
        assert started.endswith("Z") and started[:2] == "20"
        with pytest.raises(RunLockedError, match=f"another run \\(process {os.getpid()}"):
            ExclusiveRun(tmp_path).__enter__()  # a live process, even this one, keeps its lock
    assert not (tmp_path / LOCK_FILE).exists()
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("content", ["", "1234", "1234@" + socket.gethostname(), "\x00\x00\x00\n", "garbage here\n"])
def test_unreadable_or_partial_lock_is_never_taken_for_stale(tmp_path, content):
    (tmp_path / LOCK_FILE).write_text(content)
    with pytest.raises(RunLockedError, match="cannot be read as a lock") as e:
        ExclusiveRun(tmp_path).__enter__()
    assert str(tmp_path / LOCK_FILE) in str(e.value)  # says what to remove
    assert (tmp_path / LOCK_FILE).read_text() == content  # left untouched


def test_non_utf8_lock_is_refused_not_crashed_on(tmp_path):
    (tmp_path / LOCK_FILE).write_bytes(b"\xff\xfe@host\n")
    with pytest.raises(RunLockedError, match="cannot be read as a lock"):
        ExclusiveRun(tmp_path).__enter__()


def test_lock_of_another_host_is_assumed_alive(tmp_path):
    (tmp_path / LOCK_FILE).write_text("999999999@some-other-host abc 2024-01-01T00:00:00Z\n")
    with pytest.raises(RunLockedError) as e:
        ExclusiveRun(tmp_path).__enter__()
    message = str(e.value)
    assert "some-other-host" in message and "cannot be checked" in message
    assert f"remove {tmp_path / LOCK_FILE}" in message


@pytest.mark.parametrize("line", ["999999999@{host}\n", "999999999@{host} deadbeef 2020-01-01T00:00:00Z\n"])
def test_dead_process_lock_is_taken_over(tmp_path, line):
    (tmp_path / LOCK_FILE).write_text(line.format(host=socket.gethostname()))
    with ExclusiveRun(tmp_path) as run:
        assert (tmp_path / LOCK_FILE).read_text().split()[:2] == [f"{os.getpid()}@{socket.gethostname()}", run.token]
    assert not (tmp_path / LOCK_FILE).exists()


def test_exit_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    run = ExclusiveRun(tmp_path).__enter__()
    (tmp_path / LOCK_FILE).write_text("1@elsewhere other 2024-01-01T00:00:00Z\n")  # someone replaced it by hand
    run.__exit__(None, None, None)
    assert (tmp_path / LOCK_FILE).exists()


def test_runstate_reexports_the_lock():
    assert runstate.ExclusiveRun is ExclusiveRun and runstate.RunLockedError is RunLockedError
    assert runstate.LOCK_FILE == LOCK_FILE


def test_without_posix_file_locks_a_stale_lock_is_refused_not_taken(tmp_path, monkeypatch):
    from jaxdissect import run_lock

    monkeypatch.setattr(run_lock, "fcntl", None)  # as on Windows
    line = f"999999999@{socket.gethostname()} deadbeef 2020-01-01T00:00:00Z\n"
    (tmp_path / LOCK_FILE).write_text(line)
    with pytest.raises(RunLockedError, match="which is gone; remove it"):
        ExclusiveRun(tmp_path).__enter__()
    assert (tmp_path / LOCK_FILE).read_text() == line
    (tmp_path / LOCK_FILE).unlink()
    with ExclusiveRun(tmp_path):  # a free folder is still taken
        assert (tmp_path / LOCK_FILE).exists()
