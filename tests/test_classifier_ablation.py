"""Classifier unit ablation: sweeps against direct edited forwards, masks, rankings and importance
on hand cases, the whole experiment on a planted-unit classifier (resume, devices, outputs), and
on the trained toy classifier (slow)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import small_models
from jaxdissect import edit, parallel
from jaxdissect.capturing import capture
from jaxdissect.experiments import common
from jaxdissect.dissect import sources
from jaxdissect.experiments import classifier_ablation as ca
from jaxdissect.experiments import classifier_report
from jaxdissect.models.registry import LoadedModel

UNIT_FREE = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # model input = uint8 / 255


class ArraySource:
    """In-memory labelled uint8 images, random access like the dissection's sources."""

    kind = "images"

    def __init__(self, images, labels, classes, fail_at=None):
        self.images, self.labels, self.classes, self.fail_at = images, labels, tuple(classes), fail_at

    def __len__(self):
        return len(self.images)

    def load(self, indices):
        idx = np.asarray(indices, np.int64)
        if self.fail_at is not None and self.fail_at in idx:
            self.fail_at = None
            raise KeyboardInterrupt("simulated kill")
        return sources.Batch(idx.astype(np.int32), self.images[idx], np.ones(len(idx), bool),
                             labels=self.labels[idx].astype(np.int32))


def numpy_ba(preds, labels, num_classes):
    """Balanced accuracy per class straight from its definition (recall + TNR) / 2."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        pos, neg = labels == c, labels != c
        if pos.any() and neg.any():
            out[c] = ((preds[pos] == c).mean() + (preds[neg] != c).mean()) / 2
    return out


# ---- a classifier whose units for each class are planted ----------------------------------
K, U = 4, 16  # real classes (plus a 'background' class K that is never a label), units
WEIGHTS = np.zeros((U, K + 1), np.float32)
for u in range(U):
    WEIGHTS[u, u // 4] = 4 - u % 4  # class c's units are 4c .. 4c+3 with weights 4, 3, 2, 1
BIAS = np.array([-5.0] * K + [0.0], np.float32)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class PlantedClassifier(nn.Module):
    """The image's first 16 values are the units; class c's logit is a weighted sum of its own 4
    units minus 5, the background logit is 0."""

    @nn.compact
    def __call__(self, x):
        units = Identity(name="units")(x.reshape(x.shape[0], -1)[:, :U])
        return units @ jnp.asarray(WEIGHTS) + jnp.asarray(BIAS)


def planted_model():
    return LoadedModel("planted_classifier", "classifier", PlantedClassifier(), {}, {}, (4, 4), UNIT_FREE,
                       "units", ("units",), tuple(f"class{c}" for c in range(K)) + ("background",))


def planted_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    acts = rng.uniform(0, 0.5, (n, U))
    for i, c in enumerate(labels):
        acts[i, 4 * c:4 * c + 4] += rng.uniform(0.2, 0.6, 4)
    images = np.zeros((n, 4 * 4 * 3), np.uint8)
    images[:, :U] = np.rint(np.clip(acts, 0, 1) * 255)
    return images.reshape(n, 4, 4, 3), labels


def planted_sources(fail_at=None):
    classes = planted_model().labels
    train = ArraySource(*planted_data(400, 1), classes)
    val = ArraySource(*planted_data(200, 2), classes, fail_at=fail_at)
    return train, val


def fake_dissection(directory, best_iou, labels):
    """A dissection result of the planted layer, with a report.json to extend."""
    from jaxdissect.dissect import LayerResult
    from jaxdissect.report.report_json import write_report_json

    os.makedirs(directory, exist_ok=True)
    names = ("-",) + tuple(labels)
    units = [{"image": f"image/unit{u}.jpg", "unit": u, "iou": float(best_iou[u]), "label": labels[u],
              "cat": "object"} for u in range(U)]
    write_report_json(os.path.join(directory, "report.json"),
                      {"name": "planted scenes", "layer": "units", "image": ""}, units)
    return LayerResult("units", str(directory), np.zeros(U), np.zeros((len(names), U)),
                       np.arange(1, U + 1), np.asarray(best_iou), np.zeros((U, 1), np.int64), names,
                       ("",) + ("object",) * U)


# ---- sweeps against direct edits ----------------------------------------------------------


def tiny_model():
    """small_models' TinyNet with numpy-drawn weights (its flax init compiles slowly on CPU)."""
    module = small_models.TinyNet()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(
        rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(np.float32)), shapes)
    return LoadedModel("tiny", "classifier", module, variables, {}, (16, 16), small_models.IMAGENET_NORMALIZATION,
                       "features.conv3", ("features.conv1", "features.conv2", "features.conv3"), None)


def test_single_unit_sweep_equals_direct_edited_evaluation():
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (21, 16, 16, 3)).astype(np.uint8)  # 21: the last batch is padded
    x = ca.model_input_function(model)(images)
    logits, _ = capture(model, x)
    labels = np.array(jnp.argmax(logits, -1))
    labels[::3] = rng.integers(0, 5, len(labels[::3]))  # some mistakes
    masks = np.concatenate([np.zeros((1, 16), np.float32), np.eye(16, dtype=np.float32)])
    counts = ca.evaluate_masks(model, "features.conv2", ArraySource(images, labels, range(5)), masks, 5,
                               mesh=parallel.make_mesh(4), batch_size=8, chunk=5)
    metrics = counts.metrics()
    ba = metrics["balanced_accuracy"]
    assert ba.shape == (17, 5)
    assert np.asarray(counts.counts.total).tolist() == [21] * 17
    for u in range(-1, 16):
        edits = {} if u < 0 else {"features.conv2": edit.ablate([u], 16)}
        out, _ = capture(model, x, (), edits=edits)
        np.testing.assert_allclose(ba[u + 1], numpy_ba(np.asarray(out).argmax(-1), labels, 5), rtol=1e-6)
        logp = np.asarray(jax.nn.log_softmax(out, -1))[np.arange(len(labels)), labels]
        for c in range(5):
            expected = logp[labels == c].mean() if (labels == c).any() else np.nan
            np.testing.assert_allclose(metrics["mean_true_logprob"][u + 1, c], expected, rtol=1e-5)


# ---- masks, rankings, importance on hand cases --------------------------------------------


def test_ranking_and_best_n_masks_hand_case():
    # 4 units, 2 classes; BA with each unit removed (rows units):
    ba = np.array([[0.9, 0.5],
                   [0.6, 0.8],
                   [0.9, 0.7],
                   [0.7, 0.9]])
    ranking = ca.rank_units(ba)
    assert ranking.tolist() == [[1, 3, 0, 2], [0, 2, 1, 3]]  # most damaging first; 0 before 2 on a tie
    removed = ca.best_n_masks(ranking, [1, 2, 3])
    assert removed.shape == (2, 3, 4)
    assert removed[0].tolist() == [[0, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 1]]
    assert removed[1].tolist() == [[1, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]
    kept = 1 - removed  # keep only the best N: the worst units - N removed
    assert kept[0, 0].tolist() == [1, 0, 1, 1]
    np.testing.assert_array_equal(ca.curve_masks(ranking[1]), removed[1])
    assert ca.rank_units(np.array([[np.nan, 0.2], [0.1, np.nan]])).tolist() == [[1, 0], [0, 1]]  # NaN last
    # equal BA: the lower log-probability (more damage short of flipping predictions) goes first
    tie = np.array([[-0.1, -2.0], [-0.5, -1.0], [-0.3, -3.0], [-0.2, -0.5]])
    # BA decides where it differs; class 0's units 0 and 2 tie at 0.9 and unit 2 (-0.3 < -0.1) goes first
    assert ca.rank_units(ba, tie).tolist() == [[1, 3, 2, 0], [0, 2, 1, 3]]
    assert ca.rank_units(np.full((4, 2), 0.9), tie).tolist() == [[1, 2, 3, 0], [2, 0, 1, 3]]
    assert ca.clip_ns(ca.DEFAULT_NS, 128) == (1, 2, 3, 4, 5, 20, 64)
    with pytest.raises(ValueError, match="units, classes"):
        ca.rank_units(np.zeros(4))


def test_random_masks_remove_n_units():
    m = ca.random_masks([1, 3], 10, draws=4, seed=3)
    assert m.shape == (2, 4, 10)
    assert m.sum(-1).tolist() == [[1] * 4, [3] * 4]
    np.testing.assert_array_equal(m, ca.random_masks([1, 3], 10, draws=4, seed=3))
    assert len({tuple(r) for r in m[1]}) > 1


def test_importance_counts_hand_case():
    ranking = np.array([[5, 0, 1, 2, 3, 4],
                        [0, 5, 2, 1, 3, 4],
                        [3, 4, 5, 0, 1, 2]])
    # top 2: {5,0}, {0,5}, {3,4}
    assert ca.unit_importance(ranking, cutoff=2).tolist() == [2, 0, 0, 1, 1, 2]
    # top 4: {5,0,1,2}, {0,5,2,1}, {3,4,5,0}
    assert ca.unit_importance(ranking, cutoff=4).tolist() == [3, 2, 2, 1, 1, 3]
    assert ca.unit_importance(ranking, cutoff=4, classes=[0, 1]).tolist() == [2, 2, 2, 0, 0, 2]
    g = ca.importance_vs_iou(np.array([0, 0, 1, 3, 8, 9]), np.array([0.1, 0.3, 0.2, 0.4, 0.5, 0.7]), top_group=7)
    assert g["group"] == ["0", "1", "2", "3", "4", "5", "6", ">=7"]
    assert g["units"] == [2, 1, 0, 1, 0, 0, 0, 2]
    np.testing.assert_allclose(g["mean_iou"][0], 0.2)
    np.testing.assert_allclose(g["se_iou"][0], np.std([0.1, 0.3], ddof=1) / np.sqrt(2))
    np.testing.assert_allclose(g["mean_iou"][7], 0.6)
    assert g["se_iou"][1] == 0.0 and np.isnan(g["mean_iou"][2])


# ---- the experiment end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    best_iou = np.where(np.arange(U) % 4 == 0, 0.3, 0.05)  # the strongest unit of each class is "interpretable"
    dissection = fake_dissection(out / "dissection", best_iou, [f"concept{u}" for u in range(U)])
    train, val = planted_sources()
    cfg = ca.ClassifierAblationConfig(outdir=str(out), ns=(1, 2, 4, 20), distribution_n=4,
                                      curve_classes=("class1",), batch_size=32, mask_chunk=16, devices=2,
                                      progress=False, random_draws=8)
    result = ca.run_experiment(cfg, model=planted_model(), train_source=train, val_source=val,
                               dissection=dissection)
    return out, cfg, dissection, result


def test_planted_units_are_found_and_matter(planted_run):
    _, _, _, r = planted_run
    assert r.ns == (1, 2, 4)  # 20 >= 16 units is dropped
    for c in range(K):
        assert r.ranking[c, 0] == 4 * c  # the weight-4 unit hurts its class most
        assert set(r.ranking[c, :2]) == {4 * c, 4 * c + 1}
    base = r.baseline["balanced_accuracy"][:K]
    assert np.isnan(r.baseline["balanced_accuracy"][K])  # the background class never occurs
    assert base.min() > 0.9
    i2 = r.ns.index(2)
    best_drop = (base - r.removed_ba[:K, i2]).mean()
    random_drop = (base - np.nanmean(r.random_removed_ba[i2, :, :K], axis=0)).mean()
    assert best_drop > 0.3 and best_drop > random_drop + 0.2, (best_drop, random_drop)
    i4 = r.ns.index(4)
    assert (r.kept_ba[:K, i4] > base - 0.05).all()  # its own 4 units are all a class needs
    # each class's 4 most important units are its own: importance 1 each
    assert r.importance.tolist() == [1] * U


def test_planted_tables_are_consistent(planted_run):
    _, _, _, r = planted_run
    for c in range(K):
        u = r.ranking[c, 0]
        np.testing.assert_allclose(r.removed_ba[c, 0], r.val_single_ba[u, c])  # N=1 is one single-unit ablation
    j = r.curve_classes.index(1)
    for n in r.ns:
        np.testing.assert_allclose(r.curve_removed_ba[j, n - 1], r.removed_ba[1, r.ns.index(n)])
        np.testing.assert_allclose(r.curve_kept_ba[j, n - 1], r.kept_ba[1, r.ns.index(n)])
    # train single-unit BA from the stage equals a direct numpy evaluation
    train, _ = planted_sources()
    model = planted_model()
    x = ca.model_input_function(model)(train.images)
    for u in (0, 5):
        out, _ = capture(model, x, (), edits={"units": edit.ablate([u], U)})
        np.testing.assert_allclose(r.train_single_ba[u, :K],
                                   numpy_ba(np.asarray(out).argmax(-1), train.labels, K + 1)[:K], rtol=1e-6)
    g = r.iou_groups
    assert g["units"][1] == U and g["mean_iou"][1] == pytest.approx(np.mean(r.best_iou))


def test_planted_outputs_written(planted_run):
    out, _, dissection, r = planted_run
    d = r.directory
    assert os.path.basename(d) == "planted_classifier-scenes-intervention-units"
    for f in ("baseline.json", "baseline.npz", "single_unit_ablation.npz", "ttv_unit_ablation.json",
              "class_units.npz", "class_units.json", "curves.npz", "importance.json", "importance.npz",
              "summary.json", "plots/one_class_class1.png", "plots/all_classes.png",
              "plots/importance_vs_iou.png", "section.html"):
        assert os.path.exists(os.path.join(d, f)), f
    with open(os.path.join(d, "plots", "all_classes.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with np.load(os.path.join(d, "class_units.npz")) as z:
        np.testing.assert_array_equal(z["ranking"], r.ranking)
        np.testing.assert_allclose(z["best_removed_ba"], r.removed_ba)
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert summary["headline"]["n"] == 4 and summary["headline"]["classes"] == K
    listed = json.load(open(os.path.join(d, "ttv_unit_ablation.json")))
    assert listed["class2"][0]["unit"] == 8 and listed["class2"][0]["train_ba_change"] < -0.005
    page = open(os.path.join(dissection.directory, "report.html"), encoding="utf-8").read()
    assert classifier_report.SECTION_TITLE in page and "data:image/png;base64," in page
    assert page.count(classifier_report.SECTION_TITLE) == 1


def test_rerun_uses_cached_stages_and_replaces_the_section(planted_run, monkeypatch):
    out, cfg, dissection, r = planted_run

    def fail(*a, **k):
        raise AssertionError("a finished stage was computed again")

    monkeypatch.setattr(ca, "evaluate_masks", fail)
    train, val = planted_sources()
    again = ca.run_experiment(cfg, model=planted_model(), train_source=train, val_source=val, dissection=dissection)
    np.testing.assert_array_equal(again.removed_ba, r.removed_ba)
    page = open(os.path.join(dissection.directory, "report.html"), encoding="utf-8").read()
    assert page.count(classifier_report.SECTION_TITLE) == 1


def test_killed_stage_resumes_to_identical_counts(tmp_path):
    model = planted_model()
    train, _ = planted_sources()
    masks = np.eye(U, dtype=np.float32)
    whole = ca.evaluate_masks(model, "units", train, masks, K + 1, mesh=parallel.make_mesh(1), batch_size=16)
    crashing = ArraySource(train.images, train.labels, train.classes, fail_at=300)
    ckpt = str(tmp_path / "ckpt")
    kw = dict(batch_size=16, checkpoint=ckpt, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        ca.evaluate_masks(model, "units", crashing, masks, K + 1, mesh=parallel.make_mesh(2), **kw)
    assert json.load(open(os.path.join(ckpt, "checkpoints", "masks", "meta.json")))["samples_done"] == 18 * 16
    seen = []
    orig_load = crashing.load
    crashing.load = lambda idx: seen.append(int(np.min(idx))) or orig_load(idx)
    resumed = ca.evaluate_masks(model, "units", crashing, masks, K + 1, mesh=parallel.make_mesh(4), **kw)
    assert min(seen) == 18 * 16  # only the batches after the checkpoint were read again
    for a, b in zip(jax.tree.leaves(resumed.counts), jax.tree.leaves(whole.counts)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(resumed.logprob), np.asarray(whole.logprob), rtol=1e-5)  # float sums


def test_bad_input_is_named():
    names = ("street", "lake")
    assert common.resolve_classes(["lake", "0"], names) == (1, 0)
    with pytest.raises(ValueError, match="unknown class 'ski'"):
        common.resolve_classes(["ski"], names)
    with pytest.raises(ValueError, match="out of range"):
        common.resolve_classes([5], names)
    model = planted_model()
    train, val = planted_sources()
    unlabelled = ArraySource(train.images, train.labels, train.classes)
    unlabelled.load = lambda idx: sources.Batch(np.asarray(idx, np.int32), train.images[idx],
                                                np.ones(len(idx), bool))
    with pytest.raises(ValueError, match="no class labels"):
        ca.evaluate_masks(model, "units", unlabelled, np.eye(U), K + 1, mesh=parallel.make_mesh(1))
    wrong = ArraySource(val.images, val.labels, ("a", "b"))
    with pytest.raises(ValueError, match="2 classes but the model predicts 5"):
        ca.run_experiment(ca.ClassifierAblationConfig(progress=False), model=model, train_source=train,
                          val_source=wrong)
    with pytest.raises(ValueError, match="unknown layer"):
        ca.run_experiment(ca.ClassifierAblationConfig(layer="nope", progress=False), model=model, train_source=train,
                          val_source=val)


def _cli():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "intervene_classifier.py")
    spec = importlib.util.spec_from_file_location("intervene_classifier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_flags_and_errors(tmp_path, capsys):
    cli = _cli()
    cfg = cli.config_from_args(cli.parse_args([]))
    assert (cfg.model, cfg.dataset, cfg.ns, cfg.curve_classes) == ("toy_classifier", "scenes", ca.DEFAULT_NS, None)
    cfg = cli.config_from_args(cli.parse_args(["--model", "vgg16", "--curve-classes", "ski_resort", "--ns", "4",
                                               "20", "--train-size", "100", "--devices", "2"]))
    assert (cfg.model, cfg.dataset, cfg.curve_classes, cfg.ns) == ("vgg16_places", "places", ("ski_resort",), (4, 20))
    assert (cfg.train_size, cfg.devices) == (100, 2)
    assert cli.main(["--model", "no_such_model", "--outdir", str(tmp_path), "--no-progress"]) == 2
    assert "no_such_model" in capsys.readouterr().err


# ---- the trained toy classifier ----------------------------------------------------------


def _toy_weights_present() -> bool:
    import jaxdissect

    return os.path.isdir(os.path.join(os.path.dirname(jaxdissect.__file__), "weights", "toy_classifier"))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    if not _toy_weights_present():
        pytest.skip("the trained toy_classifier weights are not shipped yet")
    from jaxdissect.models import load

    cfg = ca.ClassifierAblationConfig(outdir=str(tmp_path_factory.mktemp("toy")), train_size=600, val_size=600,
                                      ns=(4, 20), curve_classes=(), progress=False, dissection_sample_size=200,
                                      batch_size=50)
    return ca.run_experiment(cfg, model=load("toy_classifier"))


@pytest.mark.slow
def test_trained_toy_classifier_units_matter(toy_run):
    r = toy_run
    base = r.baseline["balanced_accuracy"]
    assert np.nanmean(base) > 0.8, base
    i = r.ns.index(4)
    best_drop = np.nanmean(base - r.removed_ba[:, i])
    random_drop = np.nanmean(base[None] - r.random_removed_ba[i])
    # Margin: the best 4 of 128 units cost each class (on average) at least 3x what 4 random
    # units cost, and at least 0.05 of balanced accuracy more in absolute terms.
    assert best_drop > 3 * random_drop and best_drop > random_drop + 0.05, (best_drop, random_drop)
    # Removing the best 20 leaves each class near chance (0.5) on average.
    assert np.nanmean(r.removed_ba[:, r.ns.index(20)]) < 0.6, r.removed_ba


@pytest.mark.slow
def test_trained_toy_classifier_keeps_most_accuracy_with_only_its_best_units(toy_run):
    """Keeping only a class's best 20 of 128 units (108 removed) keeps at least 60% of the
    baseline's balanced accuracy above chance (0.5), and beats keeping 20 random units by 0.1."""
    r = toy_run
    j = r.ns.index(20)
    base = np.nanmean(r.baseline["balanced_accuracy"])
    kept, random_kept = np.nanmean(r.kept_ba[:, j]), np.nanmean(r.random_kept_ba[j])
    assert kept - 0.5 >= 0.6 * (base - 0.5), (kept, base, r.kept_ba[:, j])
    assert kept > random_kept + 0.1, (kept, random_kept)
