"""The report layer: masked thumbnails, strips, the concept bar graph, report.json and report.html."""
import json
import math
import os
import re
from html.parser import HTMLParser
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from jaxdissect.report import (concept_bargraph_svg, masked_image, read_report_json, render_report_html,
                               save_unit_images, thumbnail, unit_strip, write_report_html,
                               write_report_json)

SVG = "{http://www.w3.org/2000/svg}"


# ---------------------------------------------------------------- unit images

def test_masked_image_hand_made_6x6():
    # image[y, x] = (10y + x, 10y + x + 100, 10y + x + 200): every pixel distinct, odd values too.
    y, x = np.mgrid[:6, :6]
    image = np.stack([10 * y + x, 10 * y + x + 100, 10 * y + x + 200], -1).astype(np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[3, 3] = mask[3, 4] = True
    # I = inside (image), B = yellow border outside the mask (8-neighbourhood), . = half brightness.
    layout = ["IB....",
              "BB....",
              "..BBBB",
              "..BIIB",
              "..BBBB",
              "......"]
    out = masked_image(image, mask)
    assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
    for r in range(6):
        for c in range(6):
            v = 10 * r + c
            want = {"I": (v, v + 100, v + 200), "B": (255, 255, 0),
                    ".": (v // 2, (v + 100) // 2, (v + 200) // 2)}[layout[r][c]]
            assert tuple(out[r, c]) == want, (r, c, layout[r][c])
    # A few values written out in full: half brightness rounds down.
    assert tuple(out[5, 5]) == (27, 77, 127)
    assert tuple(out[0, 5]) == (2, 52, 102)
    assert tuple(out[3, 4]) == (34, 134, 234)
    # Input untouched.
    assert image[5, 5, 0] == 55


def test_masked_image_empty_and_full_masks():
    image = np.full((4, 5, 3), 201, np.uint8)
    assert (masked_image(image, np.zeros((4, 5), bool)) == 100).all()
    assert (masked_image(image, np.ones((4, 5), bool)) == 201).all()


def test_masked_image_rejects_bad_input():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        masked_image(image, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="mask"):
        masked_image(image, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        masked_image(image.astype(np.float32), np.zeros((4, 4), bool))


def test_unit_strip_geometry():
    images = [np.full((100, 100, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    strip = unit_strip(images)
    assert strip.shape == (100, 520, 3) and strip.dtype == np.uint8
    for i in range(5):
        assert (strip[:, 105 * i:105 * i + 100] == 10 * (i + 1)).all()
        if i < 4:
            assert (strip[:, 105 * i + 100:105 * i + 105] == 255).all()
    assert unit_strip(images[:3], gap=0).shape == (100, 300, 3)
    assert unit_strip(images[:1]).shape == (100, 100, 3)
    with pytest.raises(ValueError, match="image 1"):
        unit_strip([images[0], np.zeros((50, 100, 3), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        unit_strip([])


def test_thumbnail():
    constant = np.full((37, 53, 3), 77, np.uint8)
    t = thumbnail(constant, 20)
    assert t.shape == (20, 20, 3) and t.dtype == np.uint8 and (t == 77).all()
    ramp = np.repeat(np.repeat(np.linspace(0, 250, 10).astype(np.uint8)[None, :, None], 10, 0), 3, 2)
    t = thumbnail(ramp, 40)
    assert (np.diff(t[:, :, 0].astype(int), axis=1) >= 0).all()  # bilinear keeps a ramp monotone
    assert len(np.unique(t[0, :, 0])) > 10  # and interpolates between the 10 source values
    mask = np.array([[True, False], [False, True]])
    m = thumbnail(mask, 4)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, np.kron(mask, np.ones((2, 2), bool)))


def test_save_unit_images_writes_atomically_and_skips_existing(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (10, 52, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    strips = {0: smooth, 7: 255 - smooth}
    written = save_unit_images(tmp_path, strips)
    assert sorted(written) == sorted(str(tmp_path / "image" / f"unit{u}.jpg") for u in (0, 7))
    for u, strip in strips.items():
        back = np.asarray(Image.open(tmp_path / "image" / f"unit{u}.jpg").convert("RGB"))
        assert back.shape == (100, 520, 3)
        assert np.abs(back.astype(int) - strip.astype(int)).mean() < 4
    assert sorted(os.listdir(tmp_path / "image")) == ["unit0.jpg", "unit7.jpg"]  # no temporaries left
    before = (tmp_path / "image" / "unit0.jpg").read_bytes()
    assert save_unit_images(tmp_path, {0: np.zeros((100, 520, 3), np.uint8), 3: smooth}) == [
        str(tmp_path / "image" / "unit3.jpg")]
    assert (tmp_path / "image" / "unit0.jpg").read_bytes() == before


# ---------------------------------------------------------------- bar graph

UNIT_LABELS = [
    ("tree", "object", 0.10),
    ("sky", "object", 0.20),
    ("wheel", "part", 0.05),
    ("sky", "object", 0.30),
    ("red", "color", 0.30),
    ("wood", "material", 0.04),       # not above min_iou: left out
    ("grass", "object", 0.01),        # left out
    ('a<b&"c', "material", 0.50),
    ("sky", "object", 0.07),
    ("nothing", "object", float("nan")),  # left out
    ("window", "part", 0.06),
    ("floor", "object", 0.90),
    ("wheel", "part", 0.41),
]
# Categories in order, then descending count, ties in order of first appearance.
EXPECTED_BARS = [("sky", 3), ("tree", 1), ("floor", 1), ("wheel", 2), ("window", 1), ('a<b&"c', 1), ("red", 1)]


def parse_svg(text):
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    return root


def test_bargraph_bars_order_heights_and_escaping():
    text = concept_bargraph_svg(UNIT_LABELS, min_iou=0.04)
    assert 'a<b&"c' not in text and "a&lt;b&amp;" in text
    root = parse_svg(text)
    bars = root.findall(f".//{SVG}rect[@class='bar']")
    labels = [t.text for t in root.findall(f".//{SVG}text[@class='label']")]
    assert labels == [label for label, _ in EXPECTED_BARS]
    assert len(bars) == len(EXPECTED_BARS)
    heights = [float(b.get("height")) for b in bars]
    unit = heights[0] / 3
    assert heights == pytest.approx([n * unit for _, n in EXPECTED_BARS], abs=1e-3)  # 6 digits in the SVG
    assert heights[0] == pytest.approx(80)  # the tallest bar is barheight
    # bars sit on one baseline, left to right
    assert len({float(b.get("y")) + float(b.get("height")) for b in bars}) == 1
    xs = [float(b.get("x")) for b in bars]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # dark colours by category position in (object, part, material, texture, color)
    assert [b.get("fill") for b in bars] == ["#4B4CBF"] * 3 + ["#55B05B"] * 2 + ["#50BDAC", "#F0883B"]
    backgrounds = root.findall(f".//{SVG}rect[@class='category']")
    assert [r.get("fill") for r in backgrounds] == ["#B6B6F2", "#B6F2BA", "#A5E5DB", "#F2CFB6"]
    captions = [t.text for t in root.findall(f".//{SVG}text[@class='caption']")]
    assert captions == ["3 objects", "2 parts", "1 material", "1 color"]
    ticks = [t.text for t in root.findall(f".//{SVG}text[@class='tick']")]
    assert ticks == ["1", "2", "3"]
    assert "units" in [t.text for t in root.iter(f"{SVG}text")]
    for t in root.findall(f".//{SVG}text[@class='label']"):
        assert "rotate(-45)" in t.get("transform")


def test_bargraph_min_iou_and_other_categories():
    root = parse_svg(concept_bargraph_svg(UNIT_LABELS, min_iou=0.25))
    assert [t.text for t in root.findall(f".//{SVG}text[@class='label']")] == ["sky", "floor", "wheel", 'a<b&"c', "red"]
    root = parse_svg(concept_bargraph_svg([("x", "scene", 0.5), ("y", "object", 0.5), ("x", "scene", 0.6)],
                                          category_order=("object", "part")))
    assert [t.text for t in root.findall(f".//{SVG}text[@class='label']")] == ["y", "x"]
    assert [t.text for t in root.findall(f".//{SVG}text[@class='caption']")] == ["1 object", "1 scene"]


def test_bargraph_empty_is_valid_svg():
    root = parse_svg(concept_bargraph_svg([("sky", "object", 0.01)]))
    assert root.findall(f".//{SVG}rect[@class='bar']") == []
    assert root.find(f".//{SVG}text[@class='empty']") is not None
    with pytest.raises(ValueError, match="entry 0"):
        concept_bargraph_svg([("sky", 0.5)])


# ---------------------------------------------------------------- report.json

def units_with_odd_values():
    return [
        {"image": "image/unit0.jpg", "unit": 0, "iou": 0.25, "label": "sky", "cat": "object",
         "threshold": np.float32(1.5), "top": [{"label": "NaN", "iou": float("nan")}]},
        {"image": "image/unit1.jpg", "unit": np.int64(1), "iou": float("nan"), "label": "NaN", "cat": "part",
         "threshold": float("inf")},
        {"image": "image/unit2.jpg", "unit": 2, "iou": np.float64(0.125), "label": "wood", "cat": "material",
         "threshold": -math.inf},
    ]


def test_report_json_round_trip_with_nan_and_inf(tmp_path):
    path = tmp_path / "report.json"
    write_report_json(path, {"name": "toy scenes exact", "image": "concepts.svg"}, units_with_odd_values())
    text = path.read_text()

    def no_constants(name):
        raise AssertionError(f"bare {name} in report.json")

    raw = json.loads(text, parse_constant=no_constants)  # strict JSON: no bare NaN / Infinity
    assert text.startswith('{\n "header": {\n  "name": "toy scenes exact"')  # indent=1
    assert raw["units"][1]["iou"] == "NaN" and raw["units"][1]["threshold"] == "Infinity"
    assert raw["units"][2]["threshold"] == "-Infinity"
    assert list(raw["units"][0])[:5] == ["image", "unit", "iou", "label", "cat"]

    back = read_report_json(path)
    assert back["header"] == {"name": "toy scenes exact", "image": "concepts.svg"}
    u0, u1, u2 = back["units"]
    assert u0["iou"] == 0.25 and u0["threshold"] == 1.5 and math.isnan(u0["top"][0]["iou"])
    assert u0["top"][0]["label"] == "NaN"  # a label is text, even this one
    assert math.isnan(u1["iou"]) and u1["threshold"] == math.inf and u1["label"] == "NaN"
    assert u1["unit"] == 1 and isinstance(u1["unit"], int)
    assert u2["threshold"] == -math.inf and u2["iou"] == 0.125


def test_report_json_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"unit record 0 lacks \['label'\]"):
        write_report_json(tmp_path / "r.json", {"name": "n"}, [{"image": "i", "unit": 0, "iou": 0.1, "cat": "c"}])
    assert not (tmp_path / "r.json").exists()
    (tmp_path / "bad.json").write_text('{"header": ')
    with pytest.raises(ValueError, match="bad.json"):
        read_report_json(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('[1, 2]')
    with pytest.raises(ValueError, match="not a dissection report"):
        read_report_json(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_report_json(tmp_path / "missing.json")


# ---------------------------------------------------------------- report.html

class ScriptCollector(HTMLParser):
    """The text of each <script> element and the ids of elements, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.scripts, self.ids, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "script":
            self._in = attrs
            self.scripts.append((attrs, ""))

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def make_report():
    units = [{"image": f"image/unit{u}.jpg", "unit": u, "iou": iou, "label": label, "cat": cat}
             for u, (label, cat, iou) in enumerate(UNIT_LABELS)]
    units[2]["label"] = "</script><script>alert(1)</script>"
    return {"header": {"name": "toy <scenes> & exact", "image": "concepts.svg", "layer": "conv<5>",
                       "skipped_images": {"bad <1>.jpg": "truncated"}}, "units": units}


def embedded_data(page):
    parser = ScriptCollector()
    parser.feed(page)
    data = [text for attrs, text in parser.scripts if attrs.get("type") == "application/json"]
    assert len(data) == 1
    return json.loads(data[0]), parser


def test_html_embeds_data_and_escapes_script_close(tmp_path):
    report = make_report()
    path = tmp_path / "report.html"
    write_report_html(path, report, title="toy-scenes-exact-10")
    page = path.read_text(encoding="utf-8")
    # Only the page's own two script elements close; the label cannot end the data block.
    assert page.lower().count("</script") == 2
    data, parser = embedded_data(page)
    assert len(parser.scripts) == 2
    assert data["units"][2]["label"] == "</script><script>alert(1)</script>"
    assert [u["label"] for u in data["units"]] == [u["label"] for u in report["units"]]
    assert data["units"][9]["iou"] == "NaN"  # strict JSON inside the page too
    assert data["header"]["name"] == "toy <scenes> & exact"
    assert "<h1 id=\"report-name\">toy &lt;scenes&gt; &amp; exact</h1>" in page
    assert "<title>toy-scenes-exact-10</title>" in page
    # Self-contained: nothing fetched from elsewhere, data never put in as HTML.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "fetch(" not in page and "XMLHttpRequest" not in page and "innerHTML" not in page
    # Other header fields are listed, escaped; lists and dicts folded.
    assert "<b>layer</b> conv&lt;5&gt;" in page
    assert "<summary>skipped_images (1)</summary>" in page and "bad &lt;1&gt;.jpg" in page
    # No concepts.svg beside the page: the bar graph is linked.
    assert '<img src="concepts.svg"' in page


def test_html_inlines_bargraph_and_appends_sections(tmp_path):
    report = make_report()
    svg = concept_bargraph_svg([(u["label"], u["cat"], u["iou"]) for u in report["units"]])
    (tmp_path / "concepts.svg").write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + svg)
    report["sections"] = [{"title": "Ablation <1>", "html": "<p id='extra-block'>trusted <b>html</b></p>"}]
    write_report_html(tmp_path / "report.html", report, title="t")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert svg in page and "<?xml" not in page
    assert "<h2>Ablation &lt;1&gt;</h2>" in page
    _, parser = embedded_data(page)
    ids = parser.ids
    assert ids.index("units") < ids.index("extra-block")  # below the cards
    with pytest.raises(ValueError, match="section 0"):
        render_report_html({**report, "sections": [{"title": "x"}]}, "t")
    with pytest.raises(ValueError, match="unit record 1"):
        render_report_html({"units": [report["units"][0], {"unit": 3}]}, "t")
