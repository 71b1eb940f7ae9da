"""The unit-painting API (jaxdissect.paint) and its local web page (scripts/paint.py), the page
driven in a real headless Chromium (skipped only when no Chromium binary exists)."""
import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdissect.capture import capture
from jaxdissect.data.scenes import SCENE_LABELS
from jaxdissect.models import get_spec
from jaxdissect.models.registry import LoadedModel
from jaxdissect.paint import Painter, Stroke, compose, rect_mask, z_for_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE, SKY, DOOR = (SCENE_LABELS.index(n) for n in ("tree", "sky", "door"))
HIGH = 3.0


def load_script():
    spec = importlib.util.spec_from_file_location("paint_script", os.path.join(ROOT, "scripts", "paint.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model():
    """The toy generator architecture, small (layer6 is 16x16 with 16 units; images 32x32), random weights."""
    spec = get_spec("toy_generator")
    cfg = {"z_dim": 64, "channels": [32, 32, 16, 8]}
    module = spec.build(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64)))  # random weights without
    rng = np.random.default_rng(1)  # compiling the initializers (slow on a busy CPU)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    return LoadedModel(spec.name, spec.kind, module, variables, cfg, None, spec.normalization, "layer6",
                       tuple(f"layer{i}" for i in range(1, 9)), None)


@pytest.fixture(scope="module")
def painter(model):
    iou = np.zeros((len(SCENE_LABELS), 16))
    iou[TREE, [2, 5, 7]] = [0.3, 0.2, 0.1]  # tree units, best first: 2, 5, 7
    iou[SKY, [0, 1]] = [0.5, 0.4]
    iou[DOOR, 9] = 0.01  # below min_iou: not offered as a concept
    high = np.linspace(1.0, 2.5, 16)
    return Painter(model, "layer6", iou, high, SCENE_LABELS.names, SCENE_LABELS.categories, units_per_concept=3)


def test_concepts_and_units(painter):
    cs = {c["name"]: c for c in painter.concepts()}
    assert set(cs) == {"tree", "sky"}
    assert cs["tree"]["units"] == [2, 5, 7] and cs["tree"]["category"] == "object"
    np.testing.assert_array_equal(painter.units_for("sky")[:2], [0, 1])
    with pytest.raises(KeyError, match="unknown concept 'unicorn'"):
        painter.units_for("unicorn")


def test_layer_mask_is_the_painted_fraction_of_each_cell(painter):
    m = np.zeros((32, 32), np.float32)
    m[0:2, 0:2] = 1  # cell (0, 0) fully painted (cells are 2x2 pixels)
    m[2, 2] = 1  # a quarter of cell (1, 1)
    lm = painter.layer_mask(m)
    assert lm.shape == (16, 16) and lm[0, 0] == 1 and lm[1, 1] == 0.25 and lm.sum() == 1.25
    with pytest.raises(ValueError, match=r"mask must have the image's shape \(32, 32\)"):
        painter.layer_mask(np.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        painter.layer_mask(m * 2)


def test_render_without_strokes_is_the_generator(painter, model):
    z = z_for_seed(4, 64)
    out, _ = capture(model, jnp.asarray(z))
    want = np.clip(np.floor((np.asarray(out) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(painter.render(z), want)
    np.testing.assert_array_equal(z, np.random.RandomState(1).standard_normal(5 * 64).reshape(5, 64)[4:5].astype(np.float32))


def test_strokes_touch_only_the_painted_cells_and_concept_units(painter, model):
    z = jnp.asarray(z_for_seed(0, 64))
    mask = rect_mask((32, 32), 4, 6, 10, 12)  # cells y 2..4, x 3..5
    _, a0 = capture(model, z, ("layer5", "layer6"))
    for on in (True, False):
        e = painter.edit([Stroke(mask, "tree", on)])
        _, a1 = capture(model, z, ("layer5", "layer6"), edits={"layer6": e})
        np.testing.assert_array_equal(np.asarray(a1["layer5"]), np.asarray(a0["layer5"]))
        before, after = np.asarray(a0["layer6"]), np.asarray(a1["layer6"])
        touched = np.zeros(before.shape, bool)
        touched[:, 2:5, 3:6, [2, 5, 7]] = True
        np.testing.assert_array_equal(after[~touched], before[~touched])
        want = painter.high[[2, 5, 7]] if on else np.zeros(3)
        np.testing.assert_allclose(after[:, 2:5, 3:6][..., [2, 5, 7]], np.broadcast_to(want, (1, 3, 3, 3)), rtol=1e-6)
    assert not np.array_equal(painter.render(z, [Stroke(mask, "tree", True)]), painter.render(z))


def test_compose_equals_applying_edits_in_order(painter):
    rng = np.random.default_rng(0)
    m1 = (rng.random((32, 32)) < 0.3).astype(np.float32)
    m2 = (rng.random((32, 32)) < 0.5).astype(np.float32)
    edits = [painter.stroke_edit(Stroke(m1, "tree", True)), painter.stroke_edit(Stroke(m2, "tree", False)),
             painter.stroke_edit(Stroke(m1, "sky", True))]
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 16)), jnp.float32)
    seq = x
    for e in edits:
        seq = e(seq)
    np.testing.assert_allclose(np.asarray(compose(edits)(x)), np.asarray(seq), rtol=1e-5, atol=1e-5)
    untouched = np.asarray(compose(edits).ablation) == 0
    np.testing.assert_array_equal(np.asarray(compose(edits)(x))[:, untouched], np.asarray(x)[:, untouched])


# ---- the server -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(painter):
    mod = load_script()
    painter.render(z_for_seed(0, 64))  # compile before the browser waits on it
    srv = mod.make_server(painter, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield mod, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def png_url(mask):
    buf = io.BytesIO()
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[mask > 0] = 255
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_png(url):
    assert url.startswith("data:image/png;base64,"), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def post(url, body):
    req = urllib.request.Request(url + "/api/render", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_is_local_and_serves_info_and_page(server, painter):
    mod, url = server
    assert url.startswith("http://127.0.0.1:")
    info = json.loads(urllib.request.urlopen(url + "/api/info", timeout=30).read())
    assert info["image_size"] == [32, 32] and info["layer_size"] == [16, 16] and info["layer"] == "layer6"
    assert [c["name"] for c in info["concepts"]] == ["sky", "tree"]
    page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
    assert "<canvas" in page and "/api/render" in page and "http" not in page.split("<script>")[1].split("fetch")[0]
    assert "cdn" not in page.lower() and "<script src" not in page


def test_render_api_matches_the_python_api(server, painter):
    _, url = server
    mask = rect_mask((32, 32), 8, 8, 20, 16)
    status, data = post(url, {"seed": 3, "strokes": [{"mask": png_url(mask), "concept": "sky", "on": True}]})
    assert status == 200, data
    z = z_for_seed(3, 64)
    np.testing.assert_array_equal(decode_png(data["original"]), painter.render(z)[0])
    np.testing.assert_array_equal(decode_png(data["image"]), painter.render(z, [Stroke(mask, "sky", True)])[0])


@pytest.mark.parametrize("body,message", [
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": 0, "strokes": [{"mask": "x", "concept": "sky"}]}, "stroke 0: mask must be a PNG data URL"),
    ({"seed": 0, "strokes": [{"mask": png_url(np.ones((8, 8))), "concept": "sky"}]}, "mask is 8x8, the image is 32x32"),
    ({"seed": 0, "strokes": [{"mask": png_url(np.ones((32, 32))), "concept": "unicorn"}]}, "unknown concept 'unicorn'"),
    ({"seed": 0, "strokes": "no"}, "strokes must be a list"),
])
def test_render_api_rejects_bad_requests(server, body, message):
    _, url = server
    status, data = post(url, body)
    assert status == 400 and message in data["error"], data


# ---- the page in a headless browser --------------------------------------------------------------
def find_chromium():
    for name in (os.environ.get("JAXDISSECT_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_page_paints_a_region_and_shows_the_regenerated_image(server, painter, tmp_path):
    _, url = server
    page = f"{url}/#seed=2&concept=tree&on=1&rect=4,6,20,18&apply=1"
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--dump-dom", page]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert 'data-status="done"' in dom, (dom[-2000:], done.stderr[-2000:])
    srcs = dict(re.findall(r'<img id="(original|result)"[^>]*?src="([^"]+)"', dom))
    if len(srcs) < 2:  # attribute order may differ
        srcs = {m[1]: m[0] for m in re.findall(r'<img[^>]*?src="([^"]+)"[^>]*?id="(original|result)"', dom)}
    z = z_for_seed(2, 64)
    # the page's rectangle x 4..20, y 6..18 in image pixels = rect_mask rows 6..18, columns 4..20
    want = painter.render(z, [Stroke(rect_mask((32, 32), 6, 4, 18, 20), "tree", True)])[0]
    np.testing.assert_array_equal(decode_png(srcs["result"]), want)
    np.testing.assert_array_equal(decode_png(srcs["original"]), painter.render(z)[0])
    assert not np.array_equal(want, painter.render(z)[0])
    assert '<span id="nstrokes">1</span>' in dom
