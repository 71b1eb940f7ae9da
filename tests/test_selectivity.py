"""Class selectivity of single units against direct per-class numpy, with planted units."""
import numpy as np
import pytest

from jaxdissect.experiments.selectivity import class_selectivity, unit_plot_data
from jaxdissect.experiments.selectivity_report import plot_unit_selectivity, selectivity_table, unit_svg

NAMES = ("street", "highway", "park", "village", "forest")


def planted(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    labels[:5] = np.arange(5)  # every class present
    peaks = np.zeros((n, 4))
    peaks[:, 0] = np.where(labels == 3, rng.uniform(1, 2, n), rng.uniform(0, 0.05, n))  # fires on village only
    peaks[:, 1] = rng.uniform(0, 1, n)  # the same for every class
    peaks[:, 2] = 0.0  # never fires
    peaks[:, 3] = rng.uniform(0, 1, n) + 0.5 * (labels == 1)  # prefers highway, a little
    return peaks, labels


def brute_force(peaks, labels, classes):
    means = np.array([[peaks[labels == c, u].mean() for u in range(peaks.shape[1])] for c in range(classes)])
    ses = np.array([[peaks[labels == c, u].std(ddof=1) / np.sqrt((labels == c).sum()) for u in range(peaks.shape[1])]
                    for c in range(classes)])
    si = []
    for u in range(peaks.shape[1]):
        top = means[:, u].max()
        rest = np.mean(np.delete(means[:, u], means[:, u].argmax()))
        si.append((top - rest) / (top + rest) if top + rest > 0 else np.nan)
    return means, ses, np.array(si)


def test_means_ses_and_index_match_direct_computation():
    peaks, labels = planted()
    sel = class_selectivity(peaks, labels, 5, NAMES)
    means, ses, si = brute_force(peaks, labels, 5)
    np.testing.assert_allclose(sel.means, means, rtol=1e-12)
    np.testing.assert_allclose(sel.ses, ses, rtol=1e-10)
    np.testing.assert_allclose(sel.index, si, rtol=1e-12)
    np.testing.assert_array_equal(sel.counts, np.bincount(labels, minlength=5))
    assert np.isnan(sel.index[2]) and sel.top_class[2] == -1  # a unit that never fires: no selectivity


def test_planted_single_class_unit_is_selective_and_plotted_first():
    peaks, labels = planted()
    sel = class_selectivity(peaks, labels, 5, NAMES)
    assert sel.index[0] >= 0.9 and sel.top_class[0] == 3
    assert sel.index[1] < 0.15  # not selective
    assert 0.15 < sel.index[3] < 0.6 and sel.top_class[3] == 1
    data = unit_plot_data(sel, peaks, labels, 0)
    assert data.classes[0] == "village" and data.class_ids[0] == 3
    assert np.all(np.diff(data.means) <= 0)  # classes sorted by mean
    # every image is a point, at its class's rank (within the jitter)
    assert data.points_y.size == len(labels)
    rank = {c: r for r, c in enumerate(data.class_ids)}
    np.testing.assert_array_less(np.abs(data.points_x - np.array([rank[c] for c in labels])), 0.3 + 1e-12)
    np.testing.assert_array_equal(np.sort(data.points_y), np.sort(peaks[:, 0]))


def test_plot_shows_the_best_classes_and_names_unit_layer_model():
    pytest.importorskip("matplotlib")
    peaks, labels = planted()
    sel = class_selectivity(peaks, labels, 5, NAMES)
    data = unit_plot_data(sel, peaks, labels, 0, max_classes=2)
    assert data.classes == ("village", data.classes[1]) and data.classes_total == 5
    assert data.points_y.size == int(np.isin(labels, data.class_ids).sum())
    fig = plot_unit_selectivity(data, "features.conv4_2", "toy_classifier")
    ax = fig.axes[0]
    assert "toy_classifier features.conv4_2 unit 0" in ax.get_title() and "0.9" in ax.get_title()
    assert ax.get_xticklabels()[0].get_text().startswith("village") and "best 2 of 5" in ax.get_xlabel()


def test_missing_classes_negative_values_and_bad_input():
    peaks = np.array([[1.0, -1.0], [3.0, -2.0], [0.0, 1.0]])
    labels = np.array([0, 0, 2])
    sel = class_selectivity(peaks, labels, 4)
    assert sel.counts.tolist() == [2, 0, 1, 0] and np.isnan(sel.means[1]).all()
    assert sel.ses[2, 0] == 0.0  # one image: no spread
    # classes without images are left out: mean 2 vs 0 -> SI 1
    assert sel.index[0] == pytest.approx(1.0)
    assert np.isnan(sel.index[1])  # a negative class mean: undefined
    assert sel.class_order(0).tolist() == [0, 2]
    with pytest.raises(ValueError, match="one class per image"):
        class_selectivity(peaks, labels[:2])
    with pytest.raises(ValueError, match="lie in 0..1"):
        class_selectivity(peaks, labels, 2)
    with pytest.raises(ValueError, match="integer class ids"):
        class_selectivity(peaks, labels.astype(float))
    with pytest.raises(ValueError, match="NaN"):
        class_selectivity(np.full((3, 2), np.nan), labels)
    with pytest.raises(ValueError, match="out of range"):
        unit_plot_data(sel, peaks, labels, 5)


def test_svg_and_table_carry_the_same_data():
    import xml.etree.ElementTree as ET

    peaks, labels = planted()
    sel = class_selectivity(peaks, labels, 5, NAMES)
    data = unit_plot_data(sel, peaks, labels, 0)
    svg = ET.fromstring(unit_svg(data))
    ns = "{http://www.w3.org/2000/svg}"
    heights = [float(r.get("height")) for r in svg.iter(f"{ns}rect")]
    assert len(heights) == 5 and heights[0] == max(heights)  # the best class first, tallest
    np.testing.assert_allclose(np.asarray(heights) / heights[0], data.means / data.means[0], rtol=1e-4)
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert "village" in texts and any("selectivity 0.9" in t for t in texts)
    table = selectivity_table(sel, "toy", "conv", len(labels))
    assert table["units"][0]["top_class"] == "village" and table["units"][2]["top_class"] is None
    assert table["units"][0]["selectivity"] == pytest.approx(sel.index[0])


def test_driver_on_a_planted_model_finds_the_one_class_unit(tmp_path):
    # The planted model's unit k is on exactly where the scene has label k: 'sand' appears only in
    # beach scenes, so its unit fires on one class alone; 'sky' is in every scene.
    import json

    from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS
    from jaxdissect.experiments.unit_selectivity import load_ranking, run_selectivity, write_outputs
    from planted import EncodedScenes, planted_model

    sand, sky = SCENE_LABELS.index("sand"), SCENE_LABELS.index("sky")
    source = EncodedScenes(size=48)
    ranking = np.tile(np.arange(55)[::-1], (8, 1))  # a made-up ranking: unit 54 first for every class
    np.savez(tmp_path / "class_units.npz", ranking=ranking)
    run = run_selectivity(planted_model(), "planted", source, SCENE_CLASSES, str(tmp_path / "out"), units=(sand, sky),
                          ranking=load_ranking(str(tmp_path), 55, SCENE_CLASSES), top_units=1, batch_size=16)
    sel = run.selectivity
    truth = np.asarray([source.load([i]).labels[0] for i in range(48)])
    np.testing.assert_array_equal(run.labels, truth)
    assert sel.index[sand] >= 0.9 and SCENE_CLASSES[sel.top_class[sand]] == "beach"
    assert sel.index[sky] == pytest.approx(0.0, abs=1e-9)  # every scene has sky: peak 1 everywhere
    assert run.units == (sand, sky, 54)
    data = unit_plot_data(sel, run.peaks, run.labels, sand)
    assert data.classes[0] == "beach"
    from jaxdissect.report.report_json import write_report_json

    dissection = tmp_path / "dissection"
    write_report_json(dissection / "report.json", {"name": "planted", "layer": "planted"},
                      [{"image": "image/unit0.jpg", "unit": 0, "iou": 0.5, "label": "sky", "cat": "object"}])
    paths = write_outputs(run, dissection_dir=str(dissection))
    page = open(paths["report"]).read()  # the dissection's page gains the section, one SVG per unit
    assert "Class selectivity" in page and page.count("<svg") >= 3 and "selectivity 1.00" in page
    table = json.load(open(paths["json"]))
    assert table["units"][sand]["top_class"] == "beach"
    assert set(table["important_units"]) == set(SCENE_CLASSES)
    with pytest.raises(ValueError, match="expected \\(classes, units\\)"):
        load_ranking(str(tmp_path), 54, SCENE_CLASSES)
    with pytest.raises(FileNotFoundError, match="intervene_classifier"):
        load_ranking(str(tmp_path / "none"), 55, SCENE_CLASSES)
