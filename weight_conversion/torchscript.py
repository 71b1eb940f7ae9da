"""Read the weights of a TorchScript archive (`torch.jit.save`, e.g. OpenAI's CLIP `.pt` files)
without torch, as a flat `{key: numpy array}` state dict.

A TorchScript archive is a zip like a torch >= 1.6 checkpoint, but its `data.pkl` pickles the
module objects themselves (`__torch__.<class>` globals, each object's attributes as a dict).
Here every `__torch__.*` class becomes an inert record of its attributes (nothing runs), other
globals are the same few safe ones `pth_reader` allows, and the module tree is flattened into
dotted keys ('visual.conv1.weight'); attributes that are not tensors (flags, hooks) are skipped.
`read_checkpoint` reads either kind of file.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import numpy as np

from weight_conversion import pth_reader
from weight_conversion.errors import PthReadError


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps the attributes pickled for it."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {"": state}


def _identity(value, *unused):
    return value


# torch.jit._pickle helpers that tag or wrap plain values: all return the value unchanged.
_JIT_PICKLE = {("torch.jit._pickle", name): _identity
               for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
                            "build_tensor_from_id", "restore_type_tag")}


class _ScriptUnpickler(pth_reader._RestrictedUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {})
        if (module, name) in _JIT_PICKLE:
            return _JIT_PICKLE[(module, name)]
        return super().find_class(module, name)


def _flatten(obj: Any, prefix: str, out: dict) -> None:
    if isinstance(obj, _ScriptObject):
        for k, v in getattr(obj, "attributes", {}).items():
            _flatten(v, f"{prefix}{k}." if k else prefix, out)
    elif isinstance(obj, pth_reader._TensorRef):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a zip archive with TorchScript's `code/` folder or `constants.pkl`."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_torchscript(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a TorchScript archive's module tree as a flat state dict."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if not pkl:
                raise PthReadError(f"{path}: TorchScript archive without a data.pkl record")
            prefix = pkl[0][: -len("data.pkl")]
            if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() not in (b"little",):
                raise PthReadError(f"{path}: big-endian TorchScript archives are not supported")
            # read_pth's allowed globals, storage ids and bounds; the __torch__ classes and the
            # jit's value tags are added by _ScriptUnpickler.find_class.
            read = pth_reader._Read(path, pth_reader.DEFAULT_LIMITS, os.path.getsize(path))
            root = _ScriptUnpickler(zf.read(pkl[0]), read, read.storage).load()
            for key, ref in read.refs.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise PthReadError(f"{path}: storage record {record!r} is missing")
                raw = zf.read(record)
                if len(raw) % ref.dtype.itemsize:
                    raise PthReadError(f"{path}: storage {key!r} has {len(raw)} bytes, not a multiple of "
                                       f"{ref.dtype.itemsize} ({ref.dtype})")
                read.add_storage(key, np.frombuffer(raw, dtype=ref.dtype))
    except PthReadError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, OSError) as e:
        raise PthReadError(f"{path}: corrupt or unsupported TorchScript archive ({type(e).__name__}: {e})") from e
    flat: dict[str, Any] = {}
    _flatten(root, "", flat)
    if not flat:
        raise PthReadError(f"{path}: TorchScript archive holds no tensors")
    budget = [int(read.limits.max_expansion * sum(a.nbytes for a in read.storages.values()))
              + read.limits.expansion_allowance]
    return {k: read.materialize(t, k, budget) for k, t in flat.items()}


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict from a `.pth` checkpoint (read_pth) or a TorchScript archive."""
    if os.path.isfile(os.fspath(path)) and is_torchscript(path):
        return read_torchscript(path)
    return pth_reader.read_pth(path)
