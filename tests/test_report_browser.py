"""report.html in a real headless Chromium, from a file:// URL: cards, sorting and filtering.

Skipped only when no Chromium binary exists (Debian: apt-get install -y chromium).
"""
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxdissect.report import concept_bargraph_svg, save_unit_images, write_report_html, write_report_json
from jaxdissect.report.report_json import read_report_json


def find_chromium():
    candidates = [os.environ.get("JAXDISSECT_CHROMIUM", ""), "chromium", "chromium-browser",
                  "google-chrome", "google-chrome-stable"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")

# (label, category, iou) of units 0..6
UNITS = [
    ("sky", "object", 0.31),
    ("wheel", "part", 0.08),
    ("sky", "object", 0.12),
    ("</script><b>x</b>", "object", 0.50),
    ("wood", "material", 0.05),
    ("car", "object", 0.20),
    ("red", "color", float("nan")),
]


class Cards(HTMLParser):
    """Unit cards in document order: unit, category, hidden flag and the texts of their spans."""

    def __init__(self):
        super().__init__()
        self.cards, self.shown, self._span, self._depth = [], None, None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" and "unit-card" in (attrs.get("class") or "").split():
            self.cards.append({"unit": int(attrs["data-unit"]), "cat": attrs["data-cat"],
                               "hidden": "hidden" in attrs, "spans": {}, "img": None})
        elif self.cards and tag == "img":
            self.cards[-1]["img"] = attrs.get("src")
        if tag == "span":
            self._span = attrs.get("class") or attrs.get("id")

    def handle_data(self, data):
        if self._span == "shown":
            self.shown = data
        elif self._span and self.cards:
            self.cards[-1]["spans"][self._span] = self.cards[-1]["spans"].get(self._span, "") + data

    def handle_endtag(self, tag):
        if tag == "span":
            self._span = None


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    save_unit_images(out, {u: rng.integers(0, 256, (20, 104, 3), dtype=np.uint8) for u in range(len(UNITS))})
    units = [{"image": f"image/unit{u}.jpg", "unit": u, "iou": iou, "label": label, "cat": cat}
             for u, (label, cat, iou) in enumerate(UNITS)]
    (out / "concepts.svg").write_text(concept_bargraph_svg(UNITS))
    write_report_json(out / "report.json", {"name": "browser test", "image": "concepts.svg"}, units)
    write_report_html(out / "report.html", read_report_json(out / "report.json"), title="browser-test")
    return out


def dump_dom(page, fragment, tmp_path):
    url = page.as_uri() + ("#" + fragment if fragment else "")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = Cards()
    parser.feed(done.stdout)
    assert parser.cards, "no unit cards in the dumped DOM:\n" + done.stdout[:2000]
    return parser


def test_default_shows_seven_cards_by_iou(report_dir, tmp_path):
    dom = dump_dom(report_dir / "report.html", "", tmp_path)
    cards = dom.cards
    assert len(cards) == 7 and not any(c["hidden"] for c in cards)
    # IoU descending, NaN last
    assert [c["unit"] for c in cards] == [3, 0, 5, 2, 1, 4, 6]
    by_unit = {c["unit"]: c for c in cards}
    for u, (label, cat, iou) in enumerate(UNITS):
        spans = by_unit[u]["spans"]
        assert spans["label"] == label  # shown as text, not parsed as HTML
        assert spans["cat"] == cat and by_unit[u]["cat"] == cat
        assert spans["unit"] == f"unit {u}"
        assert spans["iou"] == ("IoU NaN" if iou != iou else f"IoU {iou:.4f}")
        assert by_unit[u]["img"] == f"image/unit{u}.jpg"
    assert dom.shown == "7 of 7 units"


def test_sort_by_unit(report_dir, tmp_path):
    dom = dump_dom(report_dir / "report.html", "sort=unit", tmp_path)
    assert [c["unit"] for c in dom.cards] == list(range(7))
    assert not any(c["hidden"] for c in dom.cards)


def test_sort_by_label_and_filter_category(report_dir, tmp_path):
    dom = dump_dom(report_dir / "report.html", "sort=label&cat=object", tmp_path)
    assert len(dom.cards) == 7
    visible = [c["unit"] for c in dom.cards if not c["hidden"]]
    hidden = sorted(c["unit"] for c in dom.cards if c["hidden"])
    # objects by label ('</script>...' < 'car' < 'sky'), ties by IoU descending
    assert visible == [3, 5, 0, 2]
    assert hidden == [1, 4, 6]
    assert dom.shown == "4 of 7 units"


@pytest.fixture(scope="module")
def explained_report(tmp_path_factory):
    """A dissection-like page: a labelled, an unlabelled and a dead unit, with runner-up labels."""
    out = tmp_path_factory.mktemp("explained")
    rng = np.random.default_rng(1)
    save_unit_images(out, {u: rng.integers(0, 256, (20, 104, 3), dtype=np.uint8) for u in range(3)})
    units = [
        {"image": "image/unit0.jpg", "unit": 0, "iou": 0.31, "label": "house", "cat": "object", "threshold": 12.5,
         "top_labels": [{"label": "house", "cat": "object", "iou": 0.31}, {"label": "roof", "cat": "part", "iou": 0.12}]},
        {"image": "image/unit1.jpg", "unit": 1, "iou": 0.02, "label": "sky", "cat": "object", "threshold": 0.5,
         "top_labels": [{"label": "sky", "cat": "object", "iou": 0.02}, {"label": "cloud", "cat": "object", "iou": 0.01}]},
        {"image": "image/unit2.jpg", "unit": 2, "iou": 0.0, "label": "-", "cat": "-", "threshold": 0.0, "top_labels": []},
    ]
    header = {"name": "toy_classifier \u00b7 features.conv4_2", "subtitle": "3 units dissected on 1,000 images",
              "image": "concepts.svg", "layer": "features.conv4_2", "quantile": 0.01, "miniou": 0.04,
              "samples": 1000, "top_images": 5, "seg_description": "the exact segmentation"}
    (out / "concepts.svg").write_text(concept_bargraph_svg([(u["label"], u["cat"], u["iou"]) for u in units]))
    write_report_json(out / "report.json", header, units)
    write_report_html(out / "report.html", read_report_json(out / "report.json"), title="toy_classifier features.conv4_2")
    return out


class Page(HTMLParser):
    """The legend's text, the cards' classes and their status badges, the title."""

    def __init__(self):
        super().__init__()
        self.legend, self.cards, self.h1 = "", [], ""
        self._in_legend = self._in_h1 = 0
        self._badge = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = (attrs.get("class") or "").split()
        if tag == "section" and "legend" in cls:
            self._in_legend = 1
        if tag == "h1":
            self._in_h1 = 1
        if tag == "article" and "unit-card" in cls:
            self.cards.append({"unit": int(attrs["data-unit"]), "class": cls, "badges": [], "also": ""})
        if tag == "span" and self.cards and ("status" in cls or "also" in cls):
            self._badge = "also" if "also" in cls else "badge"

    def handle_endtag(self, tag):
        if tag == "section":
            self._in_legend = 0
        if tag == "h1":
            self._in_h1 = 0
        if tag == "span":
            self._badge = None

    def handle_data(self, data):
        if self._in_legend:
            self.legend += data
        if self._in_h1:
            self.h1 += data
        if self._badge == "badge":
            self.cards[-1]["badges"].append(data)
        elif self._badge == "also":
            self.cards[-1]["also"] += data


def test_the_page_explains_itself_and_marks_unlabelled_and_dead_units(explained_report, tmp_path):
    page = explained_report / "report.html"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000"]
    done = subprocess.run(cmd + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Page()
    dom.feed(done.stdout)
    assert dom.h1 == "toy_classifier \u00b7 features.conv4_2"
    legend = " ".join(dom.legend.split())
    for words in ("Unit", "one channel of layer features.conv4_2", "Images", "the 5 images (of 1,000 images)",
                  "Outline", "top 1% of activations", "0.99 quantile", "Label and IoU", "IoU exceeds 0.04",
                  "unlabelled", "no label"):
        assert words in legend, words
    by_unit = {c["unit"]: c for c in dom.cards}
    assert "labelled" in by_unit[0]["class"] and by_unit[0]["badges"] == []
    assert by_unit[0]["also"] == "also: roof 0.120"
    assert "unlabelled" in by_unit[1]["class"] and by_unit[1]["badges"] == ["unlabelled"]
    assert "dead" in by_unit[2]["class"] and by_unit[2]["badges"] == ["no label"]
    shot = tmp_path / "page.png"
    done = subprocess.run(cmd + ["--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # text, images and badges drawn


def test_show_filter_keeps_unlabelled_and_dead_units(explained_report, tmp_path):
    dom = dump_dom(explained_report / "report.html", "show=unlabelled", tmp_path)
    assert sorted(c["unit"] for c in dom.cards if not c["hidden"]) == [1, 2]
    dom = dump_dom(explained_report / "report.html", "show=labelled", tmp_path)
    assert [c["unit"] for c in dom.cards if not c["hidden"]] == [0]
