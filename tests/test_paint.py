"""The unit-painting API (jaxdissect.paint) and its local web page (scripts/paint.py), the page
driven in a real headless Chromium (skipped only when no Chromium binary exists). The server's
handling of malformed requests is in test_paint_server.py, its command line in test_paint_cli.py."""
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.capturing import capture
from jaxdissect.data.zdataset import standard_z_sample
from jaxdissect.paint import (SEED_LIMIT, Stroke, ZSequence, compose, label_colors, label_legend, primary_labels,
                              rect_mask, segmentation_view, z_for_seed)
from paint_helpers import (RuleSegmenter, RunningServer, decode_png, expected_view, png_url, small_generator,
                           small_painter)


@pytest.fixture(scope="module")
def model():
    return small_generator()


@pytest.fixture(scope="module")
def painter(model):
    return small_painter(model)


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


def test_explicit_units_stroke_and_its_checks(painter, model):
    z = jnp.asarray(z_for_seed(1, 64))
    mask = rect_mask((32, 32), 0, 0, 8, 8)  # cells y 0..4, x 0..4
    e = painter.edit([Stroke(mask, None, True, units=(3, 11))])
    _, a0 = capture(model, z, ("layer6",))
    _, a1 = capture(model, z, ("layer6",), edits={"layer6": e})
    before, after = np.asarray(a0["layer6"]), np.asarray(a1["layer6"])
    touched = np.zeros(before.shape, bool)
    touched[:, 0:4, 0:4, [3, 11]] = True
    np.testing.assert_array_equal(after[~touched], before[~touched])
    np.testing.assert_allclose(after[:, 0:4, 0:4][..., [3, 11]], np.broadcast_to(painter.high[[3, 11]], (1, 4, 4, 2)),
                               rtol=1e-6)
    for units, message in [((), "at least one unit"), ((16,), "unknown unit 16: layer layer6 has units 0..15"),
                           ((-1,), "unknown unit -1"), ((2, 2), "unit 2 is given twice"), ((True,), "integers"),
                           ((1.0,), "integers")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            painter.edit([Stroke(mask, None, True, units=units)])
    with pytest.raises(ValueError, match="a concept or units"):
        painter.edit([Stroke(mask, None, True)])


def test_z_sequence_is_the_dissection_sequence_sample_by_sample():
    ref = standard_z_sample(700, 7)  # numpy RandomState(1), the dissection's z
    zs = ZSequence(7, limit=700, every=3)  # odd chunks: 21 normals, so the cached Gaussian must carry over
    for seed in (0, 1, 2, 3, 4, 5, 699, 350, 351, 7, 0):
        np.testing.assert_array_equal(zs(seed), ref[seed:seed + 1])
    np.testing.assert_array_equal(z_for_seed(123, 7), ref[123:124])
    for bad, message in [(-1, "0 <= seed < 700"), (700, "0 <= seed < 700"), (10 ** 12, "0 <= seed < 700"),
                         (True, "must be an integer"), (3.0, "must be an integer"), ("3", "must be an integer")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            zs(bad)
    assert SEED_LIMIT == 100_000
    with pytest.raises(ValueError, match=re.escape(f"0 <= seed < {SEED_LIMIT}")):
        z_for_seed(2_000_000, 7)


def test_primary_labels_takes_the_first_channel_with_a_label():
    seg = np.array([[[[0, 5, 0], [0, 0, 7]],      # channel 0
                     [[2, 3, 0], [0, 4, 0]],      # channel 1
                     [[9, 9, 0], [1, 1, 1]]]])    # channel 2
    np.testing.assert_array_equal(primary_labels(seg), [[[2, 5, 0], [1, 4, 7]]])


def test_label_colors_are_distinct_and_black_for_no_label():
    c = label_colors(700)
    assert c.shape == (700, 3) and c.dtype == np.uint8 and tuple(c[0]) == (0, 0, 0)
    assert len({tuple(x) for x in c}) == 700


def test_label_legend_counts_shares_and_orders_by_change():
    names, cats = ("-", "sky", "grass", "red"), ("-", "object", "object", "color")
    colors = label_colors(4)
    before = np.array([[1, 1, 2, 2], [2, 2, 0, 0]])  # sky 2/8, grass 4/8, none 2/8
    after = np.array([[1, 1, 1, 1], [2, 2, 0, 3]])  # sky 4/8, grass 2/8, none 1/8, red 1/8
    legend = label_legend(before, after, names, cats, colors)
    assert [r["label"] for r in legend] == ["sky", "grass", "no label", "red"]  # |change| .25, .25, .125, .125
    by = {r["label"]: r for r in legend}
    assert (by["sky"]["before"], by["sky"]["after"]) == (0.25, 0.5)
    assert (by["red"]["before"], by["red"]["after"], by["red"]["category"]) == (0.0, 0.125, "color")
    assert by["grass"]["color"] == "#%02x%02x%02x" % tuple(colors[2])
    with pytest.raises(ValueError, match="0..3"):
        label_legend(before, after + 1, names, cats, colors)


def test_segmentation_view_of_the_rule_segmenter_is_computed_by_hand(painter):
    imgs = np.stack([painter.render(z_for_seed(s, 64))[0] for s in (0, 1)])
    view = segmentation_view(RuleSegmenter(), imgs)
    np.testing.assert_array_equal(view, np.stack([expected_view(i) for i in imgs]))
    assert len(np.unique(view)) == 4  # the rules give every label somewhere: the check is not vacuous
    with pytest.raises(ValueError, match="uint8"):
        segmentation_view(RuleSegmenter(), imgs.astype(np.float32))


def test_segmentation_view_with_the_toy_segmenter_at_64_pixels():
    """The embedded segmenter on 64-pixel images (a toy generator may make 64 or 128 px)."""
    from jaxdissect.data.scenes import SCENE_LABELS, Scenes
    from jaxdissect.segment.toy import ToySegmenter

    imgs = Scenes("val", 2, image_size=64).batch([0, 1])["image"]
    seg = ToySegmenter()
    view = segmentation_view(seg, imgs)
    raw = np.asarray(seg.segment(jnp.asarray(imgs.astype(np.float32) / np.float32(127.5) - 1), 1))
    assert view.shape == (2, 64, 64) and raw.shape == (2, 4, 64, 64)
    want = np.zeros((2, 64, 64), np.int32)
    for c in range(3, -1, -1):  # the first channel with a label wins
        want = np.where(raw[:, c] != 0, raw[:, c], want)
    np.testing.assert_array_equal(view, want)
    assert view.max() < len(SCENE_LABELS)


# ---- the server -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(painter):
    painter.render(z_for_seed(0, 64))  # compile before the browser waits on it
    srv = RunningServer(painter, RuleSegmenter())
    yield srv.mod, srv.url
    srv.close()


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
    assert info["seed_limit"] == SEED_LIMIT and info["segmenter"] == "rule" and info["num_units"] == 16
    page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
    assert "<canvas" in page and "/api/render" in page and "http" not in page.split("<script>")[1].split("fetch")[0]
    assert "cdn" not in page.lower() and "<script src" not in page
    assert "128" not in page  # the image size comes from /api/info, never from the page


def test_render_api_matches_the_python_api(server, painter):
    _, url = server
    mask = rect_mask((32, 32), 8, 8, 20, 16)
    status, data = post(url, {"seed": 3, "strokes": [{"mask": png_url(mask), "concept": "sky", "on": True}]})
    assert status == 200, data
    z = z_for_seed(3, 64)
    np.testing.assert_array_equal(decode_png(data["original"]), painter.render(z)[0])
    np.testing.assert_array_equal(decode_png(data["image"]), painter.render(z, [Stroke(mask, "sky", True)])[0])
    status, data = post(url, {"seed": 3, "strokes": [{"mask": png_url(mask), "units": [0, 4], "on": False}]})
    assert status == 200, data
    np.testing.assert_array_equal(decode_png(data["image"]), painter.render(z, [Stroke(mask, None, False, (0, 4))])[0])


def test_render_api_shows_the_segmentation_of_both_images(server, painter):
    _, url = server
    mask = rect_mask((32, 32), 4, 4, 28, 28)
    status, data = post(url, {"seed": 1, "strokes": [{"mask": png_url(mask), "concept": "sky"}]})
    assert status == 200, data
    z = z_for_seed(1, 64)
    views = [expected_view(painter.render(z)[0]), expected_view(painter.render(z, [Stroke(mask, "sky", True)])[0])]
    colors = label_colors(4)
    seg = data["segmentation"]
    assert seg["segmenter"] == "rule"
    np.testing.assert_array_equal(decode_png(seg["original"]), colors[views[0]])
    np.testing.assert_array_equal(decode_png(seg["image"]), colors[views[1]])
    names = ("no label", "sky", "grass", "red")
    got = {r["label"]: (r["before"], r["after"], r["color"]) for r in seg["legend"]}
    want = {names[i]: (float(np.mean(views[0] == i)), float(np.mean(views[1] == i)), "#%02x%02x%02x" % tuple(colors[i]))
            for i in range(4) if (views[0] == i).any() or (views[1] == i).any()}
    assert got == want
    changes = [abs(r["after"] - r["before"]) for r in seg["legend"]]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0.05  # the edit changed the segmentation


def test_without_a_segmenter_the_answer_says_so(painter):
    srv = RunningServer(painter, None)
    try:
        info = json.loads(urllib.request.urlopen(srv.url + "/api/info", timeout=30).read())
        assert info["segmenter"] is None and info["segmentation_channels"] is None
        status, data = post(srv.url, {"seed": 0})
        assert status == 200 and data["segmentation"] is None and data["strokes"] == 0
        np.testing.assert_array_equal(decode_png(data["image"]), painter.render(z_for_seed(0, 64))[0])
    finally:
        srv.close()


@pytest.mark.parametrize("body,message", [
    ({"seed": -1}, "seed must lie in 0 <= seed < 100000"),
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


class PageDom(HTMLParser):
    """Image sources by id, the legend's rows (label, swatch colour, cell texts) and the
    segmentation panel's hidden flag, from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.srcs, self.rows, self.panel_hidden, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("id"):
            self.srcs[a["id"]] = a.get("src")
        elif a.get("id") == "segpanel":
            self.panel_hidden = "hidden" in a
        elif tag == "tr" and "data-label" in a:
            self.rows.append({"label": a["data-label"], "cells": {}, "swatch": None})
        elif tag == "td" and self.rows:
            self._cell = a.get("class")
            self.rows[-1]["cells"][self._cell] = ""
        elif tag == "span" and "swatch" in (a.get("class") or "") and self.rows:
            self.rows[-1]["swatch"] = a.get("style", "")

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell and self.rows:
            self.rows[-1]["cells"][self._cell] += data


def dump_dom(url, tmp_path):
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_page_paints_a_region_and_shows_the_regenerated_image_and_its_segmentation(server, painter, tmp_path):
    _, url = server
    dom, err = dump_dom(f"{url}/#seed=2&concept=tree&on=1&rect=4,6,20,18&apply=1", tmp_path)
    assert 'data-status="done"' in dom, (dom[-2000:], err[-2000:])
    page = PageDom()
    page.feed(dom)
    z = z_for_seed(2, 64)
    # the page's rectangle x 4..20, y 6..18 in image pixels = rect_mask rows 6..18, columns 4..20
    stroke = Stroke(rect_mask((32, 32), 6, 4, 18, 20), "tree", True)
    want = painter.render(z, [stroke])[0]
    np.testing.assert_array_equal(decode_png(page.srcs["result"]), want)
    np.testing.assert_array_equal(decode_png(page.srcs["original"]), painter.render(z)[0])
    assert not np.array_equal(want, painter.render(z)[0])
    assert '<span id="nstrokes">1</span>' in dom
    # the segmentation panel: both segmentations and a legend row per label, as the API gives them
    _, api = post(url, {"seed": 2, "strokes": [{"mask": png_url(stroke.mask), "concept": "tree", "on": True}]})
    seg = api["segmentation"]
    assert page.panel_hidden is False
    assert page.srcs["seg-original"] == seg["original"] and page.srcs["seg-result"] == seg["image"]
    assert [r["label"] for r in page.rows] == [r["label"] for r in seg["legend"]] and len(page.rows) >= 2
    for row, want_row in zip(page.rows, seg["legend"]):
        assert row["cells"]["label"] == want_row["label"] and row["cells"]["cat"] == want_row["category"]
        assert row["cells"]["before"] == f"{100 * want_row['before']:.1f}%"
        assert row["cells"]["after"] == f"{100 * want_row['after']:.1f}%"
        r, g, b = (int(want_row["color"][i:i + 2], 16) for i in (1, 3, 5))
        assert f"rgb({r}, {g}, {b})" in row["swatch"]  # the swatch shows the label's colour
    assert "rule segmenter" in dom and "black is no label" in dom


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_page_names_an_unknown_concept_in_its_address(server, tmp_path):
    _, url = server
    dom, err = dump_dom(f"{url}/#seed=2&concept=unicorn&apply=1", tmp_path)
    assert "data-status=\"error: unknown concept 'unicorn' in the address; concepts: sky, tree\"" in dom, \
        (dom[-2000:], err[-2000:])
