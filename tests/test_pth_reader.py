"""read_pth against torch.load on files torch.save wrote, in both serialization formats, and against
hostile files (bombs, billion laughs, deep nesting, pickles that try to modify the reader)."""
import collections
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from weight_conversion import PthReadError, read_pth
from weight_conversion.pth_reader import PthLimits

from test_fuzz_pth import build_zip  # a zip writer that writes the headers it is told (no deflating of 1 GiB)

torch = pytest.importorskip("torch")

FORMATS = {"zip": True, "legacy": False}


def _state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    long_storage = torch.arange(20, dtype=torch.int64)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["transposed"] = base.t()  # non-contiguous strides
    sd["offset_view"] = base[2:5, 1:4]  # storage offset and row stride 5
    sd["half"] = torch.randn(3, 7, generator=g).half()
    sd["half_view"] = torch.randn(10, generator=g).half()[3:9:2]  # offset + step
    sd["double"] = torch.randn(2, 2, generator=g, dtype=torch.float64)
    sd["int64_view"] = long_storage[5:11].view(2, 3)  # shares storage with the next
    sd["int64_full"] = long_storage
    sd["int32"] = torch.tensor([1, -2, 3], dtype=torch.int32)
    sd["uint8"] = torch.tensor([0, 7, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([[True, False], [False, True]])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["bn.num_batches_tracked"] = torch.tensor(12)
    sd["param"] = torch.nn.Parameter(torch.randn(5, generator=g))
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride 0
    return sd


def _save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def _assert_same(got, expected):
    assert list(got) == list(expected)
    for k, t in expected.items():
        ref = t.detach().numpy()
        assert got[k].dtype == ref.dtype, k
        assert got[k].shape == ref.shape, k
        np.testing.assert_array_equal(got[k], ref, err_msg=k)
        assert got[k].flags["C_CONTIGUOUS"] and got[k].flags["WRITEABLE"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_torch_load(tmp_path, fmt):
    path = _save(_state_dict(), tmp_path / "sd.pth", fmt)
    _assert_same(read_pth(path), torch.load(path, weights_only=True))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16(tmp_path, fmt):
    t = torch.randn(4, 3).bfloat16()
    path = _save({"w": t}, tmp_path / "bf.pth", fmt)
    got = read_pth(path)["w"]
    np.testing.assert_array_equal(got.astype(np.float32), t.float().numpy())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrappers_and_module_prefix(tmp_path, fmt, wrapper):
    inner = collections.OrderedDict((f"module.{k}", v) for k, v in _state_dict().items())
    obj = {"epoch": 7, "arch": "vgg16", "best_prec1": 0.5, wrapper: inner}
    path = _save(obj, tmp_path / "wrapped.pth", fmt)
    got = read_pth(path)
    _assert_same(got, _state_dict())


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_dicts_are_dotted(tmp_path, fmt):
    a, b = torch.randn(2, 3), torch.arange(4)
    obj = collections.OrderedDict(encoder=collections.OrderedDict(w=a), head={"b": b})
    got = read_pth(_save(obj, tmp_path / "nested.pth", fmt))
    assert sorted(got) == ["encoder.w", "head.b"]
    np.testing.assert_array_equal(got["encoder.w"], a.numpy())
    np.testing.assert_array_equal(got["head.b"], b.numpy())


def test_reads_without_torch(tmp_path):
    """The reader runs in a process where importing torch fails."""
    sd = _state_dict()
    paths = {fmt: _save(sd, tmp_path / f"{fmt}.pth", fmt) for fmt in FORMATS}
    for fmt, path in paths.items():
        np.savez(tmp_path / f"{fmt}_ref.npz", **{k: v.detach().numpy() for k, v in sd.items()})
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from weight_conversion import read_pth\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "for fmt in ('zip', 'legacy'):\n"
        f"    got = read_pth(r'{tmp_path}/' + fmt + '.pth')\n"
        f"    ref = np.load(r'{tmp_path}/' + fmt + '_ref.npz')\n"
        "    assert sorted(got) == sorted(ref.files), (sorted(got), ref.files)\n"
        "    for k in ref.files:\n"
        "        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_global_refused(tmp_path, fmt):
    path = _save({"w": torch.zeros(2), "evil": _Evil()}, tmp_path / "evil.pth", fmt)
    with pytest.raises(PthReadError, match=r"evil\.pth.*(posix|os)\.system"):
        read_pth(path)


def test_plain_pickle_with_evil_global_refused(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(PthReadError, match="system"):
        read_pth(path)


def test_whole_module_pickle_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(PthReadError, match=r"module\.pth.*torch\.nn"):
        read_pth(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated(tmp_path, fmt):
    path = _save(_state_dict(), tmp_path / "full.pth", fmt)
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(PthReadError, match=rf"cut{cut}\.pth"):
            read_pth(bad)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(PthReadError, match=r"notes\.pth.*not a PyTorch checkpoint"):
        read_pth(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(PthReadError, match=r"empty\.pth"):
        read_pth(empty)
    zf = tmp_path / "other.zip"
    with zipfile.ZipFile(zf, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(PthReadError, match=r"other\.zip.*data\.pkl"):
        read_pth(zf)
    with pytest.raises(PthReadError, match="no such file"):
        read_pth(tmp_path / "missing.pth")


def test_no_tensors(tmp_path):
    path = _save({"epoch": 3}, tmp_path / "meta.pth", "zip")
    with pytest.raises(PthReadError, match="no tensors"):
        read_pth(path)


def test_out_of_bounds_strides_refused(tmp_path):
    """A tensor whose size/stride would read past its storage is an error, not a memory read."""
    path = _save({"w": torch.arange(6, dtype=torch.float32)}, tmp_path / "ok.pth", "zip")
    with zipfile.ZipFile(path) as z:
        records = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    # Rewrite the tensor's size tuple (6,) -> (7,): one element past the storage.
    records[pkl] = records[pkl].replace(b"K\x06\x85", b"K\x07\x85", 1)
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in records.items():
            z.writestr(n, d)
    with pytest.raises(PthReadError, match="reaches element"):
        read_pth(bad)


def test_big_endian_zip(tmp_path):
    """A zip checkpoint whose byteorder record says 'big' (storages byte-swapped) reads as torch.load does."""
    sd = collections.OrderedDict(w=torch.randn(3, 4), i=torch.arange(6).view(2, 3).t(), h=torch.randn(5).half())
    path = _save(sd, tmp_path / "little.pth", "zip")
    itemsize = {"0": 4, "1": 8, "2": 2}
    with zipfile.ZipFile(path) as z:
        records = {n: z.read(n) for n in z.namelist()}
    swapped = {}
    for name, data in records.items():
        key = name.rsplit("/", 1)[-1]
        if name.endswith("/byteorder"):
            data = b"big"
        elif "/data/" in name:
            data = np.frombuffer(data, f"<u{itemsize[key]}").byteswap().tobytes()
        swapped[name] = data
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(big, "w") as z:
        for name, data in swapped.items():
            z.writestr(name, data)
    _assert_same(read_pth(big), torch.load(big, weights_only=True))
    _assert_same(read_pth(big), sd)


# ---------------------------------------------------------------------------------------------
# Hostile files. The pickles are assembled opcode by opcode (the assembler is checked against
# torch.load first); every attack must end in a PthReadError, quickly and in little memory.

PROTO2, STOP, MARK, TUPLE, EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST = b"\x80\x02", b".", b"(", b"t", b")", b"}", b"]"
SETITEM, APPEND, APPENDS, REDUCE, BUILD, BINPERSID, NEWFALSE, TUPLE2 = b"s", b"a", b"e", b"R", b"b", b"Q", b"\x89", b"\x86"


def op_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def op_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_int(i):
    return b"J" + struct.pack("<i", i) if -2**31 <= i < 2**31 else b"\x8a" + bytes([8]) + struct.pack("<q", i)


def op_put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def op_get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def op_tuple(ints):
    return MARK + b"".join(op_int(i) for i in ints) + TUPLE


def op_tensor(key, numel, size, stride, offset=0, storage="FloatStorage", legacy=False):
    """torch._utils._rebuild_tensor_v2(('storage', torch.<storage>, key, 'cpu', numel[, None]), offset, size, stride, ...)."""
    pid = (MARK + op_str("storage") + op_global("torch", storage) + op_str(key) + op_str("cpu") + op_int(numel)
           + (b"N" if legacy else b"") + TUPLE)
    hooks = op_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    return (op_global("torch._utils", "_rebuild_tensor_v2") + MARK + pid + BINPERSID + op_int(offset)
            + op_tuple(size) + op_tuple(stride) + NEWFALSE + hooks + TUPLE + REDUCE)


def op_dict(entries):
    """A dict literal: entries is [(key_op_bytes, value_op_bytes)]."""
    return EMPTY_DICT + b"".join(k + v + SETITEM for k, v in entries)


def pkl(body):
    return PROTO2 + body + STOP


def write_zip(path, data_pkl, records, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def write_legacy(path, obj_pkl, storages):
    """The legacy stream: magic, protocol, system info, the object, the key list, the storages."""
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
             obj_pkl, pickle.dumps(list(storages), protocol=2)]
    for arr in storages.values():
        parts.append(struct.pack("<q", arr.size) + arr.tobytes())
    path.write_bytes(b"".join(parts))
    return path


def write_checkpoint(path, fmt, data_pkl, storages):
    """storages: {key: float32 array}."""
    if fmt == "zip":
        return write_zip(path, data_pkl, {k: a.tobytes() for k, a in storages.items()})
    return write_legacy(path, data_pkl, storages)


W = np.arange(6, dtype=np.float32)
W_PKL = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (2, 3), (3, 1)))]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_assembled_checkpoint_matches_torch_load(tmp_path, fmt):
    """The test's pickle assembler writes what torch.load reads: the attacks below are well-formed around their payload."""
    data = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (2, 3), (3, 1), legacy=fmt == "legacy"))]))
    path = write_checkpoint(tmp_path / "asm.pth", fmt, data, {"0": W})
    ref = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(ref["w"].numpy(), W.reshape(2, 3))
    np.testing.assert_array_equal(read_pth(path)["w"], W.reshape(2, 3))


def bounded(fn, seconds=2.0, megabytes=50):
    """Run fn timed, then again under tracemalloc; assert little time and memory; return what it raised or returned."""
    def outcome():
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - returned to the caller, who asserts its type
            return e

    t0 = time.perf_counter()
    result = outcome()
    elapsed = time.perf_counter() - t0
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    tracemalloc.start()
    try:
        outcome()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < megabytes * 2**20, f"peak memory {peak / 2**20:.0f} MB"
    return result


def raises_bounded(path, match, **kw):
    err = bounded(lambda: read_pth(path, **kw))
    assert isinstance(err, PthReadError), f"expected PthReadError, got {err!r}"
    assert re.search(match, str(err)), str(err)
    assert str(err).startswith(str(path)), str(err)
    return err


def _deflated_zeros(nbytes):
    """A raw deflate stream of nbytes zeros, made in milliseconds: identical fully-flushed 1 MiB blocks."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    assert nbytes % (1 << 20) == 0
    stream = block * (nbytes >> 20) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    assert zlib.decompressobj(-15).decompress(stream[: 2 * len(block)]) == bytes(2 << 20)  # blocks are self-contained
    crc = 0
    zero = bytes(1 << 20)
    for _ in range(nbytes >> 20):
        crc = zlib.crc32(zero, crc)
    return stream, crc


def _zip_with_raw_record(path, data_pkl, name, stream, crc, size):
    """A zip whose record `name` is the given deflate stream, declared honestly (size, crc) in its headers."""
    stored = {"archive/data.pkl": data_pkl, "archive/byteorder": b"little", "archive/version": b"3\n"}
    entries = [(n, d, zipfile.ZIP_STORED, len(d), zlib.crc32(d)) for n, d in stored.items()]
    path.write_bytes(build_zip(entries + [(name, stream, zipfile.ZIP_DEFLATED, size, crc)]))
    return path


def test_zip_bomb_record_beyond_declared_size(tmp_path):
    """A 1 MB zip whose storage record inflates to 1 GiB while its storage declares 24 bytes."""
    stream, crc = _deflated_zeros(1 << 30)
    path = _zip_with_raw_record(tmp_path / "bomb.pth", W_PKL, "archive/data/0", stream, crc, 1 << 30)
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as z:  # the bomb is real: the record inflates to 1 GiB zeros
        assert z.getinfo("archive/data/0").file_size == 1 << 30
        with z.open("archive/data/0") as f:
            assert f.read(1 << 20) == bytes(1 << 20)
    raises_bounded(path, r"'archive/data/0' holds 1073741824 bytes, but its storage declares 6 x float32 = 24 bytes")
    # Both the record and the declared storage at 1 GiB: the declared size itself is beyond the file's means.
    big = pkl(op_dict([(op_str("w"), op_tensor("0", 1 << 28, (1 << 28,), (1,)))]))
    path = _zip_with_raw_record(tmp_path / "bomb2.pth", big, "archive/data/0", stream, crc, 1 << 30)
    raises_bounded(path, r"declares 1073741\d+ bytes of storages and pickle, more than PthLimits.max_inflation")


def _laughs(levels, container):
    """{'w': tensor, 'junk': x_levels} where x_0 = [] and x_i = [x_{i-1}, x_{i-1}] (or a tuple): tiny pickle, 2**levels tree."""
    body = EMPTY_LIST + op_put(0)
    for i in range(1, levels + 1):
        body += b"0" + (EMPTY_LIST + MARK + op_get(i - 1) + op_get(i - 1) + APPENDS if container == "list"
                        else op_get(i - 1) + op_get(i - 1) + TUPLE2) + op_put(i)  # POP the previous level
    return pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,))), (op_str("junk"), body)]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("container", ["list", "tuple"])
def test_billion_laughs_refused(tmp_path, fmt, container):
    data = _laughs(60, container)
    assert len(data) < 1000
    path = write_checkpoint(tmp_path / "laughs.pth", fmt, data, {"0": W})
    raises_bounded(path, r"'junk\.\d+.*' expands to more than \d+ objects through shared references")
    # A few levels of sharing are an ordinary shared structure and read fine.
    ok = write_checkpoint(tmp_path / "shared.pth", fmt, _laughs(3, container), {"0": W})
    np.testing.assert_array_equal(read_pth(ok)["w"], W)


@pytest.mark.parametrize("fmt", FORMATS)
def test_deep_nesting_refused(tmp_path, fmt):
    def nested(depth):
        return EMPTY_LIST * depth + APPEND * (depth - 1)

    deep = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,))), (op_str("deep"), nested(5000))]))
    path = write_checkpoint(tmp_path / "deep.pth", fmt, deep, {"0": W})
    raises_bounded(path, r"nests containers deeper than 100 levels .*'deep\.0\.0\.0")
    ok = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,))), (op_str("deep"), nested(90))]))
    np.testing.assert_array_equal(read_pth(write_checkpoint(tmp_path / "ok.pth", fmt, ok, {"0": W}))["w"], W)
    raises_bounded(write_checkpoint(tmp_path / "limited.pth", fmt, ok, {"0": W}), r"deeper than 50 levels",
                   limits=PthLimits(max_depth=50))


def test_memo_index_bomb_refused(tmp_path):
    """PUT at index 2**32-1: the C unpickler would allocate (and zero) 64 GB for the memo."""
    data = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,)) + op_put(2**32 - 1))]))
    raises_bounded(write_zip(tmp_path / "memo.pth", data, {"0": W.tobytes()}), r"stores memo entry 4294967295")


@pytest.mark.parametrize("key", [op_int(2**61 - 1), op_int(2**62), MARK + op_int(1) + TUPLE, b"G" + struct.pack(">d", 1.5)])
def test_unhashable_or_colliding_keys_refused(tmp_path, key):
    """Dict keys whose hashes an attacker controls (large ints collide modulo 2**61-1; tuples, floats) are refused."""
    data = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,))), (key, op_int(0))]))
    raises_bounded(write_zip(tmp_path / "keys.pth", data, {"0": W.tobytes()}), r"as a dict key or set item")


STAND_IN_ATTACKS = {
    # BUILD on the storage class the reader hands out: {'dtype': 0} would break every later read.
    "storage_class": op_global("torch", "FloatStorage") + op_dict([(op_str("dtype"), op_int(0))]) + BUILD,
    # BUILD with slot state on an allowed function: (None, {'__defaults__': ...}).
    "function_slots": op_global("torch._utils", "_rebuild_tensor_v2") + MARK + b"N"
    + op_dict([(op_str("__kwdefaults__"), op_dict([]))]) + TUPLE + BUILD,
    "function_dict": op_global("torch._utils", "_rebuild_parameter") + op_dict([(op_str("x"), op_int(1))]) + BUILD,
    # SETITEM on the ordered-dict constructor and on a storage class.
    "setitem_global": op_global("collections", "OrderedDict") + op_str("x") + op_int(1) + SETITEM,
    "setitem_storage": op_global("torch", "FloatStorage") + op_str("dtype") + op_int(1) + SETITEM,
    # BUILD on a tensor: its storage would be swapped for an int.
    "tensor": op_tensor("0", 6, (6,), (1,)) + op_dict([(op_str("storage"), op_int(1))]) + BUILD,
}


@pytest.mark.parametrize("attack", STAND_IN_ATTACKS)
def test_pickle_cannot_modify_the_reader(tmp_path, attack):
    """An attack on the reader's stand-ins fails cleanly, and a normal read afterwards in the same process works."""
    good = write_zip(tmp_path / "good.pth", W_PKL, {"0": W.tobytes()})
    np.testing.assert_array_equal(read_pth(good)["w"], W.reshape(2, 3))
    data = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,))), (op_str("x"), STAND_IN_ATTACKS[attack])]))
    for fmt in FORMATS:
        with pytest.raises(PthReadError, match=r"attack\.pth"):
            read_pth(write_checkpoint(tmp_path / "attack.pth", fmt, data, {"0": W}))
    np.testing.assert_array_equal(read_pth(good)["w"], W.reshape(2, 3))
    sd = _state_dict()
    path = _save(sd, tmp_path / "real.pth", "zip")
    _assert_same(read_pth(path), sd)


def test_state_dict_metadata_build_still_read(tmp_path):
    """torch's state_dict() carries _metadata, set on the OrderedDict by BUILD: that must keep working."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 5))
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")
    for fmt in FORMATS:
        _assert_same(read_pth(_save(sd, tmp_path / f"m_{fmt}.pth", fmt)), sd)


def test_training_checkpoint_with_optimizer_state(tmp_path):
    """Int keys, lists, floats and tuples of an optimizer's state dict are read; the model's weights come out."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict()}
    for fmt in FORMATS:
        path = _save(ckpt, tmp_path / f"train_{fmt}.pth", fmt)
        _assert_same(read_pth(path), model.state_dict())


@pytest.mark.parametrize("fmt", FORMATS)
def test_too_short_storage_names_file_tensor_and_record(tmp_path, fmt):
    # The tensor reaches past its (consistently declared) storage.
    data = pkl(op_dict([(op_str("layer.w"), op_tensor("0", 6, (7,), (1,)))]))
    path = write_checkpoint(tmp_path / "short.pth", fmt, data, {"0": W})
    raises_bounded(path, r"short\.pth: tensor 'layer\.w' \((storage )?'(archive/data/)?0'\).*reaches element 6 of a "
                         r"storage of 6 elements")
    # The storage holds fewer elements than declared.
    data = pkl(op_dict([(op_str("layer.w"), op_tensor("0", 8, (6,), (1,)))]))
    path = write_checkpoint(tmp_path / "short2.pth", fmt, data, {"0": W})
    raises_bounded(path, r"short2\.pth: (storage record 'archive/data/0' is too short: 24 bytes, but its storage "
                         r"declares 8 x float32 = 32 bytes|storage '0' holds 6 elements, but the checkpoint declares 8)")


def test_errors_name_file_and_record(tmp_path):
    # A missing storage record.
    path = write_zip(tmp_path / "missing.pth", W_PKL, {})
    raises_bounded(path, r"missing\.pth: storage record 'archive/data/0' is missing")
    # A storage type the reader does not support.
    data = pkl(op_dict([(op_str("w"), op_tensor("0", 6, (6,), (1,), storage="ComplexFloatStorage"))]))
    raises_bounded(write_zip(tmp_path / "complex.pth", data, {"0": W.tobytes()}),
                   r"complex\.pth: unsupported storage type torch\.ComplexFloatStorage")
    # A bool storage holding other bytes than 0 and 1.
    data = pkl(op_dict([(op_str("b"), op_tensor("0", 2, (2,), (1,), storage="BoolStorage"))]))
    raises_bounded(write_zip(tmp_path / "bool.pth", data, {"0": b"\x01\x07"}),
                   r"bool\.pth: 'archive/data/0': bool storage holds bytes other than 0 and 1")
    # An opcode that builds arbitrary objects.
    data = pkl(op_dict([(op_str("w"), b"(i__main__\nThing\n")]))
    raises_bounded(write_zip(tmp_path / "inst.pth", data, {}), r"inst\.pth: .*(INST|refusing to load global)")


def test_legacy_format_problems_are_named(tmp_path):
    def legacy(name, magic=0x1950A86A20F9469CFC6C, protocol=1001, keys=("0",), storages=(("0", W),)):
        parts = [pickle.dumps(magic, protocol=2), pickle.dumps(protocol, protocol=2),
                 pickle.dumps({"little_endian": True}, protocol=2), W_PKL, pickle.dumps(list(keys), protocol=2)]
        parts += [struct.pack("<q", a.size) + a.tobytes() for _, a in storages]
        (tmp_path / name).write_bytes(b"".join(parts))
        return tmp_path / name

    np.testing.assert_array_equal(read_pth(legacy("fine.pth"))["w"], W.reshape(2, 3))
    raises_bounded(legacy("magic.pth", magic=12345), r"magic\.pth: not a PyTorch checkpoint \(wrong magic number\)")
    raises_bounded(legacy("proto.pth", protocol=999), r"proto\.pth: unsupported legacy protocol version 999")
    raises_bounded(legacy("unref.pth", keys=("0", "1"), storages=(("0", W), ("1", W))),
                   r"unref\.pth: stored storage '1' is not referenced")
    raises_bounded(legacy("nokeys.pth", keys=(), storages=()), r"nokeys\.pth: storages \['0'\] are referenced but not stored")
    raises_bounded(legacy("trunc.pth", storages=(("0", W[:3]),)),
                   r"trunc\.pth: storage '0' holds 3 elements, but the checkpoint declares 6")
    data = legacy("cut.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-5])
    raises_bounded(tmp_path / "cut.pth", r"cut\.pth: file is truncated \(storage '0': 24 bytes declared, 19 left")


def test_stride_zero_expansion_is_bounded(tmp_path):
    """A stride-0 tensor over one element may not be copied out to gigabytes; the allowance is configurable."""
    one = np.ones(1, np.float32)
    huge = pkl(op_dict([(op_str("w"), op_tensor("0", 1, (1 << 15, 1 << 15), (0, 0)))]))
    raises_bounded(write_zip(tmp_path / "huge.pth", huge, {"0": one.tobytes()}),
                   r"huge\.pth: tensor 'w' \('archive/data/0'\): size \(32768, 32768\) needs 4294967296 bytes")
    mid = pkl(op_dict([(op_str("w"), op_tensor("0", 1, (1024, 1024), (0, 0)))]))
    path = write_zip(tmp_path / "mid.pth", mid, {"0": one.tobytes()})
    np.testing.assert_array_equal(read_pth(path)["w"], np.ones((1024, 1024), np.float32))  # 4 MiB: within the allowance
    raises_bounded(path, r"max_expansion", limits=PthLimits(expansion_allowance=1 << 20))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_size_limit(tmp_path, fmt):
    path = _save(_state_dict(), tmp_path / "sd.pth", fmt)
    raises_bounded(path, r"sd\.pth: .*max_pickle_bytes=200", limits=PthLimits(max_pickle_bytes=200))
    assert read_pth(path, limits=PthLimits(max_pickle_bytes=1 << 20)).keys() == _state_dict().keys()


def test_record_excess_is_configurable(tmp_path):
    """torch itself reads only the declared bytes of a longer record; here that needs max_record_excess."""
    path = write_zip(tmp_path / "long.pth", W_PKL, {"0": W.tobytes() + b"\x00" * 4})
    raises_bounded(path, r"'archive/data/0' holds 28 bytes, but its storage declares 6 x float32 = 24 bytes "
                         r"\(PthLimits.max_record_excess=0\)")
    np.testing.assert_array_equal(read_pth(path, limits=PthLimits(max_record_excess=4))["w"], W.reshape(2, 3))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_depth must be a non-negative number"):
        PthLimits(max_depth=-1)


def test_opcode_across_a_frame_end_refused(tmp_path):
    """Protocol 4 frames: the C unpickler takes the argument of an opcode that crosses the frame's end from
    after the frame, so it reads another pickle than a linear scan does (the fuzz test found a 2 KB file whose
    crossing PUT made the unpickler allocate 12 GB for its memo). The scan must refuse the crossing itself.
    Here a LONG_BINGET crosses: the scan would read GET 0, the unpickler GET 0x2e000000 (a clean error)."""
    frame = b"N" + b"\x94" + b"j\x00"  # NONE, MEMOIZE, then LONG_BINGET whose index starts with the frame's last byte
    data = b"\x80\x04\x95" + struct.pack("<Q", len(frame)) + frame + b"\x00\x00\x00" + b"."
    path = write_zip(tmp_path / "frame.pth", data, {})
    raises_bounded(path, r"frame\.pth: archive/data\.pkl: an opcode crosses the end of the frame at byte 15")
    # Frames as pickle protocol 4 writes them read fine.
    sd = _state_dict()
    torch.save(sd, tmp_path / "p4.pth", pickle_protocol=4)
    _assert_same(read_pth(tmp_path / "p4.pth"), sd)
