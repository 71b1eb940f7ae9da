"""read_pth against torch.load on files torch.save wrote, in both serialization formats."""
import collections
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from weight_conversion import PthReadError, read_pth

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
