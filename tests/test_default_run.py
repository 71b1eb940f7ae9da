"""The README's first command, run as a new user would: `python scripts/dissect.py` with no
arguments dissects the embedded toy classifier, and its report opens in a real browser."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_report_browser import CHROMIUM, dump_dom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # the full default run: 1,000 images, about a minute


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("user")
    env = dict(os.environ, JAXDISSECT_HOME=str(cwd / "cache"))
    env.pop("XLA_FLAGS", None)  # a user's plain machine: one CPU device
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dissect.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "results" / "toy_classifier-scenes-scenes-conv4_2-10", done.stdout


def test_default_run_writes_the_report(default_run):
    d, stdout = default_run
    assert "units labelled with IoU > 0.04" in stdout
    for f in ("report.html", "report.json", "concepts.svg", "done.txt", "stats/iou/iou", "stats/thresholds.json", "image/unit0.jpg"):
        assert (d / f).exists(), f
    assert not (d / "checkpoints").exists()


def test_toy_world_is_rich_enough(default_run):
    # The criterion: >= 25% of the last conv layer's units have IoU > 0.04 against the exact
    # segmentation, covering >= 5 distinct object or part concepts.
    d, _ = default_run
    units = json.loads((d / "report.json").read_text())["units"]
    good = [u for u in units if u["iou"] > 0.04]
    assert len(good) >= 0.25 * len(units)
    assert len({u["label"] for u in good if u["cat"] in ("object", "part")}) >= 5


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_report_opens_in_a_browser_with_one_card_per_unit(default_run, tmp_path):
    d, _ = default_run
    units = json.loads((d / "report.json").read_text())["units"]
    dom = dump_dom(d / "report.html", "", tmp_path)
    assert len(dom.cards) == len(units) == 128
    assert not any(c["hidden"] for c in dom.cards)
    ious = [float(c["spans"]["iou"].split()[1]) for c in dom.cards]
    assert ious == sorted(ious, reverse=True)
    assert np.isclose(ious[0], max(u["iou"] for u in units), atol=1e-4)
