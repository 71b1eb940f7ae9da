"""Many processes start a run on one folder at the same instant, round after round; prints, as
JSON, how many of them held the lock in each round and what the others were told.

Run as a script (a fresh process that never starts JAX's threads, so forking is safe):
    python tests/lock_contenders.py DIR --procs 16 --rounds 30 --before none|stale|stale-old
`--before` is what lies in the folder when a round starts: nothing, a complete lock of a dead
process, or a dead process's lock in the older `pid@host` format.
"""
import argparse
import json
import multiprocessing as mp
import os
import socket
import sys

from jaxdissect.run_lock import LOCK_FILE, ExclusiveRun, RunLockedError

DEAD_PID = 999_999_999  # above any kernel's pid_max: never a live process


def _contend(directory, rounds, barrier, won, errors, index):
    for r in range(rounds):
        barrier.wait()  # the parent has prepared the folder
        run = ExclusiveRun(directory)
        held = False
        try:
            run.__enter__()
            held = True
            won[r] += 1  # the Array's lock makes the increment safe
            with open(os.path.join(directory, LOCK_FILE)) as f:
                if f.read().split()[1] != run.token:
                    errors.put(f"round {r}: holder {index} does not find its own lock")
        except RunLockedError as e:
            if "another run" not in str(e):
                errors.put(f"round {r}: unexpected refusal: {e}")
        except Exception as e:  # noqa: BLE001 (reported to the parent, which fails the test)
            errors.put(f"round {r}: {type(e).__name__}: {e}")
        barrier.wait()  # everyone has tried while the holder still holds
        if held:
            run.__exit__(None, None, None)
        barrier.wait()  # released: the parent checks the folder


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--before", choices=("none", "stale", "stale-old"), default="none")
    args = ap.parse_args(argv)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(args.procs + 1)
    won = ctx.Array("i", args.rounds)
    errors = ctx.Queue()
    os.makedirs(args.directory, exist_ok=True)
    procs = [ctx.Process(target=_contend, args=(args.directory, args.rounds, barrier, won, errors, i))
             for i in range(args.procs)]
    for p in procs:
        p.start()
    lock = os.path.join(args.directory, LOCK_FILE)
    leftovers = []
    for r in range(args.rounds):
        if args.before == "stale":
            with open(lock, "w") as f:
                f.write(f"{DEAD_PID}@{socket.gethostname()} 0123456789abcdef 2020-01-01T00:00:00Z\n")
        elif args.before == "stale-old":
            with open(lock, "w") as f:
                f.write(f"{DEAD_PID}@{socket.gethostname()}\n")
        barrier.wait()
        barrier.wait()
        barrier.wait()
        if os.path.exists(lock):
            leftovers.append(r)
            os.remove(lock)
    for p in procs:
        p.join(timeout=60)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    stray = sorted(f for f in os.listdir(args.directory) if f.startswith(f".{LOCK_FILE}.") and
                   not f.endswith(".takeover"))
    json.dump({"holders": list(won), "errors": messages, "lock_left_after_release": leftovers,
               "stray_files": stray, "exitcodes": [p.exitcode for p in procs]}, sys.stdout)


if __name__ == "__main__":
    main()
