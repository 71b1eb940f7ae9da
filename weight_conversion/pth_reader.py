"""Read PyTorch `.pth` checkpoints into `{key: numpy array}` without importing torch.

Both serialization formats are supported: the zip archive of torch >= 1.6 (`<name>/data.pkl`
plus one raw record per storage under `<name>/data/<key>`) and the legacy stream of older
versions (magic number, protocol, system info, the pickled object, the list of storage keys,
then each storage as an 8-byte element count followed by its raw bytes). Unpickling is
restricted to the handful of globals that rebuild tensors, storages and ordered dicts, so a
checkpoint downloaded from the internet can never run code.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from weight_conversion.errors import PthReadError

try:  # bfloat16 comes with jax (ml_dtypes); optional for the reader itself.
    import ml_dtypes

    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BFLOAT16 = None

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little endian; swapped when the file says big).
_STORAGE_DTYPES: dict[str, np.dtype | None] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}

# Wrapper keys under which training scripts store the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


class _StorageType:
    """Stand-in for a `torch.XStorage` class: only carries the numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the pickle; its bytes are attached after unpickling."""

    def __init__(self, key: str, dtype: np.dtype, numel: int | None, view: tuple | None = None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _TensorRef:
    """A tensor rebuilt from (storage, offset, size, stride); materialized after unpickling."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


# (module, name) -> what the restricted unpickler returns for it. Nothing else is allowed.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name, dt in _STORAGE_DTYPES.items() if dt is not None},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_SAFE_GLOBALS` and turns storages into `_StorageRef`s."""

    def __init__(self, file: BinaryIO, source: str, persistent_load: Callable | None = None):
        super().__init__(file)
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise PthReadError(
                f"{self._source}: refusing to load global '{module}.{name}' (only tensors, storages "
                "and ordered dicts are allowed in a checkpoint; a .pth must not run code)") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def _storage_from_pid(pid: Any) -> _StorageRef:
    """Parse ('storage', type, key, location, numel[, view_metadata]) of either format."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.80}")
    view = pid[5] if len(pid) > 5 else None
    return _StorageRef(str(key), storage_type.dtype, int(numel), view)


def _materialize(t: _TensorRef, storages: Mapping[str, np.ndarray]) -> np.ndarray:
    """Copy a (possibly strided, offset) tensor out of its storage, checking every bound."""
    ref = t.storage
    flat = storages[ref.key]
    if ref.view is not None:  # pre-1.0 storage views: (view_key, offset, size) into the root storage
        _, view_offset, view_size = ref.view
        flat = flat[int(view_offset): int(view_offset) + int(view_size)]
    if len(t.size) != len(t.stride):
        raise PthReadError(f"tensor size {t.size} and stride {t.stride} differ in length")
    if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise PthReadError(f"negative size/stride/offset in tensor {t.size}/{t.stride}/{t.offset}")
    if 0 in t.size:
        return np.zeros(t.size, flat.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= flat.size:
        raise PthReadError(
            f"tensor of size {t.size}, stride {t.stride} at offset {t.offset} reaches element {last} "
            f"of a storage of {flat.size} elements")
    base = flat[t.offset:]
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False)
    native = flat.dtype.newbyteorder("=") if flat.dtype.byteorder == ">" else flat.dtype
    return np.array(view, dtype=native, copy=True, order="C")


def _resolve(obj: Any, storages: Mapping[str, np.ndarray]) -> Any:
    """Replace every `_TensorRef` in nested dicts/lists/tuples by its numpy array."""
    if isinstance(obj, _TensorRef):
        return _materialize(obj, storages)
    if isinstance(obj, dict):
        return {k: _resolve(v, storages) for k, v in obj.items()}  # insertion order kept
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, storages) for v in obj)
    return obj


def _read_zip(path: str) -> Any:
    """The zip format (torch >= 1.6)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise PthReadError(f"{path}: zip file without a data.pkl record (not a PyTorch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PthReadError(f"{path}: unknown byteorder record {byteorder!r}")
        refs: dict[str, _StorageRef] = {}

        def persistent_load(pid):
            ref = _storage_from_pid(pid)
            return refs.setdefault(ref.key, ref)

        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, persistent_load).load()
        storages = {}
        for key, ref in refs.items():
            record = f"{prefix}data/{key}"
            if record not in names:
                raise PthReadError(f"{path}: storage record {record!r} is missing")
            raw = zf.read(record)
            dtype = ref.dtype if byteorder == "little" else ref.dtype.newbyteorder(">")
            if len(raw) % dtype.itemsize:
                raise PthReadError(f"{path}: storage {key!r} has {len(raw)} bytes, not a multiple of "
                                   f"{dtype.itemsize} ({dtype})")
            storages[key] = np.frombuffer(raw, dtype=dtype)
    return _resolve(obj, storages)


def _read_legacy(path: str, f: BinaryIO) -> Any:
    """The legacy stream format (torch < 1.6; the published Places365 checkpoints)."""
    plain = lambda: _RestrictedUnpickler(f, path).load()  # noqa: E731
    magic = plain()
    if magic != LEGACY_MAGIC_NUMBER:
        raise PthReadError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
    protocol = plain()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise PthReadError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = plain()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    refs: dict[str, _StorageRef] = {}

    def persistent_load(pid):
        ref = _storage_from_pid(pid)
        return refs.setdefault(ref.key, ref)

    obj = _RestrictedUnpickler(f, path, persistent_load).load()
    keys = plain()
    if not isinstance(keys, list):
        raise PthReadError(f"{path}: storage key list is missing")
    storages = {}
    for key in keys:
        key = str(key)
        ref = refs.get(key)
        header = f.read(8)
        if len(header) < 8:
            raise PthReadError(f"{path}: file is truncated (storage {key!r} header)")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        if ref is None:
            raise PthReadError(f"{path}: stored storage {key!r} is not referenced by the checkpoint")
        dtype = ref.dtype if little else ref.dtype.newbyteorder(">")
        nbytes = numel * dtype.itemsize
        if numel < 0 or nbytes > 1 << 40:
            raise PthReadError(f"{path}: storage {key!r} has an invalid element count {numel}")
        buf = np.empty(numel, dtype=dtype)
        got = f.readinto(buf.view(np.uint8)) if nbytes else 0
        if got != nbytes:
            raise PthReadError(f"{path}: file is truncated (storage {key!r}: {got} of {nbytes} bytes)")
        storages[key] = buf
    missing = sorted(set(refs) - set(storages))
    if missing:
        raise PthReadError(f"{path}: storages {missing[:5]} are referenced but not stored")
    return _resolve(obj, storages)


def _flatten(obj: Any, prefix: str, out: dict) -> None:
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, np.ndarray):
            out[name] = v
        elif isinstance(v, dict):
            _flatten(v, name + ".", out)
        # other leaves (epoch numbers, arch strings) are not weights: skipped


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    """Unwrap {'state_dict': ...}-style wrappers, flatten, strip a common 'module.' prefix."""
    if not isinstance(obj, dict):
        raise PthReadError(f"{path}: checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    for _ in range(4):
        inner = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if not inner or any(isinstance(v, np.ndarray) for v in obj.values()):
            break
        obj = inner[0]
    flat: dict[str, np.ndarray] = {}
    _flatten(obj, "", flat)
    if not flat:
        raise PthReadError(f"{path}: checkpoint contains no tensors")
    if all(k.startswith("module.") for k in flat):
        flat = {k[len("module."):]: v for k, v in flat.items()}
    return flat


def load_pickled(path: str | os.PathLike) -> Any:
    """The checkpoint's unpickled object (dicts/lists with numpy arrays for tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PthReadError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if len(head) < 2 or head[0] != 0x80:  # every torch pickle starts with a PROTO opcode
                raise PthReadError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")
            return _read_legacy(path, f)
    except PthReadError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError,
            TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError, OverflowError,
            MemoryError, OSError) as e:
        kind = "truncated" if isinstance(e, EOFError) else "corrupt or unsupported"
        raise PthReadError(f"{path}: {kind} checkpoint ({type(e).__name__}: {e})") from e


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.pth` file (zip or legacy format) into a flat `{key: numpy array}` state dict.

    `{'state_dict': ...}` / `{'model': ...}` wrappers are unwrapped, nested dicts are joined
    with dots, and a 'module.' prefix shared by every key (DataParallel) is removed.
    Raises PthReadError naming the file and the problem for anything else.
    """
    return _state_dict(load_pickled(path), os.fspath(path))
