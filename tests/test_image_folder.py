"""Image folders (Places-style), their download, and dissection with a segmenter and bad files."""
import functools
import hashlib
import http.server
import io
import json
import os
import threading
import zipfile

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdissect.data import image_folder, places
from jaxdissect.dissect import DissectConfig, dissect, sources
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel
from jaxdissect.segment.base import SegmentLabels


def make_folder(root, n=12, corrupt=("b/bad.jpg",)):
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = "ab"[i % 2]
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        arr = rng.integers(0, 255, size=(40 + i, 30 + 2 * i, 3), dtype=np.uint8)
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        Image.fromarray(arr).convert(mode).save(os.path.join(root, cls, f"img{i:02d}.png"))
    for c in corrupt:
        with open(os.path.join(root, c), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_image_folder_order_sizes_and_corrupt_files(tmp_path):
    make_folder(tmp_path)
    ds = image_folder.ImageFolder(tmp_path, crop=24, resize=32)
    assert len(ds) == 13 and ds.classes == ["a", "b"]
    import random

    expected = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    random.Random(1).shuffle(expected)
    assert ds.files == expected  # the original's order: sorted, then random.Random(1)
    b = ds.batch(range(len(ds)))
    assert b["image"].shape == (13, 24, 24, 3) and b["image"].dtype == np.uint8
    bad = ds.files.index(os.path.join("b", "bad.jpg"))
    assert not b["ok"][bad] and b["ok"].sum() == 12
    assert "bad.jpg" in b["errors"][bad]
    with pytest.raises(FileNotFoundError):
        image_folder.ImageFolder(tmp_path / "missing")


class ColorSegmenter:
    """A stand-in segmenter: label 1 where the red channel is bright, 2 where green is."""

    labels = SegmentLabels(("-", "reddish", "greenish"), ("-", "color", "color"), ("color",))

    def segment(self, images, downsample=1):
        small = images[:, downsample // 2::downsample, downsample // 2::downsample]
        red = jnp.where(small[..., 0] > 0.3, 1, 0)
        green = jnp.where(small[..., 1] > 0.3, 2, 0)
        return jnp.stack([red, green], axis=1).astype(jnp.int32)


class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
        mean, std = jnp.asarray(IMAGENET_NORMALIZATION["mean"]), jnp.asarray(IMAGENET_NORMALIZATION["std"])
        rgb = (x * std + mean) * 2 - 1
        h = nn.avg_pool(rgb, (4, 4), (4, 4))
        h = Layer(name="probe")(h)
        return h.mean((1, 2))


class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def test_dissect_folder_with_segmenter_skips_corrupt_images(tmp_path):
    make_folder(tmp_path / "imgs")
    model = LoadedModel("probe", "classifier", Probe(), {}, {}, (32, 32), IMAGENET_NORMALIZATION, "probe",
                        ("probe",), None)
    cfg = DissectConfig(dataset=str(tmp_path / "imgs"), seg="color", outdir=str(tmp_path / "out"), batch_size=4,
                        progress=False, quantile=0.2, thumbsize=16, topk=3, devices=2)
    [r] = dissect(cfg, model=model, source=sources.FolderSource(tmp_path / "imgs", crop=32),
                  segmenter=ColorSegmenter())
    # unit 0 reads the red channel and unit 1 the green one: each finds its colour.
    assert r.label_names[r.best_label[0]] == "reddish"
    assert r.label_names[r.best_label[1]] == "greenish"
    report = json.load(open(os.path.join(r.directory, "report.json")))
    assert list(report["header"]["skipped_images"].values())[0].startswith(os.path.join("b", "bad.jpg"))


def serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_places_download_unpacks_once(tmp_path, monkeypatch):
    make_folder(tmp_path / "src" / "val", corrupt=())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for d, _, files in os.walk(tmp_path / "src"):
            for f in files:
                full = os.path.join(d, f)
                z.write(full, os.path.relpath(full, tmp_path / "src"))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "places_val.zip").write_bytes(buf.getvalue())
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(places.PLACES_MD5, "val", hashlib.md5(buf.getvalue()).hexdigest())
    server = serve(tmp_path / "www")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/places_val.zip"
        root = places.ensure_places_val(url=url)
    finally:
        server.shutdown()
    assert len(image_folder.find_images(root)) == 12
    assert places.ensure_places_val(url="http://127.0.0.1:9/unreachable") == root  # cached: no download


def test_places_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "places_val.zip").write_bytes(b"not the published file")
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "cache"))
    server = serve(tmp_path / "www")
    from weight_conversion.errors import DownloadError

    try:
        with pytest.raises(DownloadError, match="checksum"):
            places.ensure_places_val(url=f"http://127.0.0.1:{server.server_address[1]}/places_val.zip")
    finally:
        server.shutdown()
    assert not os.path.exists(places.places_dir())
    leftovers = [f for d, _, fs in os.walk(tmp_path / "cache") for f in fs]
    assert leftovers == []


# --- names whatever their bytes, every pixel format, folders with nothing readable ---

def test_display_name_is_printable_text_whatever_the_bytes():
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # latin-1 bytes: not UTF-8
    assert image_folder.display_name(name) == "caf\\xe9-\\xff.jpg"
    assert image_folder.display_name("tab\there\nand\x1b.png") == "tab\\there\\nand\\x1b.png"
    assert image_folder.display_name("été/雪.jpg") == "été/雪.jpg"  # valid UTF-8 stays as it is
    assert image_folder.display_name("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    for s in (name, "x\ud800"):
        image_folder.display_name(s).encode("utf-8")  # strict: never raises


def non_utf8_folder(root):
    """Folder whose names are not UTF-8: class b'\\xfe', a readable b'caf\\xe9.png', a corrupt b'\\xff.jpg'."""
    cls = os.path.join(os.fsencode(str(root)), b"\xfe")
    os.makedirs(cls)
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(os.path.join(cls, b"caf\xe9.png"))
    with open(os.path.join(cls, b"\xff.jpg"), "wb") as f:
        f.write(b"\xff\xd8 broken")


def test_non_utf8_file_names_are_reported_as_text(tmp_path):
    non_utf8_folder(tmp_path)
    ds = image_folder.ImageFolder(tmp_path, crop=8, resize=8)
    good = ds.files.index(os.fsdecode(b"\xfe/caf\xe9.png"))
    bad = ds.files.index(os.fsdecode(b"\xfe/\xff.jpg"))
    b = ds.batch([good, bad])
    assert b["ok"].tolist() == [True, False]
    assert (b["image"][0] == 77).all()  # the file opens under its own bytes
    assert ds.name(good) == "\\xfe/caf\\xe9.png" and ds.classes == ["\\xfe"]
    message = b["errors"][bad]
    assert message.startswith("\\xfe/\\xff.jpg: ")
    message.encode("utf-8")  # strict: the report can write it
    assert json.loads(json.dumps(message, ensure_ascii=False)) == message


def test_report_is_written_with_a_non_utf8_unreadable_file(tmp_path):
    make_folder(tmp_path / "imgs", corrupt=())
    with open(os.path.join(os.fsencode(str(tmp_path / "imgs" / "a")), b"\xff.jpg"), "wb") as f:
        f.write(b"junk")
    model = LoadedModel("probe", "classifier", Probe(), {}, {}, (32, 32), IMAGENET_NORMALIZATION, "probe",
                        ("probe",), None)
    cfg = DissectConfig(dataset=str(tmp_path / "imgs"), seg="color", outdir=str(tmp_path / "out"), batch_size=4,
                        progress=False, quantile=0.2, thumbsize=16, topk=3, devices=2)
    [r] = dissect(cfg, model=model, source=sources.FolderSource(tmp_path / "imgs", crop=32),
                  segmenter=ColorSegmenter())
    skipped = json.load(open(os.path.join(r.directory, "report.json")))["header"]["skipped_images"]
    assert [m.split(":")[0] for m in skipped.values()] == [os.path.join("a", "\\xff.jpg")]
    html = open(os.path.join(r.directory, "report.html"), encoding="utf-8").read()
    assert "unit" in html


def _png16(path, array):
    """Write a 16-bit PNG (gray (H, W) or RGB (H, W, 3) uint16) byte by byte, as other tools write it."""
    import struct
    import zlib

    h, w = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    gray = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    _png16(tmp_path / "g.png", gray)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode.startswith("I")
    out = image_folder.load_image(str(tmp_path / "g.png"), 16, 16)
    expected = np.round(gray / 257.0).astype(np.uint8)  # 65535 -> 255, linear
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    rgb = np.stack([gray, 65535 - gray, np.full_like(gray, 32768)], -1)
    _png16(tmp_path / "c.png", rgb)
    out = image_folder.load_image(str(tmp_path / "c.png"), 16, 16)
    assert np.abs(out.astype(int) - np.round(rgb / 257.0)).max() <= 1  # PIL keeps the high byte


def test_integer_and_float_images_scale_over_their_range_or_are_refused():
    ramp = np.arange(0, 65536, 257, dtype=np.int32).reshape(16, 16)
    out = np.asarray(image_folder.to_rgb(Image.fromarray(ramp, "I")))
    np.testing.assert_array_equal(out[..., 1], np.round(ramp / 257.0))
    with pytest.raises(ValueError, match="range is unknown"):
        image_folder.to_rgb(Image.fromarray(ramp * 2, "I"))
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_array_equal(np.asarray(image_folder.to_rgb(Image.fromarray(f, "F")))[..., 2],
                                  np.round(f.astype(np.float64) * 255))
    with pytest.raises(ValueError, match="range is unknown"):
        image_folder.to_rgb(Image.fromarray(f * 3, "F"))


def test_other_modes_convert_sensibly():
    rgb = lambda im: np.asarray(image_folder.to_rgb(im)).astype(int)  # noqa: E731
    assert rgb(Image.new("L", (2, 2), 90))[0, 0].tolist() == [90, 90, 90]
    assert rgb(Image.new("1", (2, 2), 1))[0, 0].tolist() == [255, 255, 255]
    assert rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))[0, 0].tolist() == [255, 0, 0]  # red ink
    # transparency shows the white background, partial alpha blends with it
    assert rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0)))[0, 0].tolist() == [255, 255, 255]
    assert np.abs(rgb(Image.new("RGBA", (2, 2), (0, 0, 200, 128)))[0, 0] - [127, 127, 227]).max() <= 1
    assert rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255)))[0, 0].tolist() == [10, 20, 30]
    assert rgb(Image.new("LA", (2, 2), (40, 0)))[0, 0].tolist() == [255, 255, 255]
    assert rgb(Image.new("LA", (2, 2), (40, 255)))[0, 0].tolist() == [40, 40, 40]
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # colour 0 (red) is transparent
    assert rgb(pal)[0].tolist() == [[255, 255, 255], [0, 0, 255]]
    del pal.info["transparency"]
    assert rgb(pal)[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_folder_with_nothing_readable_is_detectable(tmp_path):
    for name in ("a.jpg", "b.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    ds = image_folder.ImageFolder(tmp_path, crop=8, resize=8)
    b = ds.batch(range(len(ds)))
    assert not b["ok"].any() and len(b["errors"]) == 3
    assert (ds.readable_count, ds.unreadable_count) == (0, 3)
    Image.new("RGB", (4, 4)).save(tmp_path / "d.png")
    ds = image_folder.ImageFolder(tmp_path, crop=8, resize=8)
    ds.batch(range(len(ds)))
    ds.batch(range(len(ds)))  # read twice: counted once
    assert (ds.readable_count, ds.unreadable_count) == (1, 3)
