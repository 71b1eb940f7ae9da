"""Per-sample arrays on disk (activations, segmentations, images): zarr through TensorStore.

One chunk per sample, so every sample has exactly one writer (the process whose device holds
that row) and TensorStore writes each chunk atomically (a temporary file renamed into place):
a reader sees a sample whole or not at all, also while other runs write the same cache. Which
samples are present is read from the chunk listing, not from a separate marker that could lie.
Each cache folder holds `fingerprint.json`, what made its contents; a cache opened with another
fingerprint is refused (`StaleCacheError`) or, for a run's own cache, started again.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Any, Iterator, Sequence

try:
    import fcntl
except ImportError:  # no POSIX file locks (Windows): concurrent runs must not share a cache there
    fcntl = None

import numpy as np
import tensorstore as ts

from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text

FINGERPRINT_FILE = "fingerprint.json"
_ARRAY = "array.zarr"
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype("bfloat16"), "int16": np.dtype(np.int16), "int32": np.dtype(np.int32),
          "uint8": np.dtype(np.uint8)}
# Writes are made durable by the caller's checkpoint (a killed process keeps what the OS has);
# fsync per chunk would cost more than the data.
_CONTEXT = ts.Context({"file_io_sync": False})


class StaleCacheError(RuntimeError):
    """A cache on disk was made by something else than what the run expects."""


def dtype_name(dtype: Any) -> str:
    """The name of a supported storage dtype ('float32', 'bfloat16', ...)."""
    d = np.dtype(dtype)
    for name, known in DTYPES.items():
        if known == d:
            return name
    raise ValueError(f"unsupported cache dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def cache_bytes(num_samples: int, sample_shape: Sequence[int], dtype: Any) -> int:
    """Bytes on disk of a cache (uncompressed) of `num_samples` samples."""
    return int(num_samples) * int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(DTYPES[dtype_name(dtype)]).itemsize


class ArrayCache:
    """An (N, *sample_shape) array stored one sample per chunk in `path`, with its fingerprint."""

    def __init__(self, path: str, store: ts.TensorStore, fingerprint: dict):
        self.path = path
        self._store = store
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, path: str | os.PathLike, num_samples: int, sample_shape: Sequence[int], dtype: Any,
             fingerprint: dict, *, replace_stale: bool = False, fill_value: Any = None,
             may_create: bool = True, wait_seconds: float = 600.0) -> "ArrayCache":
        """Open the cache at `path`, creating it if absent. A cache with another fingerprint, size
        or dtype is removed and made anew when `replace_stale`, else StaleCacheError says what differs.

        Runs that open the same cache at once (processes of one run, or separate runs) take turns
        under a file lock beside it, so one creates it and the others open what it made. A process
        with `may_create=False` (not process 0 of a multi-process run) never creates or removes:
        it waits up to `wait_seconds` for the cache with this fingerprint to exist."""
        path = os.fspath(path)
        expected = {"fingerprint": fp.canonical(fingerprint), "num_samples": int(num_samples),
                    "sample_shape": [int(s) for s in sample_shape], "dtype": dtype_name(dtype)}
        if not may_create:
            return cls(path, _wait_for(path, expected, fill_value, wait_seconds), expected)
        with _creation_lock(path):
            stored = _read_json(os.path.join(path, FINGERPRINT_FILE))
            if stored is not None and stored != expected:
                if not replace_stale:
                    diff = "; ".join(fp.differences(stored, expected))
                    raise StaleCacheError(f"the cache {path} was made by something else ({diff}); remove it to rebuild it")
                shutil.rmtree(path)
                stored = None
            elif stored is None and os.path.exists(path):
                shutil.rmtree(path)  # an unfinished creation: nothing in it can be trusted
            if stored is None:
                os.makedirs(path, exist_ok=True)
                store = ts.open(_spec(path, expected, fill_value, create=True), context=_CONTEXT).result()
                atomic_write_text(os.path.join(path, FINGERPRINT_FILE), json.dumps(expected, indent=1))
            else:
                store = ts.open(_spec(path, expected, fill_value, create=False), context=_CONTEXT).result()
        return cls(path, store, expected)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._store.shape)

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.fingerprint["dtype"]]

    def write(self, indices: np.ndarray, values: np.ndarray) -> ts.Future:
        """Start writing `values` (len(indices), *sample_shape) at sample `indices`; returns a
        future (call .result() before relying on the data, e.g. before a checkpoint)."""
        indices = np.asarray(indices, np.int64)
        values = np.asarray(values).astype(self.dtype, copy=False)
        if len(indices) == 0:
            return _done()
        if np.all(np.diff(indices) == 1):
            return self._store[int(indices[0]):int(indices[-1]) + 1].write(values)
        return self._store.oindex[indices].write(values)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The samples at `indices` (missing samples read as the fill value)."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and np.all(np.diff(indices) == 1):
            return self._store[int(indices[0]):int(indices[-1]) + 1].read().result()
        return self._store.oindex[indices].read().result()

    def present(self) -> np.ndarray:
        """(N,) bool: which samples have been written (from the chunk listing)."""
        out = np.zeros(self.shape[0], bool)
        kv = ts.KvStore.open({"driver": "file", "path": os.path.join(self.path, _ARRAY) + "/"}).result()
        for key in kv.list().result():
            name = key.decode()
            head = name.split(".")[0]
            if head.isdigit() and not name.startswith("."):
                out[int(head)] = True
        return out


def _spec(path: str, expected: dict, fill_value: Any, create: bool) -> dict:
    shape = [expected["num_samples"], *expected["sample_shape"]]
    dtype = DTYPES[expected["dtype"]]
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(path, _ARRAY)},
            "metadata": {"shape": shape, "chunks": [1, *expected["sample_shape"]],
                         "dtype": "bfloat16" if expected["dtype"] == "bfloat16" else dtype.str,
                         "compressor": None, "fill_value": fill_value}}
    if create:
        spec["create"] = True
        spec["open"] = True
    else:
        spec["open"] = True
    return spec


@contextlib.contextmanager
def _creation_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on `.<name>.lock` beside the cache folder (released by the
    kernel if its holder dies); a no-op where POSIX locks are missing."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(os.path.join(parent, f".{name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for(path: str, expected: dict, fill_value: Any, seconds: float) -> ts.TensorStore:
    """Open the cache another process creates, once its fingerprint is `expected`."""
    deadline = time.monotonic() + seconds
    while True:
        stored = _read_json(os.path.join(path, FINGERPRINT_FILE))
        if stored == expected:
            return ts.open(_spec(path, expected, fill_value, create=False), context=_CONTEXT).result()
        if time.monotonic() > deadline:
            state = "absent" if stored is None else "made by something else"
            raise StaleCacheError(f"waited {seconds:.0f} s for process 0 to create the cache {path}; it is still {state}")
        time.sleep(0.05)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _done() -> ts.Future:
    promise, future = ts.Promise.new()
    promise.set_result(None)
    return future
