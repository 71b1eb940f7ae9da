"""The issue's bar for open-vocabulary labels on the toy classifier's conv4_2: for the units whose
IoU label exceeds 0.1, the toy CLIP's label (the defaults of --label-source clip: the window
probe, per-window peaks, WPMI) names the same concept (or a phrase containing it) for at least
half. Dissects 1000 val scenes, so it is slow. Measured (scripts/clip_label_agreement.py,
docs/clip.md): 29 of 52 units with the defaults; 3 of 52 with CLIP-Dissect's exact setting
(whole images, spatial mean, soft-WPMI), which this test also states."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import clip_label_agreement  # noqa: E402


@pytest.mark.slow
def test_open_vocabulary_labels_agree_with_iou_labels(tmp_path):
    report = clip_label_agreement.dissect_report(str(tmp_path / "results"))
    result = clip_label_agreement.measure(report, n=1000, min_iou=0.1,
                                          settings=("wpmi/windows/max", "soft_wpmi/images/mean"))
    assert sorted(result["methods"]) == ["soft_wpmi/images/mean", "wpmi/windows/max"]
    default = result["methods"]["wpmi/windows/max"]
    assert default["units"] >= 20  # the dissection finds many units over IoU 0.1 (52 when measured)
    assert default["fraction"] >= 0.5, default
    original = result["methods"]["soft_wpmi/images/mean"]
    assert original["units"] == default["units"] and original["fraction"] < 0.25, original  # 3/52 measured
    table = clip_label_agreement.table(result)
    assert table.count("\n") == 13  # header, rule, a dozen units
