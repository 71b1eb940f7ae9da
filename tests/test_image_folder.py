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
