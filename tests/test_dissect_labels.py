"""Labels beyond one threshold, end to end: the labelling rules, compositional formulas and
open-vocabulary phrases in report.json; Broden folders and the stylized world as datasets."""
import json
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.data.broden_export import export_scenes
from jaxdissect.data.scenes import SCENE_LABELS
from jaxdissect.dissect import DissectConfig, dissect, layer_stats
from jaxdissect.dissect.labelling import label_units
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel
from jaxdissect.stats import level_index, threshold_levels
from planted import EncodedScenes, Identity


def ids(*names):
    return [SCENE_LABELS.index(n) for n in names]


class Composite(nn.Module):
    """Units that are formulas of the scenes' object labels (read back from the encoded image):
    unit 0 = house OR tree, unit 1 = road, unit 2 = sky, unit 3 = never on."""

    @nn.compact
    def __call__(self, x):
        mean, std = jnp.asarray(IMAGENET_NORMALIZATION["mean"]), jnp.asarray(IMAGENET_NORMALIZATION["std"])
        obj = jnp.round((x * std + mean) * 255.0)[:, 1::2, 1::2, 0]
        house, tree, road, car, sky = ids("house", "tree", "road", "car", "sky")
        units = [(obj == house) | (obj == tree), obj == road, obj == sky, jnp.zeros_like(obj, bool)]
        # 0/1 units covering less than half of the pixels: at quantile 0.5 the threshold is 0,
        # so a unit is on exactly where its formula holds
        on = jnp.stack(units, -1).astype(jnp.float32)
        return Identity(name="units")(on).mean(axis=(1, 2))


def composite_model():
    return LoadedModel("composite", "classifier", Composite(), {}, {}, (128, 128), IMAGENET_NORMALIZATION, "units",
                       ("units",), None)


def cfg(tmp_path, **kw):
    base = dict(outdir=str(tmp_path), quantile=0.2, batch_size=8, progress=False, thumbsize=16, topk=5, devices=2)
    base.update(kw)
    return DissectConfig(**base)


@pytest.fixture(scope="module")
def composite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("composite")
    [r] = dissect(cfg(out, quantile=0.5, formula_length=2, beam_width=5), model=composite_model(),
                  source=EncodedScenes(size=48))
    return r


def test_formulas_name_a_union_unit_and_an_empty_unit_has_no_label(composite_run):
    r = composite_run
    units = json.load(open(os.path.join(r.directory, "report.json")))["units"]
    assert units[0]["formula"] in ("house OR tree", "tree OR house")
    assert units[0]["formula_iou"] >= 0.9 > units[0]["iou"]  # the single label alone is worse
    assert units[1]["label"] == "road" and units[1]["iou"] == pytest.approx(1.0)
    assert units[2]["label"] == "sky" and units[2]["formula"] == "sky"
    assert units[3]["label"] == "-" and units[3]["iou"] == 0 and units[3]["formula"] == "-"
    header = json.load(open(os.path.join(r.directory, "report.json")))["header"]
    assert header["formula_length"] == 2 and header["label_rule"] == "iou" and len(header["levels"]) == 16


def test_the_report_curves_and_rules_are_read_from_the_stored_tally(composite_run, tmp_path):
    r = composite_run
    stored = layer_stats(r.directory, ("iou",))
    from jaxdissect import stats

    multi = stats.load(os.path.join(r.directory, "stats", "iou", "multi"))
    levels = threshold_levels(16, include=0.5)
    run_level = level_index(levels, 0.5)
    np.testing.assert_array_equal(np.asarray(multi.at(run_level).intersection), np.asarray(stored["iou"].intersection))
    units = json.load(open(os.path.join(r.directory, "report.json")))["units"]
    iou = np.asarray(multi.iou())
    for rec in units[:3]:
        for curve in rec["curves"]:
            np.testing.assert_allclose(curve["iou"], iou[:, SCENE_LABELS.index(curve["label"]), rec["unit"]], atol=1e-5)
    # Another rule on the same folder's tally: the pipeline's labels are label_units' labels.
    [best] = dissect(cfg(tmp_path, quantile=0.5, label_rule="iou-best"), model=composite_model(),
                     source=EncodedScenes(size=48))
    want = label_units(multi, "iou-best", run_level)
    np.testing.assert_array_equal(best.best_label, np.asarray(want.label))
    np.testing.assert_allclose(best.best_iou, np.asarray(want.iou), atol=1e-6)
    rec = json.load(open(os.path.join(best.directory, "report.json")))["units"][0]
    assert {"score", "label_threshold"} <= set(rec)


@pytest.mark.slow
def test_a_broden_export_of_the_scenes_dissects_like_the_scenes_themselves(tmp_path):
    """The Broden reader on files the exporter wrote: the same images and labels as the scenes
    world give the same thresholds and, label by label, the same IoU."""
    folder = tmp_path / "broden"
    export_scenes(folder, split="val", size=24)
    model = "toy_classifier"
    common = dict(sample_size=24, layers=("features.conv3_1",), seg=None, model=model)
    [via_broden] = dissect(cfg(tmp_path / "a", dataset=f"broden:{folder}", **common))
    [direct] = dissect(cfg(tmp_path / "b", dataset="scenes", **common))
    np.testing.assert_allclose(via_broden.thresholds, direct.thresholds, rtol=1e-6)
    for name in ("sky", "house", "tree", "grass", "road", "roof", "brick", "red"):
        if name in via_broden.label_names:
            a = via_broden.iou[via_broden.label_names.index(name)]
            b = direct.iou[direct.label_names.index(name)]
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    assert os.path.basename(via_broden.directory).startswith("toy_classifier-broden-broden-")


@pytest.mark.slow
def test_stylized_scenes_are_a_dataset_with_exact_labels(tmp_path):
    [r] = dissect(cfg(tmp_path, model="toy_classifier", dataset="scenes-stylized", sample_size=16,
                      layers=("features.conv2_1",)))
    assert os.path.basename(r.directory).startswith("toy_classifier-scenes-stylized-scenes-conv2_1")
    assert r.iou.shape == (len(SCENE_LABELS), 32)


@pytest.mark.slow
def test_open_vocabulary_labels_in_the_report_equal_the_labelling_function(tmp_path):
    from jaxdissect.dissect import sources
    from jaxdissect.dissect.clip_labels import label_units as clip_label_units

    [r] = dissect(cfg(tmp_path, model="toy_classifier", sample_size=32, layers=("features.conv4_2",),
                      label_source="clip", clip_summary="max", clip_probe="images",
                      clip_method="soft_wpmi"))
    units = json.load(open(os.path.join(r.directory, "report.json")))["units"]
    src = sources.ScenesSource(size=32)
    images = src.load(np.arange(32)).inputs
    from jaxdissect.array_cache import ArrayCache

    fp_ = json.load(open(os.path.join(r.directory, "cache", "peaks", "fingerprint.json")))
    cache = ArrayCache.open(os.path.join(r.directory, "cache", "peaks"), 32, (128,), "float32", fp_["fingerprint"])
    batches = [images[i:i + 8] for i in range(0, 32, 8)]  # CLIP sees them in the run's batches of 8
    want = clip_label_units(batches, cache.read(np.arange(32)), clip_model="toy_clip", method="soft_wpmi")
    for u in (0, 17, 76, 127):
        assert units[u]["clip_label"] == want.label(u)
        assert units[u]["clip_score"] == pytest.approx(float(want.scores[u, want.best[u]]), rel=1e-5)


@pytest.mark.slow
def test_open_vocabulary_labels_on_windows_equal_the_labelling_function_on_hand_cut_windows(tmp_path):
    """The default probe: each image's 3x3 windows of half its side; the units' per-window peaks
    and the crops are cut here by hand (64 px every 32 px; 8x8 of the 16x16 cells every 4)."""
    from jaxdissect.capturing import capture
    from jaxdissect.dissect import sources
    from jaxdissect.dissect.clip_labels import label_units as clip_label_units
    from jaxdissect.models import load
    from jaxdissect.models.clip_encoder import preprocess

    [r] = dissect(cfg(tmp_path, model="toy_classifier", sample_size=24, layers=("features.conv4_2",),
                      label_source="clip", clip_method="soft_wpmi"))
    report = json.load(open(os.path.join(r.directory, "report.json")))
    h = report["header"]
    assert (h["clip_probe"], h["clip_summary"], h["clip_method"]) == ("windows", "max", "soft_wpmi")
    images = np.asarray(sources.ScenesSource(size=24).load(np.arange(24)).inputs)
    model = load("toy_classifier")
    crops, peaks = [], []
    for b in range(0, 24, 8):  # in the run's batches of 8
        x = images[b:b + 8]
        _, acts = capture(model, preprocess(x, model.input_size, model.normalization), layers=("features.conv4_2",))
        acts = np.asarray(acts["features.conv4_2"])
        assert acts.shape[1:3] == (16, 16)
        crops.append(np.stack([x[n, y:y + 64, c:c + 64] for n in range(8) for y in (0, 32, 64) for c in (0, 32, 64)]))
        peaks += [acts[n, y // 8:y // 8 + 8, c // 8:c // 8 + 8].max(axis=(0, 1))
                  for n in range(8) for y in (0, 32, 64) for c in (0, 32, 64)]
    want = clip_label_units(crops, np.stack(peaks), clip_model="toy_clip", method="soft_wpmi")
    for u in (0, 17, 76, 127):
        assert report["units"][u]["clip_label"] == want.label(u)
        assert report["units"][u]["clip_score"] == pytest.approx(float(want.scores[u, want.best[u]]), rel=1e-5)
