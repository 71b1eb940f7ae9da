"""Read PyTorch `.pth` checkpoints into `{key: numpy array}` without importing torch, safely.

Both serialization formats are supported: the zip archive of torch >= 1.6 (`<name>/data.pkl`
plus one raw record per storage under `<name>/data/<key>`) and the legacy stream of older
versions (magic number, protocol, system info, the pickled object, the list of storage keys,
then each storage as an 8-byte element count followed by its raw bytes).

A checkpoint downloaded from the internet is untrusted input, so reading one is confined:

* No code runs. Unpickling resolves only the globals that rebuild tensors, storages and ordered
  dicts. Each pickle is first scanned with `pickletools` and refused if it uses an opcode that
  builds arbitrary objects (INST, OBJ, NEWOBJ, EXT*, text PERSID, out-of-band buffers), a memo
  index beyond the next free one (a PUT at index 2**32 makes the C unpickler allocate 64 GB),
  an opcode across the end of a protocol-4 frame (the C unpickler would read its argument from
  elsewhere than the scan did), or a dict key / set item that is not a str, bytes, bool, None
  or an int below 2**61 (keeps hashing linear: no tuple-key or hash-collision floods).
* No state is shared between reads. Every object a pickle can reach (the allowed functions,
  the storage classes, tensors, storages) is created for that read and refuses modification
  (a BUILD on it is an error), so a malicious file cannot affect later reads.
* Work and memory are bounded by what the file declares, with limits in `PthLimits`:
  - `max_pickle_bytes` (64 MiB): size of one pickle (data.pkl, or a pickle of the legacy stream);
  - `max_depth` (100): nesting of dicts/lists/tuples; cyclic structures are refused;
  - `max_tree_factor` (4): the object tree with every shared reference expanded may hold at
    most this many nodes per pickle opcode, plus 4096 (refuses "billion laughs" pickles whose
    memo references double at each level);
  - `max_record_excess` (0): bytes a zip storage record may hold beyond the size its storage
    declares (element count x item size); a shorter record is always an error, and only the
    declared bytes are ever decompressed;
  - `max_inflation` (100): the declared storages plus data.pkl may total at most this many
    times the file's size, plus 1 MiB (a small compressed zip cannot inflate to gigabytes);
  - `max_expansion` (4) and `expansion_allowance` (64 MiB): tensors are copied out of their
    storages (views, stride-0 expansions), at most this many times the storage bytes plus the
    allowance.
  Raise a limit for a file you trust: `read_pth(path, limits=PthLimits(max_pickle_bytes=1 << 30))`.

Every problem with the file is a `PthReadError` naming it and, where known, the tensor or
storage record. (A MemoryError is not: within these limits it means the machine is too small.)
The scan costs a few microseconds per pickle opcode (0.2 s for a state dict of 930 tensors).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import lzma
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Iterator

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

_MAX_INT = 1 << 62  # sizes, strides, offsets and element counts stay below this
_MAX_DIMS = 32  # numpy 1's limit on dimensions (numpy 2 allows 64; no checkpoint comes near)
_SAFE_INT_KEY = (1 << 61) - 2  # |int| <= this: distinct ints hash differently (no collision floods)
_MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class PthLimits:
    """Bounds on the memory and work one read may take (see the module docstring); raise them for trusted files."""

    max_pickle_bytes: int = 64 * _MIB
    max_depth: int = 100
    max_tree_factor: float = 4.0
    max_record_excess: int = 0
    max_inflation: float = 100.0
    max_expansion: float = 4.0
    expansion_allowance: int = 64 * _MIB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"PthLimits.{field.name} must be a non-negative number, not {value!r}")


DEFAULT_LIMITS = PthLimits()


# --------------------------------------------------------------------------------------------
# Objects the unpickler can reach: created per read, read-only, refusing BUILD.


class _Frozen:
    """Base of every object a pickle can reach: attributes cannot be set and BUILD is refused."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> None:  # the BUILD opcode calls this
        raise pickle.UnpicklingError(
            f"the pickle tries to modify {self!r} (BUILD on an allowed global, tensor or storage)")


class _StorageType(_Frozen):
    """Stand-in for a `torch.XStorage` class: only carries the numpy dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageRef(_Frozen):
    """A storage named in the pickle; its bytes are read after unpickling."""

    __slots__ = ("key", "dtype", "numel", "view", "label")

    def __init__(self, key: str, dtype: np.dtype, numel: int, view: tuple[int, int] | None, label: str):
        for name, value in zip(self.__slots__, (key, dtype, numel, view, label)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"storage {self.label}"


class _TensorRef(_Frozen):
    """A tensor rebuilt from (storage, offset, size, stride); materialized after unpickling."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        for name, value in zip(self.__slots__, (storage, offset, size, stride)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"tensor on {self.storage.label}"


class _SafeCallable(_Frozen):
    """An allowed global function, wrapped so that the pickle can call it but not modify it."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.name


def _brief(v: Any) -> str:
    """A short description of an untrusted value: never a deep or long repr."""
    if v is None or isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) < 1 << 64):
        return repr(v)
    if isinstance(v, (str, bytes)):
        return repr(v[:40]) + ("..." if len(v) > 40 else "")
    if isinstance(v, _Frozen):
        return repr(v)
    return f"a {type(v).__name__}"


def _is_safe_key(k: Any) -> bool:
    """Keys whose hashing is cheap and collision-free enough for an untrusted dict."""
    return k is None or type(k) in (str, bytes, bool) or (type(k) is int and abs(k) <= _SAFE_INT_KEY)


def _checked_int(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < _MAX_INT:
        raise pickle.UnpicklingError(f"{what} is {_brief(v)}, not an integer in [0, 2**62)")
    return v


def _checked_shape(v: Any, what: str) -> tuple[int, ...]:
    if type(v) not in (tuple, list) or len(v) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"tensor {what} is {_brief(v)}, not a tuple of at most {_MAX_DIMS} integers")
    return tuple(_checked_int(n, f"tensor {what} entry") for n in v)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any) -> _TensorRef:
    """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks, metadata])."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor rebuilt from {_brief(storage)}, not a storage")
    if len(unused) > 3:
        raise pickle.UnpicklingError(f"tensor rebuilt with {4 + len(unused)} arguments (at most 7)")
    size, stride = _checked_shape(size, "size"), _checked_shape(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, _checked_int(storage_offset, "tensor storage offset"), size, stride)


def _rebuild_parameter(data: Any, *unused: Any) -> _TensorRef:
    """torch._utils._rebuild_parameter(_with_state): a Parameter is read as its tensor."""
    if not isinstance(data, _TensorRef) or len(unused) > 3:
        raise pickle.UnpicklingError(f"parameter rebuilt from {_brief(data)}, not a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    """collections.OrderedDict() as pickled (protocol 2: no arguments; Python 2: a list of pairs)."""
    out: collections.OrderedDict = collections.OrderedDict()
    if len(args) > 1 or (args and type(args[0]) not in (list, tuple)):
        raise pickle.UnpicklingError("OrderedDict rebuilt from arguments other than a list of pairs")
    for pair in args[0] if args else ():
        if type(pair) not in (list, tuple) or len(pair) != 2 or not _is_safe_key(pair[0]):
            raise pickle.UnpicklingError(f"OrderedDict item {_brief(pair)} is not a (str/int key, value) pair")
        out[pair[0]] = pair[1]
    return out


# --------------------------------------------------------------------------------------------
# The pickle scan: a symbolic run of the opcodes, before the C unpickler touches them.

_REFUSED_OPS = {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID",
                "NEXT_BUFFER", "READONLY_BUFFER"}
_KEY_KINDS = {"str", "bytes", "int", "bool", "none"}
_PUSH_KIND = {
    "STRING": "str", "BINSTRING": "str", "SHORT_BINSTRING": "str",
    "BINBYTES": "bytes", "SHORT_BINBYTES": "bytes", "BINBYTES8": "bytes", "BYTEARRAY8": "bytearray",
    "NONE": "none", "NEWTRUE": "bool", "NEWFALSE": "bool", "FLOAT": "float", "BINFLOAT": "float",
    "EMPTY_LIST": "list", "EMPTY_TUPLE": "tuple", "EMPTY_DICT": "dict", "EMPTY_SET": "set",
}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_STR_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _ScanError(Exception):
    """Why the scan refused a pickle; becomes a PthReadError naming the file, pickle and byte."""


class _PickleScan:
    """Symbolic stack machine over `pickletools.genops`: tracks only each value's kind.

    Stack entries are (kind, text) pairs; text is kept for strings and globals only. Each opcode
    has a handler taking its argument; `handlers` maps opcode names to them.
    """

    def __init__(self, check_global: Callable[[str, str], None]):
        self.check_global = check_global
        self.stack: list[tuple[str, Any]] = []
        self.marks: list[int] = []
        self.memo: list[tuple[str, Any]] = []
        push = self.stack.append
        self.handlers: dict[str, Callable[[Any], None]] = {
            name: (lambda arg, entry=(kind, None): push(entry)) for name, kind in _PUSH_KIND.items()}
        for names, handler in (
                (_INT_OPS, self._int), (_STR_OPS, self._str), (_GET_OPS, self._get), (_PUT_OPS, self._put),
                (("MEMOIZE",), self._memoize), (("MARK",), self._mark), (("POP_MARK",), self._pop_mark),
                (("LIST", "TUPLE", "DICT", "FROZENSET"), None), (("TUPLE1", "TUPLE2", "TUPLE3"), None),
                (("APPEND",), self._append), (("APPENDS", "SETITEMS", "ADDITEMS"), None),
                (("SETITEM",), self._setitem), (("POP",), self._pop_one), (("DUP",), self._dup),
                (("GLOBAL",), self._global), (("STACK_GLOBAL",), self._stack_global), (("REDUCE",), self._reduce),
                (("BUILD",), self._build), (("BINPERSID",), self._persid),
                (("PROTO", "FRAME", "STOP"), lambda arg: None), (_REFUSED_OPS, None)):
            for name in names:
                self.handlers[name] = handler or self._make(name)

    def _make(self, name: str) -> Callable[[Any], None]:
        """Handlers that depend on the opcode's name."""
        if name in _REFUSED_OPS:
            def refuse(arg: Any) -> None:
                raise _ScanError(f"the pickle uses opcode {name}, which no PyTorch checkpoint needs (it can build "
                                 "arbitrary objects)")
            return refuse
        if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            def tuple_n(arg: Any, n: int = int(name[-1])) -> None:
                self._pop(n, name)
                self.stack.append(("tuple", None))
            return tuple_n
        kind = {"LIST": "list", "TUPLE": "tuple", "DICT": "dict", "FROZENSET": "frozenset"}.get(name)

        def marked(arg: Any) -> None:
            items = self._pop_mark(arg)
            if name in ("DICT", "SETITEMS"):
                if len(items) % 2:
                    raise _ScanError(f"malformed pickle: {name} with an odd number of items")
                self._keys(items[0::2], name)
            elif name in ("FROZENSET", "ADDITEMS"):
                self._keys(items, name)
            if kind is None:  # APPENDS, SETITEMS, ADDITEMS extend the object below the mark
                self._top(name)
            else:
                self.stack.append((kind, None))
        return marked

    def _pop(self, n: int, op: str) -> list[tuple[str, Any]]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise _ScanError(f"malformed pickle: {op} on a stack of {len(self.stack) - floor} items")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def _pop_mark(self, arg: Any) -> list[tuple[str, Any]]:
        if not self.marks:
            raise _ScanError("malformed pickle: an opcode that pops to a MARK without a MARK")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _top(self, op: str) -> None:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _ScanError(f"malformed pickle: {op} on an empty stack")

    @staticmethod
    def _keys(items: list, op: str) -> None:
        for kind, _ in items:
            if kind not in _KEY_KINDS:
                raise _ScanError(f"the pickle uses a {kind} as a dict key or set item ({op}); only str, bytes, "
                                 "ints below 2**61, bools and None are allowed in a checkpoint")

    def _int(self, arg: Any) -> None:
        kind = "bool" if type(arg) is bool else "int" if abs(arg) <= _SAFE_INT_KEY else "bigint"
        self.stack.append((kind, None))

    def _str(self, arg: Any) -> None:
        self.stack.append(("str", arg))

    def _get(self, arg: Any) -> None:
        if not (type(arg) is int and 0 <= arg < len(self.memo)):
            raise _ScanError(f"malformed pickle: memo entry {_brief(arg)} is read but was never stored")
        self.stack.append(self.memo[arg])

    def _put(self, index: Any) -> None:
        self._top("PUT")
        if not (type(index) is int and 0 <= index <= len(self.memo)):
            raise _ScanError(f"the pickle stores memo entry {_brief(index)} while only {len(self.memo)} exist (a "
                             "sparse memo index would make the unpickler allocate memory for every gap)")
        if index == len(self.memo):
            self.memo.append(self.stack[-1])
        else:
            self.memo[index] = self.stack[-1]

    def _memoize(self, arg: Any) -> None:
        self._put(len(self.memo))

    def _mark(self, arg: Any) -> None:
        self.marks.append(len(self.stack))

    def _append(self, arg: Any) -> None:
        self._pop(1, "APPEND")
        self._top("APPEND")

    def _setitem(self, arg: Any) -> None:
        key, _ = self._pop(2, "SETITEM")
        self._keys([key], "SETITEM")
        self._top("SETITEM")

    def _pop_one(self, arg: Any) -> None:
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()  # as the C unpickler: POP right after a MARK discards the mark
        else:
            self._pop(1, "POP")

    def _dup(self, arg: Any) -> None:
        self._top("DUP")
        self.stack.append(self.stack[-1])

    def _global(self, arg: Any) -> None:
        module, _, qual = str(arg).partition(" ")
        self.check_global(module, qual)
        self.stack.append(("global", arg))

    def _stack_global(self, arg: Any) -> None:
        (mkind, module), (nkind, qual) = self._pop(2, "STACK_GLOBAL")
        if mkind != "str" or nkind != "str":
            raise _ScanError("malformed pickle: STACK_GLOBAL of a non-string module or name")
        self.check_global(module, qual)
        self.stack.append(("global", f"{module} {qual}"))

    def _reduce(self, arg: Any) -> None:
        (fkind, fname), _ = self._pop(2, "REDUCE")
        self.stack.append(("dict" if (fkind, fname) == ("global", "collections OrderedDict") else "object", None))

    def _build(self, arg: Any) -> None:
        self._pop(1, "BUILD")
        self._top("BUILD")

    def _persid(self, arg: Any) -> None:
        self._pop(1, "BINPERSID")
        self.stack.append(("object", None))


def _scan_pickle(stream: BinaryIO, error: Callable[[str], PthReadError],
                 check_global: Callable[[str, str], None]) -> int:
    """Scan one pickle from `stream` up to its STOP; the number of opcodes. Raises PthReadError."""
    handlers = _PickleScan(check_global).handlers
    count, pos, frame_end = 0, 0, None
    try:
        for op, arg, pos in pickletools.genops(stream):
            count += 1
            # An opcode across the end of a protocol-4 frame is read differently by the C unpickler
            # (it takes the argument from after the frame): refuse it, so that both read the same.
            if frame_end is not None and pos >= frame_end:
                if pos > frame_end:
                    raise _ScanError(f"an opcode crosses the end of the frame at byte {frame_end}")
                frame_end = None
            if op.name == "FRAME":
                if frame_end is not None:
                    raise _ScanError("a FRAME starts inside another frame")
                frame_end = pos + 9 + arg
            handlers[op.name](arg)
    except PthReadError:  # a refused global, from check_global
        raise
    except _ScanError as e:
        raise error(f"{e.args[0]} (at byte {pos} of the pickle)") from None
    except ValueError as e:  # genops reports truncation and malformed arguments as ValueError
        raise error(f"malformed pickle ({_describe(e)})") from None
    return count


class _Window:
    """At most `limit` bytes of a file from its position: read/readline/tell, for genops."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        line = self.f.readline(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(line)
        return line

    def tell(self) -> int:
        return self.f.tell()


# --------------------------------------------------------------------------------------------
# One read: the unpickler, the storages, and turning tensor refs into arrays.

_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                    AttributeError, OverflowError, struct.error)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
               zlib.error, lzma.LZMAError, NotImplementedError)


def _describe(e: BaseException) -> str:
    """'Type: message' of an exception, without ever formatting untrusted objects it may hold."""
    if isinstance(e, UnicodeDecodeError):
        return f"UnicodeDecodeError: bytes {e.start}-{e.end} are not {e.encoding} ({e.reason})"
    msg = e.args[0] if e.args and isinstance(e.args[0], str) else ""
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the read's allowed globals and turns storages into `_StorageRef`s."""

    def __init__(self, data: bytes, read: "_Read", persistent_load: Callable | None):
        super().__init__(io.BytesIO(data), encoding="utf-8")  # as torch.load reads Python 2 strings
        self._read = read
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        self._read.check_global(module, name)
        return self._read.globals[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


class _Read:
    """Everything one read keeps: the file, its limits, its fresh globals, its storages."""

    def __init__(self, path: str, limits: PthLimits, file_size: int):
        self.path, self.limits, self.file_size = path, limits, file_size
        self.refs: dict[str, _StorageRef] = {}
        self.storages: dict[str, np.ndarray] = {}
        self.record_name: Callable[[str], str] = lambda key: f"storage {key!r}"
        self.ops = 0  # opcodes of the main pickle, the scale of the tree budget
        self.globals: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): _SafeCallable("collections.OrderedDict", _ordered_dict),
            ("torch._utils", "_rebuild_tensor"): _SafeCallable("torch._utils._rebuild_tensor", _rebuild_tensor),
            ("torch._utils", "_rebuild_tensor_v2"): _SafeCallable("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
            ("torch._utils", "_rebuild_parameter"):
                _SafeCallable("torch._utils._rebuild_parameter", _rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state"):
                _SafeCallable("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
            **{("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items() if dt is not None},
        }

    def error(self, msg: str) -> PthReadError:
        return PthReadError(f"{self.path}: {msg}")

    def check_global(self, module: str, name: str) -> None:
        """Raise PthReadError unless module.name is one of the allowed globals."""
        if (module, name) in self.globals:
            return
        if module == "torch" and name.endswith("Storage"):
            supported = ", ".join(n for n, dt in _STORAGE_DTYPES.items() if dt is not None)
            raise self.error(f"unsupported storage type torch.{name[:80]} (supported: {supported})")
        raise self.error(
            f"refusing to load global '{module[:100]}.{name[:100]}' (only tensors, storages and ordered dicts are "
            "allowed in a checkpoint; a .pth must not run code)")

    # -- pickles

    def scan(self, stream: BinaryIO, what: str) -> int:
        """Scan one pickle (see _PickleScan); its number of opcodes. Raises PthReadError."""
        return _scan_pickle(stream, lambda msg: self.error(f"{what}: {msg}"), self.check_global)

    def unpickle(self, data: bytes, what: str, with_storages: bool, ops: int | None = None) -> Any:
        """Scan (unless already scanned: ops given), then load one pickle; storages go to `self.refs` when allowed."""
        if ops is None:
            ops = self.scan(io.BytesIO(data), what)
        if with_storages:
            self.ops = ops
        try:
            return _RestrictedUnpickler(data, self, self.storage if with_storages else None).load()
        except PthReadError:
            raise
        except _UNPICKLE_ERRORS as e:
            kind = "truncated" if isinstance(e, EOFError) else "corrupt or unsupported"
            raise self.error(f"{kind} checkpoint: {what} ({_describe(e)})") from None

    def storage(self, pid: Any) -> _StorageRef:
        """persistent_load: ('storage', type, key, location, numel[, view]) of either format."""
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise self.error(f"unsupported persistent id {_brief(pid)} (expected a ('storage', ...) tuple)")
        storage_type, key, _location, numel = pid[1:5]
        if type(key) is not str or not 0 < len(key) <= 256:
            raise self.error(f"storage key {_brief(key)} is not a short string")
        label = self.record_name(key)
        if not isinstance(storage_type, _StorageType):
            raise self.error(f"{label}: unsupported storage type {_brief(storage_type)}")
        if type(numel) is not int or not 0 <= numel < _MAX_INT // 8:
            raise self.error(f"{label}: invalid element count {_brief(numel)}")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # pre-1.0 storage views: (view_key, offset, size) into the root storage
            if type(view) is not tuple or len(view) != 3 or type(view[1]) is not int or type(view[2]) is not int \
                    or not 0 <= view[1] <= view[1] + view[2] <= numel or view[2] < 0:
                raise self.error(f"{label}: invalid storage view {_brief(view)} of a storage of {numel} elements")
            view = (view[1], view[2])
        ref = _StorageRef(key, storage_type.dtype, numel, view, label)
        first = self.refs.setdefault(key, ref)
        if first is not ref and (first.dtype != ref.dtype or first.numel != ref.numel):
            raise self.error(f"{label} is declared twice, as {first.numel} x {first.dtype} and as "
                             f"{ref.numel} x {ref.dtype}")
        return ref if view is not None else first

    # -- storages

    def add_storage(self, key: str, array: np.ndarray) -> None:
        ref = self.refs[key]
        if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
            raise self.error(f"{ref.label}: bool storage holds bytes other than 0 and 1")
        self.storages[key] = array

    # -- materializing

    def materialize(self, t: _TensorRef, where: str, budget: list[int]) -> np.ndarray:
        """Copy a (possibly strided, offset) tensor out of its storage, checking every bound."""
        ref = t.storage
        flat = self.storages[ref.key]
        if ref.view is not None:
            flat = flat[ref.view[0]: ref.view[0] + ref.view[1]]
        native = flat.dtype.newbyteorder("=") if flat.dtype.byteorder == ">" else flat.dtype
        item = native.itemsize
        context = f"tensor {where!r} ({ref.label})"
        if math.prod(max(n, 1) for n in t.size) * item >= _MAX_INT:
            raise self.error(f"{context}: size {t.size} is too large")
        nbytes = math.prod(t.size) * item
        if nbytes > budget[0]:
            raise self.error(
                f"{context}: size {t.size} needs {nbytes} bytes, beyond the {budget[0]} left of this file's budget "
                f"for copying tensors out of their storages (PthLimits.max_expansion={self.limits.max_expansion} "
                f"x the storage bytes + expansion_allowance={self.limits.expansion_allowance})")
        budget[0] -= nbytes
        if 0 in t.size:
            return np.zeros(t.size, native)
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if last >= flat.size:
            raise self.error(
                f"{context}: size {t.size}, stride {t.stride} at offset {t.offset} reaches element {last} of a "
                f"storage of {flat.size} elements (the storage is too short)")
        strides = tuple(s * item if n > 1 else 0 for n, s in zip(t.size, t.stride))
        view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.size, strides=strides, writeable=False)
        return np.array(view, dtype=native, copy=True, order="C")

    def resolve(self, root: Any) -> Any:
        """Replace every `_TensorRef` in nested dicts/lists/tuples by its numpy array.

        Iterative and memoized (shared references stay shared, like torch.load); refuses cycles,
        nesting beyond max_depth, and trees that expand beyond the max_tree_factor budget.
        """
        stored = sum(a.nbytes for a in self.storages.values())
        budget = [int(self.limits.max_expansion * stored) + self.limits.expansion_allowance]
        max_nodes = int(self.limits.max_tree_factor * self.ops) + 4096
        done: dict[int, tuple[Any, int]] = {}  # id -> (resolved value, tree size)
        active: set[int] = set()
        work: list[tuple[bool, Any, str, int]] = [(False, root, "", 0)]
        while work:
            leaving, obj, where, depth = work.pop()
            oid = id(obj)
            if not leaving:
                if oid in done:
                    continue
                if isinstance(obj, _TensorRef):
                    done[oid] = (self.materialize(obj, where or "<top level>", budget), 1)
                    continue
                if type(obj) not in (list, tuple) and not isinstance(obj, dict):
                    done[oid] = (obj, 1)  # scalars, strings, sets of keys, storages, allowed globals
                    continue
                if oid in active:
                    raise self.error(f"the checkpoint's object at {where!r} contains itself (cyclic structure)")
                if depth >= self.limits.max_depth:
                    raise self.error(f"the checkpoint nests containers deeper than {self.limits.max_depth} levels "
                                     f"(at {where[:200]!r}; PthLimits.max_depth)")
                active.add(oid)
                work.append((True, obj, where, depth))
                children = obj.items() if isinstance(obj, dict) else enumerate(obj)
                for k, v in reversed(list(children)):
                    path = f"{where}.{k}" if where else str(k)
                    work.append((False, v, path[:300], depth + 1))
                continue
            active.discard(oid)
            if isinstance(obj, dict):
                value = {k: done[id(v)][0] for k, v in obj.items()}  # insertion order kept
                nodes = 1 + sum(done[id(v)][1] for v in obj.values())
            else:
                value = type(obj)(done[id(v)][0] for v in obj)
                nodes = 1 + sum(done[id(v)][1] for v in obj)
            if nodes > max_nodes:
                raise self.error(
                    f"the checkpoint's object at {where[:200] or '<top level>'!r} expands to more than {max_nodes} "
                    f"objects through shared references (a 'billion laughs' pickle; PthLimits.max_tree_factor)")
            done[oid] = (value, nodes)
        return done[id(root)][0]


# --------------------------------------------------------------------------------------------
# The two formats.


def _read_zip(read: _Read) -> Any:
    """The zip format (torch >= 1.6)."""
    path, limits = read.path, read.limits

    def guarded(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PthReadError:
            raise
        except _ZIP_ERRORS as e:
            raise read.error(f"corrupt zip archive: {what} ({_describe(e)})") from None

    def record(info: zipfile.ZipInfo, nbytes: int) -> bytes:
        if info.flag_bits & 0x1:
            raise read.error(f"record {info.filename!r} is encrypted")
        with zf.open(info) as f:
            return f.read(nbytes)

    zf = guarded("reading its directory", lambda: zipfile.ZipFile(path))
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise read.error("zip file without a data.pkl record (not a PyTorch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        read.record_name = lambda key: repr(f"{prefix}data/{key}")
        byteorder = "little"
        if prefix + "byteorder" in infos:
            info = infos[prefix + "byteorder"]
            raw = guarded(f"record {info.filename!r}", lambda: record(info, 16))
            byteorder = raw.decode("ascii", "replace").strip()
            if byteorder not in ("little", "big") or info.file_size > 16:
                raise read.error(f"unknown byteorder record {byteorder[:20]!r}")
        info = infos[pkl[0]]
        inflation_cap = int(limits.max_inflation * read.file_size) + _MIB
        pickle_cap = min(limits.max_pickle_bytes, inflation_cap)
        if info.file_size > pickle_cap:
            raise read.error(
                f"record {pkl[0]!r} is {info.file_size} bytes, over the limit of {pickle_cap} "
                f"(PthLimits.max_pickle_bytes={limits.max_pickle_bytes}, max_inflation={limits.max_inflation} x the "
                f"file's {read.file_size} bytes + 1 MiB)")
        data = guarded(f"record {pkl[0]!r}", lambda: record(info, info.file_size))
        if len(data) != info.file_size:
            raise read.error(f"truncated record {pkl[0]!r} ({len(data)} of {info.file_size} bytes)")
        obj = read.unpickle(data, pkl[0], with_storages=True)

        declared = {key: ref.numel * ref.dtype.itemsize for key, ref in read.refs.items()}
        total = sum(declared.values()) + len(data)
        if total > inflation_cap:
            raise read.error(
                f"the checkpoint declares {total} bytes of storages and pickle, more than PthLimits.max_inflation="
                f"{limits.max_inflation} x the file's {read.file_size} bytes + 1 MiB")
        for key, ref in read.refs.items():
            name, nbytes = f"{prefix}data/{key}", declared[key]
            info = infos.get(name)
            if info is None:
                raise read.error(f"storage record {name!r} is missing")
            if info.file_size < nbytes:
                raise read.error(f"storage record {name!r} is too short: {info.file_size} bytes, but its storage "
                                 f"declares {ref.numel} x {ref.dtype} = {nbytes} bytes")
            if info.file_size > nbytes + limits.max_record_excess:
                raise read.error(
                    f"storage record {name!r} holds {info.file_size} bytes, but its storage declares {ref.numel} x "
                    f"{ref.dtype} = {nbytes} bytes (PthLimits.max_record_excess={limits.max_record_excess})")
            raw = guarded(f"record {name!r}", lambda: record(info, nbytes))
            if len(raw) != nbytes:
                raise read.error(f"truncated storage record {name!r} ({len(raw)} of {nbytes} bytes)")
            dtype = ref.dtype if byteorder == "little" else ref.dtype.newbyteorder(">")
            read.add_storage(key, np.frombuffer(raw, dtype=dtype))
    return read.resolve(obj)


def _read_legacy(read: _Read, f: BinaryIO) -> Any:
    """The legacy stream format (torch < 1.6; the published Places365 checkpoints)."""

    def pickled(what: str, with_storages: bool = False) -> Any:
        start = f.tell()
        left = read.file_size - start
        window = _Window(f, min(left, read.limits.max_pickle_bytes))
        try:
            ops = read.scan(window, what)
        except PthReadError:
            if window.left == 0 and left > read.limits.max_pickle_bytes:
                raise read.error(f"{what} is larger than PthLimits.max_pickle_bytes={read.limits.max_pickle_bytes}") \
                    from None
            raise
        end = f.tell()
        f.seek(start)
        return read.unpickle(f.read(end - start), what, with_storages, ops)

    magic = pickled("magic number")
    if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
        raise read.error("not a PyTorch checkpoint (wrong magic number)")
    protocol = pickled("protocol version")
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL_VERSION:
        raise read.error(f"unsupported legacy protocol version {_brief(protocol)}")
    sys_info = pickled("system info")
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    if type(little) is not bool:
        raise read.error(f"system info 'little_endian' is {_brief(little)}, not a bool")
    obj = pickled("pickled object", with_storages=True)
    keys = pickled("storage key list")
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise read.error("storage key list is missing or not a list of strings")
    for key in keys:
        ref = read.refs.get(key)
        if ref is None:
            raise read.error(f"stored storage {key!r} is not referenced by the checkpoint")
        if key in read.storages:
            raise read.error(f"{ref.label} is stored twice")
        header = f.read(8)
        if len(header) < 8:
            raise read.error(f"file is truncated ({ref.label}: header)")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        if numel != ref.numel:
            raise read.error(f"{ref.label} holds {numel} elements, but the checkpoint declares {ref.numel}")
        dtype = ref.dtype if little else ref.dtype.newbyteorder(">")
        nbytes, left = numel * dtype.itemsize, read.file_size - f.tell()
        if nbytes > left:
            raise read.error(f"file is truncated ({ref.label}: {nbytes} bytes declared, {left} left in the file)")
        buf = np.empty(numel, dtype=dtype)
        got = f.readinto(buf.view(np.uint8)) if nbytes else 0
        if got != nbytes:
            raise read.error(f"file is truncated ({ref.label}: {got} of {nbytes} bytes)")
        read.add_storage(key, buf)
    missing = sorted(set(read.refs) - set(read.storages))
    if missing:
        raise read.error(f"storages {missing[:5]} are referenced but not stored")
    return read.resolve(obj)


# --------------------------------------------------------------------------------------------
# Public API.


def _flatten(obj: dict, out: dict) -> None:
    """Dotted keys of nested dicts, in insertion order; non-tensor leaves (epochs, names) are skipped."""
    work: list[tuple[str, Iterator]] = [("", iter(obj.items()))]
    while work:
        prefix, items = work[-1]
        for k, v in items:
            if isinstance(v, np.ndarray):
                out[f"{prefix}{k}"] = v
            elif isinstance(v, dict):
                work.append((f"{prefix}{k}.", iter(v.items())))
                break
        else:
            work.pop()


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
    _flatten(obj, flat)
    if not flat:
        raise PthReadError(f"{path}: checkpoint contains no tensors")
    if all(k.startswith("module.") for k in flat):
        flat = {k[len("module."):]: v for k, v in flat.items()}
    return flat


def load_pickled(path: str | os.PathLike, limits: PthLimits | None = None) -> Any:
    """The checkpoint's unpickled object (dicts/lists with numpy arrays for tensors)."""
    path = os.fspath(path)
    limits = DEFAULT_LIMITS if limits is None else limits
    if not os.path.isfile(path):
        raise PthReadError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(4)
            f.seek(0)
            read = _Read(path, limits, size)
            if head[:2] == b"PK":
                return _read_zip(read)
            if len(head) < 2 or head[0] != 0x80:  # every torch pickle starts with a PROTO opcode
                raise PthReadError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")
            return _read_legacy(read, f)
    except OSError as e:
        raise PthReadError(f"{path}: cannot read the file ({_describe(e)})") from None


def read_pth(path: str | os.PathLike, limits: PthLimits | None = None) -> dict[str, np.ndarray]:
    """Read a `.pth` file (zip or legacy format) into a flat `{key: numpy array}` state dict.

    `{'state_dict': ...}` / `{'model': ...}` wrappers are unwrapped, nested dicts are joined
    with dots, and a 'module.' prefix shared by every key (DataParallel) is removed.
    `limits` bounds the work and memory of the read (module docstring). Raises PthReadError
    naming the file and the problem for anything else.
    """
    return _state_dict(load_pickled(path, limits), os.fspath(path))
