"""Fuzzing the image folder reader: random and mutated image files give a per-sample error from
`ImageFolder.batch` (ok=False and a message naming the file), never an exception or a hang.

The corpus is small PNG, JPEG (and GIF/BMP/TIFF/WebP) files written by PIL. Each case is a
deterministic function of (format group, seed, index): byte flips and truncations, PNG chunk
surgery with valid CRCs (inflated IHDR dimensions, odd bit depths and colour types, IDAT
damage, zlib bombs in IDAT and zTXt, dropped/duplicated/reordered chunks, lying lengths), JPEG
segment surgery (inflated SOF dimensions, damaged tables, dropped/duplicated segments, truncated
or repeated scan data), and random bytes. The cases run in a child process that times each case
and records its peak memory, under an address-space cap.

Reproduce a case: `python tests/test_fuzz_images.py --group G --seed S --case I --write FILE`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
import traceback
import zlib

import pytest

from test_fuzz_pth import mutate_bytes  # the byte-level mutations are shared

FUZZ_SECONDS = 2.0  # per format group, in the default run
SLOW_FUZZ_SECONDS = 60.0
MIN_CASES = 30  # per group, however slow the machine: the same first cases always run
CASE_SECONDS = 30.0  # a sample slower than this is a hang (the slowest seen: 3 s, a 100 Mpixel bomb)
ADDRESS_CAP_MB = 3072  # above the child's baseline: a bomb ends in MemoryError (a per-sample error), not swapping
GROUPS = {"png": ["png"], "jpeg": ["jpg"], "other": ["gif", "bmp", "tiff", "webp"]}


def base_images() -> dict[str, list[bytes]]:
    """Small images of every mode each format writes, from a seeded array (extension -> file bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:40]
    rgb = np.stack([xx * 6, yy * 8, (xx + yy) * 3], -1).astype(np.uint8) + rng.integers(0, 20, (32, 40, 3), np.uint8)
    im = Image.fromarray(rgb)
    out: dict[str, list[bytes]] = {}

    def save(ext, image, **kw):
        buf = io.BytesIO()
        image.save(buf, format={"jpg": "JPEG", "tiff": "TIFF"}.get(ext, ext.upper()), **kw)
        out.setdefault(ext, []).append(buf.getvalue())

    for mode in ("RGB", "L", "P", "RGBA", "I;16", "1", "LA"):
        save("png", im.convert(mode) if mode != "I;16" else Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)))
    save("png", im.convert("P"), transparency=0)
    for mode in ("RGB", "L", "CMYK"):
        save("jpg", im.convert(mode), quality=90)
    save("jpg", im, progressive=True, quality=80)
    save("jpg", im, subsampling=0, optimize=True)
    save("jpg", im, restart_marker_rows=1)
    save("gif", im.convert("P"))
    save("bmp", im)
    save("bmp", im.convert("P"))
    save("tiff", im)
    save("tiff", im, compression="tiff_deflate")
    save("tiff", im.convert("L"), compression="packbits")
    save("webp", im, quality=80)
    save("webp", im, lossless=True)
    return out


# ---------------------------------------------------------------------------------------------
# Format-aware mutations.

_DIMS = [0, 1, 2, 255, 4096, 10000, 13000, 20000, 65535, 2**31 - 1]


def png_chunks(data: bytes) -> list[list[bytes]] | None:
    """[type, data] of each chunk of a well-formed PNG; None if it is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    chunks, at = [], 8
    while at + 12 <= len(data):
        (n,) = struct.unpack(">I", data[at:at + 4])
        chunks.append([data[at + 4:at + 8], data[at + 8:at + 8 + n]])
        at += 12 + n
    return chunks


def png_build(chunks: list[list[bytes]], lie: int | None = None) -> bytes:
    """A PNG of the chunks with correct lengths and CRCs (or a wrong length for chunk `lie`)."""
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for i, (kind, body) in enumerate(chunks):
        n = len(body) if i != lie else random.Random(i).choice([0, len(body) + 1, 2**31 - 1, 2**32 - 1])
        out += struct.pack(">I", n) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return bytes(out)


def zlib_zeros(mib: int) -> bytes:
    """A zlib stream of `mib` MiB zeros, built from one fully flushed deflate block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler = (((mib << 20) % 65521) << 16) | 1  # adler32 of n zero bytes: a = 1, b = n mod 65521
    return b"\x78\xda" + block * mib + tail + struct.pack(">I", adler)


def mutate_png(rng: random.Random, data: bytes) -> bytes:
    chunks = png_chunks(data)
    if chunks is None:
        return mutate_bytes(rng, data)
    kind = rng.choice(["dims", "dims", "header", "idat", "bomb", "ztxt", "drop", "duplicate", "swap", "insert",
                       "lie", "split"])
    ihdr = chunks[0][1]
    idats = [i for i, (k, _) in enumerate(chunks) if k == b"IDAT"]
    if kind == "dims" and len(ihdr) == 13:
        w, h = struct.unpack(">II", ihdr[:8])
        w, h = (rng.choice(_DIMS), h) if rng.random() < 0.3 else (w, rng.choice(_DIMS)) if rng.random() < 0.5 \
            else (rng.choice(_DIMS), rng.choice(_DIMS))
        chunks[0][1] = struct.pack(">II", w, h) + ihdr[8:]
    elif kind == "header" and len(ihdr) == 13:
        b = bytearray(ihdr)
        b[rng.randrange(8, 13)] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255])
        chunks[0][1] = bytes(b)
    elif kind == "idat" and idats:
        i = rng.choice(idats)
        chunks[i][1] = mutate_bytes(rng, chunks[i][1])
    elif kind == "bomb" and idats and len(ihdr) == 13:  # dims and IDAT inflating consistently to many MiB
        side = rng.choice([1024, 4096, 10000])
        chunks[0][1] = struct.pack(">II", side, side) + ihdr[8:]
        chunks[idats[0]][1] = zlib_zeros(rng.choice([1, 16, 100]))
        for i in reversed(idats[1:]):
            del chunks[i]
    elif kind == "ztxt":
        chunks.insert(1, [rng.choice([b"zTXt", b"iCCP", b"iTXt"]), b"k\x00\x00" + zlib_zeros(rng.choice([1, 16]))])
    elif kind == "drop" and len(chunks) > 1:
        del chunks[rng.randrange(len(chunks))]
    elif kind == "duplicate":
        i = rng.randrange(len(chunks))
        chunks.insert(i, list(chunks[i]))
    elif kind == "swap" and len(chunks) > 1:
        i, j = rng.sample(range(len(chunks)), 2)
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "insert":
        chunks.insert(rng.randrange(len(chunks) + 1), [rng.choice([b"PLTE", b"tRNS", b"gAMA", b"pHYs", b"acTL",
                                                                   b"fcTL", b"eXIf", b"sBIT", b"xxXx"]),
                                                        rng.randbytes(rng.choice([0, 1, 3, 13, 300]))])
    elif kind == "lie":
        return png_build(chunks, lie=rng.randrange(len(chunks)))
    elif kind == "split" and idats:  # IDAT data in many one-byte chunks
        i = idats[0]
        chunks[i:i + 1] = [[b"IDAT", chunks[i][1][k:k + 1]] for k in range(len(chunks[i][1]))]
    return png_build(chunks)


def jpeg_segments(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The marker segments before the first scan (each from its FFxx), and the rest; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        (n,) = struct.unpack(">H", data[at + 2:at + 4])
        segments.append(data[at:at + 2 + n])
        if data[at + 1] == 0xDA:  # start of scan: entropy-coded data follows
            return segments, data[at + 2 + n:]
        at += 2 + n
    return segments, data[at:]


def mutate_jpeg(rng: random.Random, data: bytes) -> bytes:
    parsed = jpeg_segments(data)
    if parsed is None:
        return mutate_bytes(rng, data)
    segments, scan = parsed
    kind = rng.choice(["dims", "dims", "sof", "tables", "drop", "duplicate", "truncate", "repeat", "restart",
                       "app", "scan_bytes"])
    sof = [i for i, s in enumerate(segments) if s[1] in (0xC0, 0xC1, 0xC2)]
    if kind == "dims" and sof:
        s = bytearray(segments[sof[0]])
        s[5:9] = struct.pack(">HH", rng.choice(_DIMS) % 65536, rng.choice(_DIMS) % 65536)
        segments[sof[0]] = bytes(s)
    elif kind == "sof" and sof:  # precision, component count, sampling factors, table ids
        s = bytearray(segments[sof[0]])
        s[rng.choice([4, 9, 11, 12, 14, 15] if len(s) > 15 else [4, 9])] = rng.choice([0, 1, 2, 3, 4, 12, 16, 0x44, 255])
        segments[sof[0]] = bytes(s)
    elif kind == "tables":
        tables = [i for i, s in enumerate(segments) if s[1] in (0xC4, 0xDB, 0xDD)] or [0]
        i = rng.choice(tables)
        segments[i] = segments[i][:4] + mutate_bytes(rng, segments[i][4:])
    elif kind == "drop" and len(segments) > 1:
        del segments[rng.randrange(len(segments))]
    elif kind == "duplicate" and segments:
        i = rng.randrange(len(segments))
        segments.insert(i, segments[i])
    elif kind == "truncate":
        scan = scan[: rng.randrange(len(scan) + 1)]
    elif kind == "repeat":
        scan = scan[:-2] * rng.choice([2, 50]) + scan[-2:]
    elif kind == "restart":
        at = rng.randrange(len(scan) + 1)
        scan = scan[:at] + bytes([0xFF, 0xD0 + rng.randrange(8)]) + scan[at:]
    elif kind == "app":  # APP segments: ICC profile chunks, EXIF, MPF, of odd sizes
        body = rng.choice([b"ICC_PROFILE\x00" + bytes([rng.randint(0, 3), rng.randint(0, 3)]) + rng.randbytes(100),
                           b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + rng.randbytes(60),
                           b"MPF\x00II*\x00\x08\x00\x00\x00" + rng.randbytes(60), rng.randbytes(30)])
        segments.insert(rng.randrange(len(segments) + 1),
                        bytes([0xFF, rng.choice([0xE1, 0xE2, 0xEE])]) + struct.pack(">H", len(body) + 2) + body)
    else:
        scan = mutate_bytes(rng, scan) if scan else scan
    return b"\xff\xd8" + b"".join(segments) + scan


def case(images: dict[str, list[bytes]], group: str, seed: int, index: int) -> tuple[str, bytes]:
    """(extension, bytes) of case `index` of format group `group`, run `seed`."""
    rng = random.Random(f"{group}:{seed}:{index}")
    ext = rng.choice(GROUPS[group])
    data = rng.choice(images[ext])
    roll = rng.random()
    if roll < 0.08:
        prefix = data[:rng.choice([0, 2, 8, 16])]
        return ext, prefix + rng.randbytes(rng.choice([0, 1, 10, 1000]))
    if roll < 0.45 or ext not in ("png", "jpg"):
        for _ in range(rng.randint(1, 4)):
            data = mutate_bytes(rng, data)
        return ext, data
    mutate = mutate_png if ext == "png" else mutate_jpeg
    for _ in range(rng.randint(1, 3)):
        data = mutate(rng, data)
    if rng.random() < 0.2:
        data = mutate_bytes(rng, data)
    return ext, data


# ---------------------------------------------------------------------------------------------
# The child process.


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _image_folder_module():
    """jaxdissect.data.image_folder, loaded from its file: importing it through the package would import jax
    (seconds, in every child run), which the image folder does not use."""
    import importlib.util

    package = importlib.util.find_spec("jaxdissect").submodule_search_locations[0]  # finds, does not import
    spec = importlib.util.spec_from_file_location("image_folder_under_fuzz",
                                                  os.path.join(package, "data", "image_folder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cases(groups: list[str], seed: int, seconds: float, work: str, progress: str) -> dict:
    import numpy as np

    ImageFolder = _image_folder_module().ImageFolder

    images = base_images()
    baseline = _rss_mb()
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    cap = vm + ADDRESS_CAP_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    results = {}
    for group in groups:
        summary = {"cases": 0, "ok": 0, "errors": 0, "failures": [], "slowest": [0.0, -1], "peak_mb": [0.0, -1]}
        folders = {}
        for ext in GROUPS[group]:
            folder = os.path.join(work, f"{group}_{ext}")
            os.makedirs(os.path.join(folder, "cls"), exist_ok=True)
            with open(os.path.join(folder, "cls", f"case.{ext}"), "wb") as f:
                f.write(images[ext][0])
            folders[ext] = (os.path.join(folder, "cls", f"case.{ext}"), ImageFolder(folder, crop=32, resize=40))
        end = time.monotonic() + seconds
        index = 0
        while (index < MIN_CASES or time.monotonic() < end) and len(summary["failures"]) < 5:
            ext, data = case(images, group, seed, index)
            path, ds = folders[ext]
            with open(path, "wb") as f:
                f.write(data)
            with open(progress, "w") as f:
                f.write(f"{group} {index}")
            before = _rss_mb()
            t0 = time.perf_counter()
            problem = None
            try:
                out = ds.batch([0])
                if out["ok"][0]:
                    summary["ok"] += 1
                    if out["image"].shape != (1, 32, 32, 3) or out["image"].dtype != np.uint8 or out["errors"]:
                        problem = f"ok sample with image {out['image'].shape} {out['image'].dtype}, errors {out['errors']}"
                else:
                    summary["errors"] += 1
                    msg = out["errors"].get(0)
                    if not (isinstance(msg, str) and f"case.{ext}" in msg):
                        problem = f"failed sample without a message naming the file: {msg!r}"
            except BaseException as e:  # noqa: BLE001 - exactly what the fuzzing looks for
                problem = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])[-2000:]
            elapsed = time.perf_counter() - t0
            if elapsed > summary["slowest"][0]:
                summary["slowest"] = [elapsed, index]
            if _rss_mb() > before and _rss_mb() - baseline > summary["peak_mb"][0]:
                summary["peak_mb"] = [_rss_mb() - baseline, index]
            if elapsed > CASE_SECONDS:
                problem = f"took {elapsed:.1f} s"
            if problem:
                summary["failures"].append({"case": index, "ext": ext, "size": len(data), "problem": problem})
            summary["cases"] += 1
            index += 1
        results[group] = summary
    return results


_RUNS: dict = {}


def fuzz(tmp_path_factory, seed: float, seconds: float, groups: tuple[str, ...] = tuple(GROUPS)) -> dict:
    """Run `groups` once per (seed, seconds) in one child process; the per-group summaries."""
    key = (seed, seconds, groups)
    if key not in _RUNS:
        work = tmp_path_factory.mktemp("fuzz_images")
        progress, result = work / "progress", work / "result.json"
        cmd = [sys.executable, __file__, "--groups", ",".join(groups), "--seed", str(seed), "--seconds",
               str(seconds), "--work", str(work), "--progress", str(progress), "--result", str(result)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=len(groups) * seconds + 180)
        except subprocess.TimeoutExpired:
            where = progress.read_text() if progress.exists() else "?"
            _RUNS[key] = {"hang": f"the fuzz run hung on group/case {where} of seed {seed}"}
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
            _RUNS[key] = json.loads(result.read_text())
    return _RUNS[key]


def check(summary: dict, group: str, seed: int) -> None:
    assert "hang" not in summary, summary.get("hang")
    s = summary[group]
    repro = f"reproduce: python {__file__} --group {group} --seed {seed} --case N --write FILE"
    assert not s["failures"], json.dumps(s["failures"], indent=1) + "\n" + repro
    assert s["cases"] >= MIN_CASES and s["errors"] > 0 and s["ok"] > 0, s  # both outcomes were exercised


@pytest.mark.parametrize("group", list(GROUPS))
def test_fuzz_image_folder(tmp_path_factory, group):
    check(fuzz(tmp_path_factory, 0, FUZZ_SECONDS), group, 0)


@pytest.mark.slow
@pytest.mark.parametrize("group", list(GROUPS))
def test_fuzz_image_folder_long(tmp_path_factory, group):
    # One child per group: the test workers each run only their own groups' minute, instead of
    # every worker running all three.
    check(fuzz(tmp_path_factory, 1, SLOW_FUZZ_SECONDS, (group,)), group, 1)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="Run (or reproduce) image folder fuzz cases.")
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--group", help="with --case: the case's format group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=FUZZ_SECONDS)
    p.add_argument("--case", type=int, help="reproduce one case: write it and read it with ImageFolder")
    p.add_argument("--write", help="with --case: where to write the case's bytes")
    p.add_argument("--work", default=".")
    p.add_argument("--progress", default=os.devnull)
    p.add_argument("--result")
    args = p.parse_args(argv)
    if args.case is not None:
        ext, data = case(base_images(), args.group, args.seed, args.case)
        path = args.write or os.path.join(args.work, f"case_{args.group}_{args.seed}_{args.case}.{ext}")
        with open(path, "wb") as f:
            f.write(data)
        print(f"case {args.case} of group {args.group}, seed {args.seed}: {len(data)} bytes in {path}")
        load_image = _image_folder_module().load_image

        t0 = time.perf_counter()
        try:
            print("read:", load_image(path, 40, 32).shape)
        except Exception as e:  # noqa: BLE001
            print("error:", type(e).__name__, e)
        print(f"{time.perf_counter() - t0:.2f} s, peak {_rss_mb():.0f} MB")
        return
    results = run_cases(args.groups.split(","), args.seed, args.seconds, args.work, args.progress)
    with open(args.result, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
