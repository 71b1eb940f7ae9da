"""The adversarial experiment: groups and intervals against hand cases, masked_delta's look, and
the whole driver on a planted-unit classifier (attacks change exactly the planted units; resume
on the pass engine; device counts; example pictures attacked again), plus the paper's finding on
the trained toy classifier (slow)."""
import dataclasses
import json
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import models, parallel
from jaxdissect.dissect import sources
from jaxdissect.experiments import adversarial as adv
from jaxdissect.experiments import adversarial_report as rep
from jaxdissect.experiments import attacks as A
from jaxdissect.models.registry import LoadedModel

UNIT_FREE = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


# ---- pure pieces --------------------------------------------------------------------------


def test_group_changes_split_image_unit_pairs_like_the_original():
    ranking = np.array([[0, 1, 2, 3, 4, 5], [2, 3, 0, 1, 4, 5], [5, 4, 3, 2, 1, 0]])
    change = np.arange(12, dtype=np.float32).reshape(2, 6) * np.array([[1], [-1]])
    g = adv.group_changes(change, ranking, targets=np.array([0, 2]), sources=np.array([1, 0]), k=2)
    # image 0: target 0 -> units 0, 1; source 1 -> units 2, 3; others 4, 5
    # image 1: target 2 -> units 5, 4; source 0 -> units 0, 1; others 2, 3 (|values|)
    np.testing.assert_array_equal(g["target"], [0, 1, 11, 10])
    np.testing.assert_array_equal(g["source"], [2, 3, 6, 7])
    np.testing.assert_array_equal(np.sort(g["other"]), [4, 5, 8, 9])
    # A unit important to both classes is in both groups and not in 'other'.
    g = adv.group_changes(change[:1], ranking, targets=np.array([0]), sources=np.array([0]), k=2)
    np.testing.assert_array_equal(g["target"], g["source"])
    np.testing.assert_array_equal(g["other"], [2, 3, 4, 5])
    with pytest.raises(ValueError, match="units"):
        adv.group_changes(change[:, :5], ranking, np.array([0, 1]), np.array([1, 0]))


def test_interval_is_mean_plus_minus_2_58_standard_errors():
    v = np.array([1.0, 2.0, 4.0, 7.0])
    out = adv.interval(v)
    se = np.sqrt(np.mean((v - 3.5) ** 2)) / 2  # std with ddof 0, over sqrt(4)
    assert out["mean"] == 3.5 and out["n"] == 4
    assert out["se"] == pytest.approx(se)
    assert out["low"] == pytest.approx(3.5 - 2.58 * se) and out["high"] == pytest.approx(3.5 + 2.58 * se)
    assert np.isnan(adv.interval(np.zeros(0))["mean"])


def test_peak_activations():
    acts = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 5)))
    np.testing.assert_array_equal(adv.peak_activations(acts), np.asarray(acts).max(axis=(1, 2)))
    np.testing.assert_array_equal(adv.peak_activations(acts[:, 0, 0]), acts[:, 0, 0])


def test_masked_delta_outlines_rises_in_green_and_falls_in_red():
    image = np.full((6, 6, 3), 200, np.uint8)
    delta = np.zeros((6, 6))
    delta[1, 1] = 5.0  # rose
    delta[4, 4] = -5.0  # fell
    out = rep.masked_delta(image, delta, above=1.0, below=-1.0)
    np.testing.assert_array_equal(out[1, 1], [200, 200, 200])  # inside: the image
    np.testing.assert_array_equal(out[4, 4], [200, 200, 200])
    np.testing.assert_array_equal(out[0, 0], [0, 255, 0])  # 8-neighbour of the rise: green border
    np.testing.assert_array_equal(out[3, 5], [255, 0, 0])  # 8-neighbour of the fall: red border
    np.testing.assert_array_equal(out[0, 5], [100, 100, 100])  # elsewhere: half brightness
    with pytest.raises(ValueError, match="shape"):
        rep.masked_delta(image, delta[:5], 1.0, -1.0)
    np.testing.assert_array_equal(rep.perturbation_image(np.array([[[0.0, 0.02, -0.005]]])), [[[128, 255, 64]]])


# ---- a classifier whose units for each class are planted -----------------------------------
K, U, SIDE = 4, 20, 16  # classes (plus a never-true background class K), units, image side
WEIGHTS = np.zeros((U, K + 1), np.float32)
for u in range(4 * K):
    WEIGHTS[u, u // 4] = 4 - u % 4  # class c's units are 4c .. 4c+3 with weights 4, 3, 2, 1
BIAS = np.array([-5.0] * K + [0.0], np.float32)  # units 16 .. 19 feed no class


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def to_units(x):
    """(N, 16, 16, 3) -> (N, 4, 4, 48) by 4x4 space-to-depth; the first 20 channels are the units."""
    n = x.shape[0]
    return x.reshape(n, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 4, 4, 48)[..., :U]


class PlantedClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        units = Identity(name="units")(to_units(x))
        return units.mean(axis=(1, 2)) @ jnp.asarray(WEIGHTS) + jnp.asarray(BIAS)


def planted_model():
    return LoadedModel("planted_classifier", "classifier", PlantedClassifier(), {}, {}, (SIDE, SIDE), UNIT_FREE,
                       "units", ("units",), tuple(f"class{c}" for c in range(K)) + ("background",))


class ArraySource:
    kind = "images"

    def __init__(self, images, labels, classes, fail_at_call=None, fail_when=None):
        self.images, self.labels, self.classes = images, labels, tuple(classes)
        self.fail_at_call, self.calls = fail_at_call, 0
        self.fail_when = fail_when  # indices -> True: that load is killed (once)

    def __len__(self):
        return len(self.images)

    def load(self, indices):
        idx = np.asarray(indices, np.int64)
        self.calls += 1
        if self.calls - 1 == self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        if self.fail_when is not None and self.fail_when(idx):
            self.fail_when = None
            raise KeyboardInterrupt("simulated kill")
        return sources.Batch(idx.astype(np.int32), self.images[idx], np.ones(len(idx), bool),
                             labels=self.labels[idx].astype(np.int32))


def planted_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    maps = rng.uniform(0.1, 0.5, (n, 4, 4, 48))
    for i, c in enumerate(labels):
        maps[i, :, :, 4 * c:4 * c + 4] += rng.uniform(0.1, 0.4, (1, 1, 4))  # per image and unit
    # Inverse of to_units: (N, 4, 4, 48) -> (N, 16, 16, 3).
    images = maps.reshape(n, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, SIDE, SIDE, 3)
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def planted_sources(fail_at_call=None, fail_when=None):
    classes = planted_model().labels
    return (ArraySource(*planted_data(300, 1), classes),
            ArraySource(*planted_data(120, 2), classes, fail_at_call=fail_at_call, fail_when=fail_when))


CW = A.CWConfig(binary_search_steps=4, steps=150, learning_rate=0.02, initial_const=1.0)


def planted_config(tmp_path, devices=None, **kw):
    settings = dict(model="planted_classifier", dataset="planted", targets=("class0", "class2"), images_per_target=10,
                    attack=CW, batch_size=8, devices=devices, outdir=str(tmp_path), examples=1, progress=False)
    return adv.AdversarialConfig(**{**settings, **kw})


def run_planted(tmp_path, devices=None, val=None, **kw):
    train, default_val = planted_sources()
    val = default_val if val is None else val
    return adv.run_experiment(planted_config(tmp_path, devices, **kw), model=planted_model(), train_source=train,
                              attack_source=val)


def test_planted_classifier_attacks_change_exactly_the_planted_units(tmp_path):
    result = run_planted(tmp_path)
    # The ranking from single-unit ablation finds each class's planted units.
    for c in range(K):
        assert set(result.ranking[c, :4]) == set(range(4 * c, 4 * c + 4)), result.ranking[c]
    s = result.summary["all"]
    assert s["attacked"] == 20 and s["success_rate"] == 1.0
    for name, rec in result.records.items():
        t = rec.target
        assert (rec.labels != t).all() and (rec.sources != t).all() and (rec.predicted == t).all()
        change = rec.peak_adv - rec.peak_orig
        # The target's planted units rose; units that feed no class did not move, except for
        # the tanh round trip of CW (x -> arctanh((2x - 1) * 0.999999) -> x moves x by <= 5e-7).
        assert (change[:, 4 * t:4 * t + 4] > 0).all()
        assert np.abs(change[:, 16:]).max() <= 1e-6
        # Images predicted as a real class lose activation in that class's units.
        real = rec.sources < K
        for i in np.flatnonzero(real):
            src = rec.sources[i]
            assert change[i, 4 * src:4 * src + 4].mean() < 0
        # Group values are the per-image |changes| of those units.
        g = adv.group_changes(change, result.ranking, np.full(len(change), t), rec.sources)
        assert g["target"].mean() > 3 * g["other"].mean()
    assert s["groups"]["target"]["low"] > s["groups"]["other"]["high"]
    assert s["mean_l2"] > 0 and np.isfinite(s["mean_l2"])
    # Outputs: summary, per-image table, bar chart, examples, the adversarial images themselves.
    with open(os.path.join(result.directory, "summary.json")) as f:
        saved = json.load(f)
    assert saved["all"]["succeeded"] == 20 and saved["attack"]["name"] == "cw"
    with open(os.path.join(result.directory, "peak_change.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(os.listdir(os.path.join(result.directory, "examples"))) == 2
    # The attacks are kept as per-image records of the pass engine's stages, no images: the
    # adversarial images are attacked again, exactly as the pass did (same seeds, batch, devices).
    assert sorted(os.listdir(os.path.join(result.directory, "stages"))) == ["attacks_0", "attacks_2", "predictions"]
    assert not os.path.exists(os.path.join(result.directory, "checkpoints", "attacks_0"))
    assert not os.path.exists(os.path.join(result.directory, "adversarial"))
    rec = result.records["class0"]
    _, val = planted_sources()
    again = adv.attack_images(planted_model(), "units", val, 0, rec.indices[:8], planted_config(tmp_path),
                              parallel.make_mesh())
    for field in ("success", "predicted", "l2", "linf"):
        np.testing.assert_array_equal(again[field], getattr(rec, field)[:8], err_msg=field)
    np.testing.assert_array_equal(again["peak_adv"], rec.peak_adv[:8])
    np.testing.assert_array_equal(again["original"], val.images[rec.indices[:8]])
    logits = PlantedClassifier().apply({}, jnp.asarray(again["adversarial"]))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), 0)  # the adversarial images themselves
    np.testing.assert_allclose(np.linalg.norm((again["adversarial"] - again["original"] / 255.0).reshape(8, -1),
                                              axis=1), rec.l2[:8], rtol=1e-3)


def test_attacks_pass_stopped_and_resumed_equals_one_run(tmp_path):
    """The attacks of a target are a pass of the engine: stopped after a batch (checkpointed),
    resumed, they equal an uninterrupted run exactly; once stored they are read back, and other
    settings (another seed) are not mixed in."""
    model, (_, val) = planted_model(), planted_sources()
    cfg = planted_config(tmp_path, devices=4, batch_size=4, checkpoint_every=1)
    mesh = parallel.make_mesh(4)
    indices = np.array([5, 17, 3, 60, 41, 2, 99, 7, 23, 11])
    labels = val.labels[indices]
    whole = adv.attack_target(model, "units", val, 1, indices, labels, cfg, mesh)  # no folder: nothing kept
    folder = str(tmp_path / "run")
    assert adv.attack_target(model, "units", val, 1, indices, labels, cfg, mesh, directory=folder,
                             stop_after=1) is None
    assert os.path.isdir(os.path.join(folder, "checkpoints", "attacks_1"))
    counting = ArraySource(val.images, val.labels, val.classes)
    resumed = adv.attack_target(model, "units", counting, 1, indices, labels, cfg, mesh, directory=folder)
    assert counting.calls == 2  # 3 batches of 4: the first was checkpointed
    assert not os.path.exists(os.path.join(folder, "checkpoints", "attacks_1"))  # cleared once stored
    fields = ("target", "indices", "labels", "sources", "success", "predicted", "l2", "linf", "peak_orig", "peak_adv")
    for field in fields:
        np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field), err_msg=field)
    assert whole.success.all() and (whole.predicted == 1).all()
    reading = ArraySource(val.images, val.labels, val.classes)
    stored = adv.attack_target(model, "units", reading, 1, indices, labels, cfg, mesh, directory=folder)
    assert reading.calls == 0
    for field in fields:
        np.testing.assert_array_equal(getattr(stored, field), getattr(whole, field), err_msg=field)
    other = ArraySource(val.images, val.labels, val.classes)
    adv.attack_target(model, "units", other, 1, indices, labels, dataclasses.replace(cfg, seed=1), mesh,
                      directory=folder)
    assert other.calls == 3  # another seed: the stored attacks are not reused
    nothing = adv.attack_target(model, "units", val, 1, indices[:0], labels[:0], cfg, mesh, directory=folder)
    assert nothing.success.shape == (0,) and nothing.peak_adv.shape == (0, U)


def test_an_example_whose_attack_does_not_reproduce_is_left_out(tmp_path, monkeypatch):
    """The pictures re-attack their images; one whose attack no longer matches its record is
    left out with a warning, the others are drawn."""
    model = planted_model()
    _, val = planted_sources()
    images = val.images[:2]
    record = adv.TargetRecord(target=0, indices=np.array([0, 1]), labels=val.labels[:2], sources=np.array([1, 2]),
                              success=np.array([True, True]), predicted=np.array([0, 0]), l2=np.ones(2),
                              linf=np.ones(2), peak_orig=np.zeros((2, U), np.float32),
                              peak_adv=np.zeros((2, U), np.float32))
    result = adv.AdversarialResult(str(tmp_path), model.name, "units", {}, model.labels, np.zeros((K + 1, U)),
                                   {"class0": record}, {})

    def replayed(model_, layer, source, target, indices, config, mesh):
        return {"success": np.array([True, False]), "predicted": np.array([0, 3]), "original": images,
                "adversarial": images.astype(np.float32) / 255.0}

    monkeypatch.setattr(adv, "attack_images", replayed)
    with pytest.warns(UserWarning, match="image 1 attacked towards 'class0' again gave success False, class 3"):
        examples = adv.collect_examples(result, model, val, planted_config(tmp_path, examples=2), parallel.make_mesh(1))
    assert [e.index for e in examples] == [0]
    assert examples[0].maps_original.shape == (4, 4, U)


def test_ranking_is_the_intervention_experiments_own_cached_stage(tmp_path):
    """The attack experiment ranks units exactly as the classifier intervention experiment does
    (same fingerprint, same tie-break), so that experiment reads the stage back instead of
    recomputing it: here from a source that fails on its first read."""
    from jaxdissect import parallel
    from jaxdissect.experiments import classifier_ablation as ca
    from jaxdissect.passes import StageStore

    result = run_planted(tmp_path)
    model = planted_model()
    icfg = ca.ClassifierAblationConfig(model=model.name, dataset="planted", outdir=str(tmp_path), batch_size=8,
                                 progress=False)
    stages = StageStore(ca.experiment_dir(icfg, model.name, "units"))
    train, _ = planted_sources()
    unreadable = ArraySource(train.images, train.labels, train.classes, fail_at_call=0)
    single = np.concatenate([np.zeros((1, U), np.float32), np.eye(U, dtype=np.float32)])
    stage = ca.run_masks_stage(stages, "train_single", model, "units", unreadable, single, K + 1, icfg,
                               parallel.make_mesh(1), {**ca.stage_fingerprint(model, "units"), "split": "train"}, "")
    assert unreadable.calls == 0
    np.testing.assert_array_equal(ca.ranking_from_stage(stage, icfg.tie_break), result.ranking)


def test_killed_run_resumes_on_another_device_count_with_the_same_results(tmp_path):
    _, val = planted_sources()
    full = run_planted(tmp_path / "a", devices=8, val=val)
    last = set(full.records["class2"].indices[8:].tolist())  # the last attack batch (8 images a batch)
    assert set(full.records["class0"].indices[8:].tolist()) != last
    # Killed while loading the last attack batch (checkpoints after every batch); rerun with
    # another device count.
    _, dying = planted_sources(fail_when=lambda idx: set(idx.tolist()) == last)
    with pytest.raises(KeyboardInterrupt):
        run_planted(tmp_path / "b", devices=2, val=dying, checkpoint_every=1)
    folder = os.path.join(tmp_path / "b", os.path.basename(full.directory))
    assert os.path.isdir(os.path.join(folder, "checkpoints", "attacks_2"))
    _, again = planted_sources()
    resumed = run_planted(tmp_path / "b", devices=2, val=again, checkpoint_every=1)
    # The predictions and the first target were read back and one batch attacked; then the two
    # example images (one per target) were attacked again for the pictures.
    assert again.calls == 1 + 2
    for name in full.records:
        a, b = full.records[name], resumed.records[name]
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.success, b.success)
        np.testing.assert_allclose(a.l2, b.l2, rtol=1e-4)
        np.testing.assert_allclose(a.peak_adv, b.peak_adv, atol=1e-4)
    assert resumed.summary["all"]["succeeded"] == full.summary["all"]["succeeded"]


def test_bad_inputs_get_clear_errors(tmp_path):
    train, val = planted_sources()
    model = planted_model()
    with pytest.raises(ValueError, match="unknown class 'kitchen'"):
        adv.run_experiment(adv.AdversarialConfig(dataset="planted", targets=("kitchen",), outdir=str(tmp_path),
                                                 progress=False), model=model, train_source=train, attack_source=val)
    bad = tmp_path / "ranking.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(ValueError, match="neither 'ranking'"):
        adv.load_ranking(str(bad), K + 1, U)
    np.savez(bad, ranking=np.zeros((K + 1, U - 1), np.int64))
    with pytest.raises(ValueError, match="layer has 20 units"):
        adv.load_ranking(str(bad), K + 1, U)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read ranking file"):
        adv.load_ranking(str(tmp_path / "junk.npz"), K + 1, U)


def load_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "adversarial.py")
    spec = importlib.util.spec_from_file_location("adversarial_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_defaults_and_the_papers_setting():
    script = load_script()
    toy = script.config_from_args(script.parse_args([]))
    assert toy.model == "toy_classifier" and toy.dataset == "scenes" and toy.attack == adv.FAST_CW
    assert script.config_from_args(script.parse_args(["--steps", "7"])).attack.steps == 7
    paper = script.config_from_args(script.parse_args(["--model", "vgg16", "--dataset", "places"]))
    assert paper.model == "vgg16_places" and paper.attack == A.CWConfig()  # foolbox's defaults
    assert adv.default_targets("places", ()) == ("bedroom", "computer_room", "hangar-indoor", "ski_resort",
                                                 "volleyball_court-outdoor")
    pgd = script.config_from_args(script.parse_args(["--attack", "pgd_l2", "--epsilon", "0.5", "--steps", "9"]))
    assert pgd.attack == A.PGDConfig(norm="l2", epsilon=0.5, steps=9)


@pytest.mark.slow
def test_the_papers_finding_on_the_toy_world(tmp_path):
    """The target's 4 most important units change more than the other units, with a stated margin:
    the pooled target mean is at least 1.5 x the other units' mean and the 99% intervals do not
    overlap (fixed seeds: scenes seed 0, image order seed 0)."""
    model = models.load("toy_classifier")  # shipped in the package: missing or broken weights fail the test
    cfg = adv.AdversarialConfig(targets=("street", "forest", "harbour"), images_per_target=4, train_size=400,
                                attack=A.CWConfig(binary_search_steps=2, steps=30, learning_rate=0.1,
                                                  initial_const=10.0),
                                batch_size=8, outdir=str(tmp_path), examples=1, progress=False)
    result = adv.run_experiment(cfg, model=model)
    s = result.summary["all"]
    print(json.dumps({k: s[k] for k in ("attacked", "succeeded", "success_rate", "mean_l2")}),
          json.dumps(s["groups"]))
    assert s["success_rate"] >= 0.75
    target, other = s["groups"]["target"], s["groups"]["other"]
    assert target["mean"] >= 1.5 * other["mean"], (target, other)
    assert target["low"] > other["high"], (target, other)


def test_a_broken_shipped_checkpoint_fails_the_papers_finding(tmp_path, monkeypatch):
    """A corrupt packaged checkpoint (read errors are ValueErrors) must fail, not skip."""
    from weight_conversion.errors import PthReadError

    def broken(name, weights=None):
        raise PthReadError(f"{name}: truncated checkpoint")

    monkeypatch.setattr(models, "load", broken)
    try:
        test_the_papers_finding_on_the_toy_world(tmp_path)
    except pytest.skip.Exception:
        pytest.fail("a broken shipped checkpoint skipped the test instead of failing it")
    except PthReadError as e:
        assert "truncated" in str(e)
    else:
        pytest.fail("the test passed with a broken checkpoint")
