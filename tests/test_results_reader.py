"""Reading finished dissections back: every layer of a model, labels, thresholds, stats, images."""
import json
import os
import shutil

import numpy as np
import pytest

import small_models
from jaxdissect.dissect import DissectConfig, dissect, sources
from jaxdissect.results import DissectionResults, read_layer

LAYERS = ("features.conv2", "features.conv3")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("read")
    model = small_models.tiny_classifier(size=32)
    cfg = DissectConfig(outdir=str(out), quantile=0.01, batch_size=8, progress=False, thumbsize=32, topk=10,
                        layers=LAYERS, devices=1)
    results = dissect(cfg, model=model, source=sources.ScenesSource(size=16, image_size=32))
    return out, results


def test_reader_finds_every_layer_with_its_labels_and_stats(run):
    out, results = run
    d = DissectionResults(out, model="tiny")
    assert d.layers == LAYERS and len(d) == 2 and d.model == "tiny"
    for r in results:
        layer = d[r.layer]
        assert layer.directory == r.directory and layer.done
        for u in range(len(r.best_label)):
            assert d.label(r.layer, u) == r.label_names[r.best_label[u]]
            assert d.category(r.layer, u) == r.label_categories[r.best_label[u]]
            assert d.iou(r.layer, u) == pytest.approx(float(r.best_iou[u]), rel=1e-6)
        np.testing.assert_allclose(d.thresholds(r.layer), r.thresholds, rtol=1e-6)
        np.testing.assert_allclose(layer.iou_tally().iou(), r.iou, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(layer.topk().result()[1]), r.topk_indices)
        # the sketch's own estimate lies in the bin of the exact threshold (relative width 1/128)
        np.testing.assert_allclose(np.asarray(layer.quantiles().quantiles([0.99])[:, 0]), r.thresholds, rtol=1 / 128)
        assert layer.image(0).ndim == 3 and layer.image(0).shape[0] == 32
        assert [t[0] for t in layer.unit_labels()] == [r.label_names[b] for b in r.best_label]
        np.testing.assert_array_equal(layer.labelled(), np.flatnonzero(r.best_iou > 0.04))
    assert d["conv3"].layer == "features.conv3"  # the original's short names


def test_reader_filters_and_clear_errors(run, tmp_path):
    out, results = run
    with pytest.raises(FileNotFoundError, match="no dissected layer"):
        DissectionResults(out, model="vgg16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DissectionResults(tmp_path / "nowhere")
    assert DissectionResults(out, seg="scenes", quantile=0.01, dataset="scenes").layers == LAYERS
    assert DissectionResults(out, layers=["conv3"]).layers == ("features.conv3",)
    with pytest.raises(KeyError, match="was not dissected here"):
        DissectionResults(out, layers=["conv9"])
    with pytest.raises(IndexError, match="has"):
        DissectionResults(out)["conv2"].label(999)
    # the same layer twice: an error naming both folders; directories= chooses
    copy = tmp_path / "copy"
    shutil.copytree(results[0].directory, copy / "other-name")
    shutil.copytree(results[0].directory, copy / "first")
    with pytest.raises(ValueError, match="two result folders"):
        DissectionResults(copy)
    assert DissectionResults(directories=[copy / "first"]).layers == ("features.conv2",)
    shutil.rmtree(copy / "first" / "stats")
    with pytest.raises(FileNotFoundError, match="is missing"):
        read_layer(copy / "first").iou_tally()
    # a report without thresholds falls back to the quantile sketch
    report = json.load(open(copy / "other-name" / "report.json"))
    for rec in report["units"]:
        del rec["threshold"]
    json.dump(report, open(copy / "other-name" / "report.json", "w"))
    np.testing.assert_allclose(read_layer(copy / "other-name").thresholds, results[0].thresholds, rtol=1e-6)
    assert os.path.basename(read_layer(copy / "other-name").image_path(3)) == "unit3.jpg"
