"""The issue's bar for open-vocabulary labels on the toy classifier's conv4_2: for the units whose
IoU label exceeds 0.1, the toy CLIP's soft-WPMI label names the same concept (or a phrase
containing it) for at least half. Dissects 1000 val scenes, so it is slow (docs/clip.md states
the measured numbers: scripts/clip_label_agreement.py). The bar is not met yet: the test is a
strict xfail, so it turns into a failure the day it passes and the marker must go."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import clip_label_agreement  # noqa: E402


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 1/52 units with soft-WPMI (16/52 with cosine over per-image "
                   "maxima): the issue's bar of half is not met; docs/clip.md says why")
def test_open_vocabulary_labels_agree_with_iou_labels(tmp_path):
    report = clip_label_agreement.dissect_report(str(tmp_path / "results"))
    result = clip_label_agreement.measure(report, n=1000, min_iou=0.1)
    soft = result["methods"]["soft_wpmi/max"]
    assert soft["units"] >= 20  # the dissection finds many units over IoU 0.1 (52 when measured)
    assert soft["fraction"] >= 0.5, soft["fraction"]
    table = clip_label_agreement.table(result)
    assert table.count("\n") == 13  # header, rule, a dozen units
