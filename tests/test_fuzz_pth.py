"""Fuzzing read_pth: random and mutated checkpoints give a PthReadError (or a valid state dict),
never another exception, a hang or excessive memory.

The corpus is small real checkpoints written by torch.save (zip and legacy formats, pickle
protocols 2 and 4, a training checkpoint with optimizer state). Each case is a deterministic
function of (seed, index): byte flips and truncations, opcode-level pickle surgery (deleted,
duplicated, transplanted and repeated opcodes, altered integer arguments, memo "laughs"),
spliced / dropped / inflated zip records with consistent or lying headers, inflated legacy
storage sizes, and random bytes. The cases run in a child process that watches its own time per
case and its peak memory, under an address-space cap so a runaway read cannot hurt the machine.

Reproduce a failing case: `python tests/test_fuzz_pth.py CORPUS_DIR --seed S --case I --write FILE`.
"""
from __future__ import annotations

import argparse
import json
import os
import pickletools
import random
import resource
import struct
import subprocess
import sys
import time
import traceback
import zipfile
import zlib

import pytest

FUZZ_SECONDS = 4.0  # the default run
SLOW_FUZZ_SECONDS = 60.0  # the slow step (time-budgeted; at least MIN_CASES cases whatever the machine)
MIN_CASES = 100  # however slow the machine: the same first cases always run
CASE_SECONDS = 10.0  # a case slower than this is a hang (the slowest seen: under 2 s)
# Peak memory a run may add to its baseline: the limits allow 64 MiB of tensor copies beyond the storages,
# and inflation to 1 MiB + 100 x these few-KB files.
MEMORY_MB = 256
ADDRESS_CAP_MB = 3072  # hard address-space cap above the baseline: a bomb fails with MemoryError instead of swapping


# ---------------------------------------------------------------------------------------------
# The corpus (needs torch; written by the test, read by the child).


def write_corpus(folder) -> None:
    import collections

    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(2, 3, 2, 2, generator=g)
    sd["view"] = base[1:3, 1:]
    sd["transposed"] = base.t()
    sd["half"] = torch.randn(5, generator=g).half()
    sd["long"] = torch.arange(6)
    sd["bool"] = torch.tensor([True, False])
    sd["bf16"] = torch.randn(3, generator=g).bfloat16()
    sd["expanded"] = torch.randn(2, 1, generator=g).expand(2, 3)
    sd["scalar"] = torch.tensor(2.5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, generator=g)).sum().backward()
    opt.step()
    training = {"epoch": 2, "arch": "toy", "state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    items = {"sd": sd, "train": training}
    for name, obj in items.items():
        torch.save(obj, os.path.join(folder, f"{name}_zip.pth"))
        torch.save(obj, os.path.join(folder, f"{name}_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, os.path.join(folder, "sd_proto4.pth"), pickle_protocol=4)


# ---------------------------------------------------------------------------------------------
# Mutations.

_INT_ARG_OPS = {"BININT1": 1, "BININT2": 2, "BININT": 4, "BINGET": 1, "BINPUT": 1, "LONG_BINGET": 4,
                "LONG_BINPUT": 4, "BINUNICODE": 4, "SHORT_BINUNICODE": 1, "LONG1": 1, "BINBYTES": 4,
                "SHORT_BINBYTES": 1, "FRAME": 8, "BINUNICODE8": 8, "PROTO": 1}
_OPCODE_BYTES = [op.code.encode("latin-1") for op in pickletools.opcodes]
_INTERESTING = [0, 1, 2, 7, 127, 128, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                2**40, 2**61, 2**63 - 1, 2**64 - 1]


def op_spans(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, opcode name) of every opcode of a well-formed pickle."""
    ops = list(pickletools.genops(data))
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    return [(pos, end, op.name) for (op, _, pos), end in zip(ops, ends)]


def _value(rng: random.Random, nbytes: int) -> bytes:
    v = rng.choice(_INTERESTING) if rng.random() < 0.7 else rng.getrandbits(8 * nbytes)
    v += rng.choice([0, 0, -1, 1])
    return (v % (1 << (8 * nbytes))).to_bytes(nbytes, "little")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Blind byte-level damage."""
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "set", "truncate", "insert", "delete", "duplicate"])
    if not b or kind == "insert":
        at = rng.randrange(len(b) + 1)
        return bytes(b[:at] + rng.randbytes(rng.randint(1, 16)) + b[at:])
    at = rng.randrange(len(b))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "set":
        n = rng.choice([1, 2, 4, 8])
        b[at:at + n] = _value(rng, n)
    elif kind == "truncate":
        return bytes(b[:at])
    elif kind == "delete":
        del b[at:at + rng.randint(1, 64)]
    else:
        n = rng.randint(1, 64)
        b[at:at] = b[at:at + n]
    return bytes(b)


def _memo_len(data: bytes, spans, upto: int) -> int:
    n = 0
    for start, end, name in spans[:upto]:
        if name == "MEMOIZE":
            n += 1
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            arg = next(pickletools.genops(data[start:end] + b"."))[1]
            n = max(n, arg + 1)
    return n


def mutate_pickle(rng: random.Random, data: bytes, donor: bytes) -> bytes:
    """Opcode-level surgery on a well-formed pickle (donor: another pickle to transplant opcodes from)."""
    try:
        spans = op_spans(data)
    except ValueError:  # already damaged by an earlier mutation of this case
        return mutate_bytes(rng, data)
    chunks = [data[s:e] for s, e, _ in spans]
    donor_chunks = [donor[s:e] for s, e, _ in op_spans(donor)]
    i = rng.randrange(len(chunks) - 1)  # never the final STOP
    kind = rng.choice(["delete", "duplicate", "swap", "transplant", "int", "int", "opcode", "random",
                       "repeat", "laughs", "deep", "marks", "frame"])
    if kind == "delete":
        del chunks[i]
    elif kind == "duplicate":
        chunks.insert(i, chunks[i])
    elif kind == "swap":
        j = rng.randrange(len(chunks) - 1)
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "transplant":
        chunks[i:i] = rng.sample(donor_chunks, min(len(donor_chunks), rng.randint(1, 4)))
    elif kind == "int":
        candidates = [k for k, (_, _, name) in enumerate(spans) if name in _INT_ARG_OPS]
        if candidates:
            k = rng.choice(candidates)
            n = _INT_ARG_OPS[spans[k][2]]
            if rng.random() < 0.5:  # nudge: sizes and indices off by a little (frames ending inside an opcode)
                old = int.from_bytes(chunks[k][1:1 + n], "little")
                new = (old + rng.choice([-8, -3, -2, -1, 1, 2, 3, 8])) % (1 << (8 * n))
                chunks[k] = chunks[k][:1] + new.to_bytes(n, "little") + chunks[k][1 + n:]
            else:
                chunks[k] = chunks[k][:1] + _value(rng, n) + chunks[k][1 + n:]
    elif kind == "opcode":
        chunks[i] = rng.choice(_OPCODE_BYTES) + chunks[i][1:]
    elif kind == "random":
        chunks.insert(i, rng.choice(_OPCODE_BYTES) + rng.randbytes(rng.randint(0, 8)))
    elif kind == "repeat":
        chunks.insert(i, chunks[i] * rng.choice([2, 10, 1000, 20000]))
    elif kind == "deep":
        n = rng.choice([200, 5000, 50000])
        chunks.insert(i, b"]" * n + b"a" * (n - 1) + b"0" * rng.randint(0, 1))
    elif kind == "frame" and spans[1][2] == "FRAME":  # protocol 4: end the frame inside a later opcode
        inside = [s + 1 for s, e, _ in spans[2:] if e - s > 1]
        if inside:
            end = rng.choice(inside) + rng.randrange(2)
            chunks[1] = chunks[1][:1] + struct.pack("<Q", end - spans[1][1])
    elif kind == "marks":
        chunks.insert(i, b"(" * rng.choice([10, 1000, 100000]))
    else:  # memo references doubling at each level, as a value in place of an opcode's result
        m = _memo_len(data, spans, i)
        levels = rng.choice([5, 30, 80])
        body = b"]" + struct.pack("<cI", b"r", m)
        for k in range(1, levels + 1):
            get = struct.pack("<cI", b"j", m + k - 1)
            body += b"0" + (b"](" + get + get + b"e" if rng.random() < 0.5 else get + get + b"\x86") \
                + struct.pack("<cI", b"r", m + k)
        chunks.insert(i, body)
    return b"".join(chunks)


def build_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip from (name, payload, method, declared size, crc): headers say exactly what we are told."""
    out, central = bytearray(), bytearray()
    for name, payload, method, size, crc in entries:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size, len(n), 0)
        out += n + payload
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + eocd)


class Corpus:
    """The base checkpoints, split into what the mutations work on."""

    def __init__(self, folder: str):
        self.files = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                self.files[name] = f.read()
        self.zips = {n: self._records(d) for n, d in self.files.items() if d[:2] == b"PK"}
        self.legacy = {n: self._legacy_parts(d) for n, d in self.files.items() if d[:1] == b"\x80"}
        self.pickles = [r[n] for r in self.zips.values() for n in r if n.endswith("data.pkl")]
        self.pickles += [parts[3] for parts, _ in self.legacy.values()]
        # Deflated zero blocks (self-contained after a full flush) and the CRCs of k MiB of zeros.
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.zero_block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
        self.zero_end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
        self.zero_crc = [0]
        for _ in range(256):
            self.zero_crc.append(zlib.crc32(bytes(1 << 20), self.zero_crc[-1]))

    @staticmethod
    def _records(data: bytes) -> dict[str, bytes]:
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n: z.read(n) for n in z.namelist()}

    @staticmethod
    def _legacy_parts(data: bytes) -> tuple[list[bytes], bytes]:
        """The five pickles of the legacy stream, and the storage bytes after them."""
        import io

        f, parts = io.BytesIO(data), []
        for _ in range(5):
            start = f.tell()
            for _op in pickletools.genops(f):
                pass
            parts.append(data[start:f.tell()])
        return parts, data[f.tell():]

    def case(self, seed: int, index: int) -> bytes:
        """The bytes of case `index` of run `seed`."""
        rng = random.Random(f"{seed}:{index}")
        kind = rng.choices(["zip", "legacy", "bytes", "random"], [5, 3, 2, 1])[0]
        if kind == "zip":
            data = self._mutate_zip(rng, *rng.choice(sorted(self.zips.items())))
        elif kind == "legacy":
            data = self._mutate_legacy(rng, *rng.choice(sorted(self.legacy.items())))
        elif kind == "bytes":
            data = self.files[rng.choice(sorted(self.files))]
            for _ in range(rng.randint(1, 4)):
                data = mutate_bytes(rng, data)
            return data
        else:
            prefix = rng.choice([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\x0a"])
            return prefix + rng.randbytes(rng.choice([0, 1, 10, 100, 5000]))
        if rng.random() < 0.2:
            data = mutate_bytes(rng, data)
        return data

    def _mutate_zip(self, rng: random.Random, name: str, records: dict[str, bytes]) -> bytes:
        records = dict(records)
        pkl = next(n for n in records if n.endswith("data.pkl"))
        special: dict[str, tuple[bytes, int, int, int]] = {}  # name -> (payload, method, size, crc)
        for _ in range(rng.randint(1, 3)):
            names = list(records)
            data_names = [n for n in names if "/data/" in n]
            kind = rng.choice(["pickle", "pickle", "pickle_bytes", "drop", "swap", "truncate", "extend",
                               "zeros", "byteorder", "rename"])
            target = rng.choice(data_names) if data_names else pkl
            if kind == "pickle" and pkl in records:
                records[pkl] = mutate_pickle(rng, records[pkl], rng.choice(self.pickles))
            elif kind == "pickle_bytes" and pkl in records:
                records[pkl] = mutate_bytes(rng, records[pkl])
            elif kind == "drop":
                records.pop(rng.choice(names), None)
            elif kind == "swap" and len(data_names) > 1:
                a, b = rng.sample(data_names, 2)
                records[a], records[b] = records[b], records[a]
            elif kind == "truncate" and target in records:
                records[target] = records[target][: rng.randrange(len(records[target]) + 1)]
            elif kind == "extend" and target in records:
                records[target] += rng.randbytes(rng.choice([1, 8, 1000]))
            elif kind == "zeros":  # a deflated record of k MiB zeros, headers honest or lying about the size
                k = rng.choice([1, 16, 256])
                payload = self.zero_block * k + self.zero_end
                size = k << 20 if rng.random() < 0.7 else rng.choice([0, 8, 24, 1 << 30])
                special[rng.choice(data_names + [pkl])] = (payload, 8, size, self.zero_crc[k])
            elif kind == "byteorder":
                records[pkl.replace("data.pkl", "byteorder")] = rng.choice([b"big", b"little", b"middle", b""])
            elif kind == "rename" and data_names:
                records[target + rng.choice(["0", "/x", ""])] = records.pop(target, b"")
        entries = []
        for n, payload in records.items():
            if n in special:
                entries.append((n, *special[n]))
            elif rng.random() < 0.15:
                c = zlib.compressobj(6, zlib.DEFLATED, -15)
                entries.append((n, c.compress(payload) + c.flush(), 8, len(payload), zlib.crc32(payload)))
            else:
                entries.append((n, payload, 0, len(payload), zlib.crc32(payload)))
        data = bytearray(build_zip(entries))
        if rng.random() < 0.3:  # lie in a header field: sizes, offsets, entry counts
            sigs = [i for i in range(len(data) - 4) if data[i:i + 2] == b"PK" and data[i + 2] in (1, 3, 5)]
            at = rng.choice(sigs)
            field = {1: [20, 24, 42, 28], 3: [18, 22, 26], 5: [8, 10, 12, 16]}[data[at + 2]]
            off = at + rng.choice(field)
            width = 2 if (data[at + 2] == 5 and off - at < 12) or (data[at + 2] == 3 and off - at == 26) \
                or (data[at + 2] == 1 and off - at == 28) else 4
            data[off:off + width] = _value(rng, width)
        return bytes(data)

    def _mutate_legacy(self, rng: random.Random, name: str, split: tuple[list[bytes], bytes]) -> bytes:
        parts, storages = list(split[0]), split[1]
        kind = rng.choice(["pickle", "pickle", "pickle", "other_pickle", "numel", "storages"])
        if kind == "pickle":
            parts[3] = mutate_pickle(rng, parts[3], rng.choice(self.pickles))
        elif kind == "other_pickle":
            k = rng.choice([0, 1, 2, 4])
            parts[k] = mutate_pickle(rng, parts[k], rng.choice(self.pickles))
        elif kind == "numel" and len(storages) >= 8:  # the first storage's element count
            value = rng.choice([0, 1, -1, 2**31, 2**40, 2**62, -2**63, struct.unpack("<q", storages[:8])[0] + 1])
            storages = struct.pack("<q", value) + storages[8:]
        else:
            storages = mutate_bytes(rng, storages)
        return b"".join(parts) + storages


# ---------------------------------------------------------------------------------------------
# The child process: run cases for a while, report what went wrong.


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cases(corpus_dir: str, seed: int, seconds: float, work_dir: str, progress: str) -> dict:
    import numpy as np

    from weight_conversion import PthReadError, read_pth

    corpus = Corpus(corpus_dir)
    for name in corpus.files:  # the pristine corpus reads
        read_pth(os.path.join(corpus_dir, name))
    baseline = _rss_mb()
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    cap = vm + ADDRESS_CAP_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    summary = {"seed": seed, "cases": 0, "clean_errors": 0, "reads": 0, "failures": [], "slowest": [0.0, -1],
               "baseline_mb": baseline}
    path = os.path.join(work_dir, "case.pth")
    end = time.monotonic() + seconds
    index = 0
    while index < MIN_CASES or time.monotonic() < end:
        data = corpus.case(seed, index)
        with open(path, "wb") as f:
            f.write(data)
        with open(progress, "w") as f:
            f.write(str(index))
        t0 = time.perf_counter()
        problem = None
        try:
            out = read_pth(path)
            if not (isinstance(out, dict) and out and all(type(k) is str and isinstance(v, np.ndarray)
                                                         for k, v in out.items())):
                problem = "read_pth returned something other than a non-empty {str: ndarray}"
            summary["reads"] += 1
        except PthReadError as e:
            summary["clean_errors"] += 1
            if not str(e).startswith(path):
                problem = f"PthReadError does not name the file: {str(e)[:300]}"
        except BaseException as e:  # noqa: BLE001 - exactly what the fuzzing looks for
            problem = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])[-2000:]
        elapsed = time.perf_counter() - t0
        if elapsed > summary["slowest"][0]:
            summary["slowest"] = [elapsed, index]
        if elapsed > CASE_SECONDS:
            problem = f"took {elapsed:.1f} s"
        if _rss_mb() - baseline > MEMORY_MB and not any("memory" in f["problem"] for f in summary["failures"]):
            problem = f"peak memory grew to {_rss_mb() - baseline:.0f} MB over the baseline"
        if problem:
            summary["failures"].append({"case": index, "size": len(data), "problem": problem})
        summary["cases"] += 1
        index += 1
        if len(summary["failures"]) >= 5:
            break
    summary["peak_mb_over_baseline"] = _rss_mb() - baseline
    return summary


def fuzz(tmp_path, seed: int, seconds: float) -> dict:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus)
    progress, result = tmp_path / "progress", tmp_path / "result.json"
    cmd = [sys.executable, __file__, str(corpus), "--seed", str(seed), "--seconds", str(seconds),
           "--work", str(tmp_path), "--progress", str(progress), "--result", str(result)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        case = progress.read_text() if progress.exists() else "?"
        pytest.fail(f"the fuzz run hung on case {case} of seed {seed} (reproduce: python {__file__} CORPUS "
                    f"--seed {seed} --case {case})")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(result.read_text())
    repro = f"reproduce: python {__file__} CORPUS --seed {seed} --case N --write FILE"
    assert not summary["failures"], json.dumps(summary["failures"], indent=1) + "\n" + repro
    assert summary["peak_mb_over_baseline"] < MEMORY_MB
    return summary


def test_fuzz_pth(tmp_path):
    pytest.importorskip("torch")
    summary = fuzz(tmp_path, seed=0, seconds=FUZZ_SECONDS)
    # The run must have exercised both outcomes: the mutations are not all fatal, nor all harmless.
    assert summary["cases"] >= MIN_CASES and summary["clean_errors"] > 0 and summary["reads"] > 0, summary


@pytest.mark.slow
def test_fuzz_pth_long(tmp_path):
    pytest.importorskip("torch")
    summary = fuzz(tmp_path, seed=1, seconds=SLOW_FUZZ_SECONDS)
    assert summary["cases"] >= 1000, summary


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="Run (or reproduce) read_pth fuzz cases over a corpus of .pth files.")
    p.add_argument("corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=FUZZ_SECONDS)
    p.add_argument("--case", type=int, help="reproduce one case: read it and show the outcome")
    p.add_argument("--write", help="with --case: also write the case's bytes to this file")
    p.add_argument("--work", default=".")
    p.add_argument("--progress", default=os.devnull)
    p.add_argument("--result")
    args = p.parse_args(argv)
    if args.case is not None:
        data = Corpus(args.corpus).case(args.seed, args.case)
        path = args.write or os.path.join(args.work, f"case_{args.seed}_{args.case}.pth")
        with open(path, "wb") as f:
            f.write(data)
        from weight_conversion import read_pth

        print(f"case {args.case} of seed {args.seed}: {len(data)} bytes in {path}")
        print(sorted(read_pth(path)))
        return
    summary = run_cases(args.corpus, args.seed, args.seconds, args.work, args.progress)
    with open(args.result, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1:])
