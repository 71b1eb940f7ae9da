"""Generator interventions: class statistics, ablation, insertion in context, locality of edits.

A hand-made generator/segmenter pair with known causal structure (a door shows only where a
building is) is checked against an exact numpy re-implementation; the embedded toy_generator is
checked for the paper's two claims when its trained weights are installed (slow tests).
"""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.capturing import capture
from jaxdissect.data.scenes import SCENE_LABELS
from jaxdissect.data.zdataset import standard_z_sample
from jaxdissect.dissect import sources
from jaxdissect.edit import Replace, ablate, insert
from jaxdissect.experiments import generator_intervention as gi
from jaxdissect.models.registry import LoadedModel
from jaxdissect.parallel import make_mesh

L = len(SCENE_LABELS)
HOUSE, TREE, SKY, DOOR = (SCENE_LABELS.index(n) for n in ("house", "tree", "sky", "door"))
ZD = 8


# ---- a hand-made generator with known causes -------------------------------------------------
class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def unit_maps(z):
    """(N, 4, 4, 4): building (left half), tree (bottom right, when z1 > 0), door (bottom row of the
    building, strength relu(z2)), sky (top right)."""
    y = jnp.arange(4)[:, None] * jnp.ones((1, 4))
    x = jnp.ones((4, 1)) * jnp.arange(4)[None, :]
    building = (x < 2) * (1.0 + 0.25 * jnp.tanh(z[:, 0]))[:, None, None]
    tree = ((x >= 2) & (y >= 2)) * (z[:, 1] > 0)[:, None, None] * (1.0 + jax.nn.sigmoid(z[:, 1]))[:, None, None]
    door = (x < 2) * (y == 3) * jax.nn.relu(z[:, 2])[:, None, None]
    sky = ((y < 2) & (x >= 2)) * jnp.ones_like(z[:, 3])[:, None, None]
    return jnp.stack([building, tree, door, sky], -1).astype(jnp.float32)


COLORS = {"door": (1.0, -1.0, -1.0), "tree": (-1.0, 1.0, -1.0), "house": (0.0, 0.0, 0.0), "sky": (-1.0, -1.0, 1.0)}


def paint(h):
    """Unit maps -> 16x16 image: door where door and building units are both on, else tree, building, sky."""
    b, t, d, s = (h[..., i:i + 1] > 0.5 for i in range(4))
    col = lambda n: jnp.asarray(COLORS[n])  # noqa: E731
    img = jnp.where(d & b, col("door"), jnp.where(t, col("tree"), jnp.where(b, col("house"),
                    jnp.where(s, col("sky"), -jnp.ones(3)))))
    return jnp.repeat(jnp.repeat(img, 4, 1), 4, 2)


class HandGen(nn.Module):
    @nn.compact
    def __call__(self, z):
        h = Identity(name="layer1")(unit_maps(z))
        h = Identity(name="layer2")(h)
        return Identity(name="output")(paint(h))


def hand_model():
    return LoadedModel("handgen", "generator", HandGen(), {}, {"z_dim": ZD}, None, {"z": "standard_normal"},
                       "layer2", ("layer1", "layer2", "output"), None)


class HandSegmenter:
    """Colours -> labels at the centre pixel of each downsample cell: channel 0 objects, 1 parts."""

    labels = SCENE_LABELS

    def segment(self, images, downsample=1):
        o = downsample // 2
        px = jnp.asarray(images)[:, o::downsample, o::downsample]
        is_ = lambda n: jnp.all(jnp.abs(px - jnp.asarray(COLORS[n])) < 0.1, -1)  # noqa: E731
        obj = jnp.where(is_("door") | is_("house"), HOUSE, jnp.where(is_("tree"), TREE, jnp.where(is_("sky"), SKY, 0)))
        part = jnp.where(is_("door"), DOOR, 0)
        return jnp.stack([obj, part], 1).astype(jnp.int32)


def numpy_maps(z):
    y, x = np.mgrid[0:4, 0:4]
    n = len(z)
    m = np.zeros((n, 4, 4, 4), np.float64)
    m[..., 0] = (x < 2) * (1 + 0.25 * np.tanh(z[:, 0]))[:, None, None]
    m[..., 1] = ((x >= 2) & (y >= 2)) * (z[:, 1] > 0)[:, None, None] * (1 + 1 / (1 + np.exp(-z[:, 1])))[:, None, None]
    m[..., 2] = ((x < 2) & (y == 3)) * np.maximum(z[:, 2], 0)[:, None, None]
    m[..., 3] = ((y < 2) & (x >= 2))
    return m


def numpy_cell_labels(m):
    """Per cell: (object label, part label), as the hand segmenter sees the painted image."""
    b, t, d, s = (m[..., i] > 0.5 for i in range(4))
    obj = np.where(b & d, HOUSE, np.where(t, TREE, np.where(b, HOUSE, np.where(s, SKY, 0))))
    part = np.where(b & d, DOOR, 0)
    return obj, part


def numpy_counts(m, ds_pixels=4):
    obj, part = numpy_cell_labels(m)
    counts = np.zeros((len(m), L))
    for lab in (obj, part):
        for i in range(len(m)):
            counts[i] += np.bincount(lab[i].ravel(), minlength=L) * ds_pixels
    return counts


@pytest.fixture(scope="module")
def fns():
    return gi.GeneratorFns(hand_model(), "layer2", HandSegmenter())


def runner(tmp_path, devices=8, batch=8):
    mesh = make_mesh(devices)
    return gi.PassRunner(str(tmp_path), mesh, batch, checkpoint_every=2, progress=False)


# ---- pure pieces ---------------------------------------------------------------------------------
def test_class_counts_and_fractions_match_numpy():
    rng = np.random.default_rng(0)
    seg = rng.integers(-1, L + 3, size=(5, 3, 6, 4)).astype(np.int32)
    counts = np.asarray(gi.class_counts(seg, L))
    for i in range(5):
        v = seg[i].ravel()
        want = np.bincount(v[(v >= 0) & (v < L)], minlength=L)
        np.testing.assert_array_equal(counts[i], want)
    np.testing.assert_allclose(np.asarray(gi.class_fractions(seg, L)), counts / 24.0, rtol=1e-6)


def test_context_labels_match_numpy():
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 6, size=(3, 2, 8, 12)).astype(np.int32)
    ctx = np.asarray(gi.context_labels(seg, (4, 3), 6))
    for n in range(3):
        for y in range(4):
            for x in range(3):
                want = set(seg[n, :, y * 2 + 1, x * 4 + 2].tolist()) - {0}
                assert set(np.flatnonzero(ctx[n, y, x]).tolist()) == want
    with pytest.raises(ValueError, match="multiple of the layer size"):
        gi.context_labels(seg, (3, 3), 6)


def test_conditional_moments_match_numpy_and_merge():
    rng = np.random.default_rng(2)
    xs = [rng.normal(100, 30, size=(40, 5)).astype(np.float32) for _ in range(3)]
    cs = [rng.random((40, 4)) < 0.4 for _ in range(3)]
    ms = [rng.random(40) < 0.9 for _ in range(3)]
    state = gi.Moments.create(4 * 5)
    for x, c, m in zip(xs, cs, ms):
        state = gi.conditional_update(state, jnp.asarray(x), jnp.asarray(c), jnp.asarray(m))
    count, mean, var = gi.conditional_readout(state, 4)
    X, C, M = np.concatenate(xs).astype(np.float64), np.concatenate(cs), np.concatenate(ms)
    for c in range(4):
        rows = X[C[:, c] & M]
        assert count[c] == len(rows)
        np.testing.assert_allclose(mean[c], rows.mean(0), rtol=1e-5)
        np.testing.assert_allclose(var[c], rows.var(0, ddof=1), rtol=1e-3)


def test_insertion_stack_is_edit_insert_at_each_location():
    stack = gi.insertion_stack([3, 1], [2.5, 7.0], 5, (2, 3))
    acts = jnp.asarray(np.random.default_rng(3).normal(size=(2, 2, 3, 5)), jnp.float32)
    for k, (y, x) in enumerate([(y, x) for y in range(2) for x in range(3)]):
        where = np.zeros((2, 3), np.float32)
        where[y, x] = 1
        one = jax.tree.map(lambda a: a[k], stack)
        np.testing.assert_array_equal(np.asarray(one(acts)), np.asarray(insert([3, 1], [2.5, 7.0], where, 5)(acts)))


def test_best_units_masks():
    m = gi.best_units_masks([4, 0, 2], 3, 5)
    np.testing.assert_array_equal(m, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1]])
    iou = np.asarray([[0, 0, 0], [0.1, 0.3, 0.3]])
    np.testing.assert_array_equal(gi.ranked_units(iou, 1), [1, 2, 0])


# ---- locality of edits on the real toy generator architecture (random weights) ------------------
@pytest.fixture(scope="module")
def random_toy():
    from jaxdissect.models import get_spec

    spec = get_spec("toy_generator")
    cfg = {"z_dim": 64, "channels": [32, 32, 16, 8]}  # the toy architecture, smaller: layer6 is 16x16, images 32x32
    module = spec.build(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64)))  # random weights without
    rng = np.random.default_rng(0)  # compiling the initializers (slow on a busy CPU)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    return LoadedModel(spec.name, spec.kind, module, variables, cfg, None, spec.normalization, "layer6",
                       tuple(f"layer{i}" for i in range(1, 9)), None)


def test_edits_touch_only_the_chosen_layer_and_locations(random_toy):
    z = jnp.asarray(standard_z_sample(3, 64))
    layers = ("layer5", "layer6")
    out0, a0 = capture(random_toy, z, layers)
    units = [3, 5, 11]
    where = np.zeros((16, 16), np.float32)
    where[5, 9] = 1
    out1, a1 = capture(random_toy, z, layers, edits={"layer6": insert(units, [9.0, 8.0, 7.0], where, 16)})
    np.testing.assert_array_equal(np.asarray(a1["layer5"]), np.asarray(a0["layer5"]))  # earlier layer unchanged
    before, after = np.asarray(a0["layer6"]), np.asarray(a1["layer6"])
    touched = np.zeros(before.shape, bool)
    touched[:, 5, 9, units] = True
    np.testing.assert_array_equal(after[~touched], before[~touched])  # other units and positions bit-identical
    np.testing.assert_array_equal(after[:, 5, 9, units], np.broadcast_to([9.0, 8.0, 7.0], (3, 3)))
    assert not np.allclose(np.asarray(out1), np.asarray(out0))
    # ablation: only the chosen units change, to exactly zero
    _, a2 = capture(random_toy, z, layers, edits={"layer6": ablate(units, 16)})
    keep = np.ones(16, bool)
    keep[units] = False
    np.testing.assert_array_equal(np.asarray(a2["layer6"])[..., keep], before[..., keep])
    assert np.all(np.asarray(a2["layer6"])[..., units] == 0)


def test_tail_path_matches_capture_with_edits(random_toy):
    fns = gi.GeneratorFns(random_toy, "layer6", HandSegmenter())
    assert fns.layer_hw == (16, 16) and fns.num_units == 16 and fns.image_hw == (32, 32) and fns.seg_hw == (16, 16)
    z = jnp.asarray(standard_z_sample(2, 64))
    stack = gi.insertion_stack([1, 2], [5.0, 6.0], 16, (16, 16))
    pick = jax.tree.map(lambda a: a[jnp.asarray([0, 37])], stack)
    _, acts = fns.forward(random_toy.variables, z)
    via_tail = np.asarray(fns.edited_images(random_toy.variables, acts, pick))
    for k in range(2):
        one = jax.tree.map(lambda a: a[k], pick)
        want, _ = capture(random_toy, z, (), edits={"layer6": one})
        np.testing.assert_allclose(via_tail[k], np.asarray(want), atol=1e-5)


# ---- the experiments on the hand-made generator, against numpy ------------------------------------
def test_best_unit_ablation_removes_all_tree_pixels(fns, tmp_path):
    src = sources.ZSource(24, ZD)
    iou = np.zeros((L, 4))
    iou[TREE] = [0.0, 0.9, 0.05, 0.0]  # unit 1 is the tree unit, unit 2 second
    ranked = gi.ranked_units(iou, TREE)
    states = gi.segclass_stats(fns, runner(tmp_path), src, gi.ablation_stack(gi.best_units_masks(ranked, 2, 4)),
                               "best_tree")
    table = gi.removal_table(states, TREE, "tree", ranked[:2], L)
    m = numpy_maps(src.z)
    base = numpy_counts(m) / 64.0
    np.testing.assert_allclose(np.asarray(states["baseline"].mean()), base.mean(0), atol=1e-6)
    m1 = m.copy()
    m1[..., 1] = 0
    np.testing.assert_allclose(table.removed, [0.0, 1.0, 1.0], atol=1e-6)
    delta1 = numpy_counts(m1) / 64.0 - base
    np.testing.assert_allclose(table.mean_delta[1], delta1.mean(0), atol=1e-6)
    se = delta1[:, TREE].std(ddof=1) / np.sqrt(24) / base[:, TREE].mean()
    np.testing.assert_allclose(table.hi99[1] - table.removed[1], gi.Z99 * se, rtol=1e-3)


def numpy_insertion(z, value):
    """Exact conditional tally: for each image and cell, door unit := value there; context = labels at the cell."""
    m = numpy_maps(z)
    c0 = numpy_counts(m)
    obj, part = numpy_cell_labels(m)
    deltas = {}
    for i in range(len(z)):
        for y in range(4):
            for x in range(4):
                e = m[i:i + 1].copy()
                e[0, y, x, 2] = value
                d = numpy_counts(e)[0] - c0[i]
                for lab in {obj[i, y, x], part[i, y, x]} - {0}:
                    deltas.setdefault(lab, []).append(d)
    return c0, {k: np.asarray(v) for k, v in deltas.items()}


@pytest.mark.parametrize("devices", [1, 8])
def test_insertion_in_context_matches_numpy(fns, tmp_path, devices):
    src = sources.ZSource(16, ZD)
    value = 1.7
    states = runner(tmp_path, devices).run(
        "insert", gi.insertion_step(fns, chunk=5),
        {"baseline": gi.Moments.create(L), "context": gi.Moments.create(L * L)},
        (fns.model.variables, gi.insertion_stack([2], [value], 4, (4, 4))), src, {"t": 1})
    c0, deltas = numpy_insertion(src.z, value)
    count, mean, var = gi.conditional_readout(states["context"], L)
    assert set(np.flatnonzero(count)) == set(deltas)
    for lab, d in deltas.items():
        assert count[lab] == len(d)
        np.testing.assert_allclose(mean[lab], d.mean(0), atol=1e-4)
        np.testing.assert_allclose(var[lab], d.var(0, ddof=1), rtol=1e-3, atol=1e-3)
    table = gi.context_table(states, DOOR, "door", [2], [value], SCENE_LABELS.names)
    np.testing.assert_allclose(table.baseline_count, c0[:, DOOR].mean(), rtol=1e-6)
    rows = {r["context"]: r for r in table.rows()}
    assert rows["house"]["added"] > 0.2 and rows["sky"]["added"] == 0 and rows["tree"]["added"] == 0


def test_pass_resumes_with_the_same_result(fns, tmp_path):
    src = sources.ZSource(40, ZD)
    stack = gi.ablation_stack(np.eye(4, dtype=np.float32))
    whole = gi.segclass_stats(fns, runner(tmp_path / "a", 4), src, stack, "single")
    r = runner(tmp_path / "b", 4)
    assert gi.segclass_stats(fns, r, src, stack, "single", stop_after=2) is None
    assert os.path.isdir(tmp_path / "b" / "checkpoints" / "single")
    resumed = gi.segclass_stats(fns, r, src, stack, "single")
    for k in whole:
        np.testing.assert_allclose(np.asarray(resumed[k].mean()), np.asarray(whole[k].mean()), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(resumed[k].n), np.asarray(whole[k].n))
    assert not os.path.exists(tmp_path / "b" / "checkpoints" / "single")
    # the same call again gives the same states (that they are read back, not recomputed, is
    # test_finished_pass_is_read_back_not_recomputed's)
    again = gi.segclass_stats(fns, r, src, stack, "single")
    np.testing.assert_array_equal(np.asarray(again["delta"].m2), np.asarray(resumed["delta"].m2))


class CountingSource:
    """A z source that counts the samples it hands out; with `fail`, any read is an error (a pass
    that should be read back from disk must not touch its samples)."""

    kind = "z"
    labels = None

    def __init__(self, n, fail=False):
        self.inner, self.fail, self.seen = sources.ZSource(n, ZD), fail, set()

    def __len__(self):
        return len(self.inner)

    @property
    def loaded(self):
        """Distinct samples read (padding repeats a sample)."""
        return len(self.seen)

    def load(self, indices):
        if self.fail:
            raise AssertionError("a finished pass was recomputed instead of read back")
        self.seen.update(int(i) for i in indices)
        return self.inner.load(indices)


def test_finished_pass_is_read_back_not_recomputed(fns, tmp_path):
    stack = gi.ablation_stack(np.eye(4, dtype=np.float32))
    first = CountingSource(24)
    done = gi.segclass_stats(fns, runner(tmp_path, 2), first, stack, "single", {"units": [1]})
    assert first.loaded == 24 and os.path.isdir(tmp_path / "stages" / "single")
    again = gi.segclass_stats(fns, runner(tmp_path, 2), CountingSource(24, fail=True), stack, "single", {"units": [1]})
    assert set(again) == set(done)
    for k in done:
        for field in ("n", "mean_", "m2"):
            np.testing.assert_array_equal(np.asarray(getattr(again[k], field)), np.asarray(getattr(done[k], field)))


def test_another_batch_size_reads_the_finished_pass_back(fns, tmp_path):
    """What a pass computes does not depend on how its samples are batched (states merge), so
    another batch size reuses the finished pass (and a checkpoint, from the samples done)."""
    eye = np.eye(4, dtype=np.float32)
    first = gi.segclass_stats(fns, runner(tmp_path, 2), CountingSource(24), gi.ablation_stack(eye), "p", {"units": [1]})
    again = gi.segclass_stats(fns, runner(tmp_path, 2, 16), CountingSource(24, fail=True), gi.ablation_stack(eye), "p",
                              {"units": [1]})
    np.testing.assert_array_equal(np.asarray(again["delta"].mean()), np.asarray(first["delta"].mean()))


@pytest.mark.parametrize("change", ["fingerprint", "edits", "samples", "weights"])
def test_changed_setting_recomputes_the_pass(fns, tmp_path, change):
    eye = np.eye(4, dtype=np.float32)
    stale = gi.segclass_stats(fns, runner(tmp_path, 2), CountingSource(24), gi.ablation_stack(eye), "p", {"units": [1]})
    masks, fp, n, batch = eye, {"units": [1]}, 24, 8
    if change == "weights":  # the same generator name with other weights (e.g. retrained)
        other = dataclasses.replace(hand_model(), variables={"params": {"retrained": np.ones(3, np.float32)}})
        fns = gi.GeneratorFns(other, "layer2", HandSegmenter())
    elif change == "fingerprint":
        fp = {"units": [2]}  # e.g. other best units
    elif change == "edits":
        masks = eye[::-1].copy()  # as many edits, other units
    elif change == "samples":
        n = 16
    src = CountingSource(n)
    out = gi.segclass_stats(fns, runner(tmp_path, 2, batch), src, gi.ablation_stack(masks), "p", fp)
    assert src.loaded == n  # every sample read again
    if change in ("edits", "samples"):  # what the new setting gives, not the stale pass
        m = numpy_maps(src.inner.z)
        base = numpy_counts(m) / 64.0
        delta = np.stack([numpy_counts(m * (1 - mask)) / 64.0 - base for mask in masks], 1)  # (N, K, L)
        np.testing.assert_allclose(np.asarray(out["delta"].mean()), delta.reshape(n, -1).mean(0), atol=1e-5)
        assert not np.allclose(np.asarray(out["delta"].mean()), np.asarray(stale["delta"].mean()))
    # the recomputed pass is the one kept: the same call now reads it back
    gi.segclass_stats(fns, runner(tmp_path, 2, batch), CountingSource(n, fail=True), gi.ablation_stack(masks), "p", fp)


@pytest.mark.slow
def test_run_interventions_end_to_end(tmp_path, monkeypatch):
    cfg = gi.GeneratorInterventionConfig(model="handgen", layer="layer2", seg="hand", remove_class="tree",
                                         insert_class="door", sample_size=16, insert_sample_size=8,
                                         dissect_sample_size=32, max_units=3, insert_units=1, batch_size=8,
                                         outdir=str(tmp_path), progress=False, min_context_samples=1, devices=2)
    res = gi.run_experiment(cfg, model=hand_model(), segmenter=HandSegmenter())
    assert res.removal.units[0] == 1 and res.context.units.tolist() == [2]
    assert res.removal.removed[1] == pytest.approx(1.0)
    assert res.context.values[0] > 0.5
    rows = {r["context"]: r for r in res.context.rows()}
    assert rows["house"]["added"] > 0 and rows["sky"]["added"] == 0
    d = res.directory
    for f in ("tables.npz", "tables.json", "removal_tree.png", "context_door.png", "ablation_tree.png",
              "insertion_door.png"):
        assert os.path.getsize(os.path.join(d, f)) > 0, f
    tables = json.load(open(os.path.join(d, "tables.json")))
    assert tables["removal"]["curve"][1]["removed"] == pytest.approx(1.0)
    assert len(tables["single_units"]) == 4 and tables["single_units"][1]["most_removed"] == "tree"
    page = open(os.path.join(os.path.dirname(d), "report.html")).read()
    assert "Generator interventions" in page and "generator_intervention/removal_tree.png" in page
    # a second run reuses every finished pass and renders the section once
    computed = []
    save = gi.StageStore.save
    monkeypatch.setattr(gi.StageStore, "save", lambda self, name, *a: (computed.append(name), save(self, name, *a)))
    gi.run_experiment(cfg, model=hand_model(), segmenter=HandSegmenter())
    assert computed == []
    page = open(os.path.join(os.path.dirname(d), "report.html")).read()
    assert page.count("<h2>Generator interventions</h2>") == 1
    # fewer best units: only that pass is computed again
    res2 = gi.run_experiment(dataclasses.replace(cfg, max_units=2), model=hand_model(), segmenter=HandSegmenter())
    assert computed == ["ablate_best_tree"] and len(res2.removal.removed) == 3


def test_report_outputs_and_section(tmp_path):
    from PIL import Image

    from jaxdissect.experiments import generator_report as gr
    from jaxdissect.report.report_json import write_report_json

    names = SCENE_LABELS.names
    removal = gi.RemovalTable("tree", np.asarray([1, 2]), np.arange(3), 0.2, np.asarray([0.0, 0.6, 0.9]),
                              np.asarray([0.0, 0.5, 0.8]), np.asarray([0.0, 0.7, 1.0]), np.zeros((3, L)), 16)
    added = np.zeros(L)
    added[[HOUSE, SKY]] = [0.5, 0.0]
    samples = np.zeros(L, int)
    samples[[HOUSE, SKY, TREE]] = [40, 30, 2]
    context = gi.ContextTable("door", np.asarray([2]), np.asarray([1.5]), 10.0, list(names), samples, added * 10,
                              np.ones(L), added, np.full(L, 0.1), np.full(L, 0.05))
    assert [r["context"] for r in context.rows(3)] == ["house", "sky"]
    res = gi.InterventionResult(str(tmp_path / "d" / "generator_intervention"), "layer2", removal, context,
                                np.eye(4, L) * -0.1, np.full(L, 0.01), names, {"x_s": 1.0})
    os.makedirs(res.directory)
    gr.save_tables(res.directory, res)
    t = json.load(open(os.path.join(res.directory, "tables.json")))
    assert [c["removed"] for c in t["removal"]["curve"]] == [0.0, 0.6, 0.9]
    assert t["insertion"]["contexts"][0] == {"context": "house", "samples": 40, "added": 0.5, "mean_delta_pixels": 5.0,
                                             "err": 0.1, "ci99": 0.05}
    assert t["single_units"][1]["most_removed"] == names[1]
    npz = np.load(os.path.join(res.directory, "tables.npz"))
    np.testing.assert_array_equal(npz["removal"], removal.removed)
    for png in (gr.removal_plot(removal), gr.context_plot(context.rows(3), "door")):
        assert Image.open(__import__("io").BytesIO(png)).size[0] > 100
    boxed = gr.draw_box(np.zeros((8, 8, 3), np.uint8), 2, 2, 6, 6)
    assert (boxed[2, 2:6] == [255, 255, 0]).all() and (boxed[5, 2:6] == [255, 255, 0]).all() and (boxed[3:5, 3:5] == 0).all() and (boxed[:2] == 0).all()
    write_report_json(str(tmp_path / "d" / "report.json"), {"name": "hand", "layer": "layer2"},
                      [{"image": "image/unit0.jpg", "unit": 0, "iou": 0.1, "label": "tree", "cat": "object"}])
    section = {"title": gr.SECTION_TITLE, "html": gr.section_html(res, 3, [0, 2])}
    assert "<script" not in section["html"] and "half are gone after 1 units" in section["html"]
    for _ in range(2):
        gr.add_report_section(str(tmp_path / "d"), section)
    page = open(tmp_path / "d" / "report.html").read()
    assert page.count("<h2>Generator interventions</h2>") == 1 and "generator_intervention/context_door.png" in page


def test_bad_input_is_named(fns, random_toy):
    with pytest.raises(ValueError, match="unknown layer 'layer99'"):
        gi.GeneratorFns(random_toy, "layer99", HandSegmenter())
    with pytest.raises(ValueError, match="one leading axis"):
        gi.stack_size(Replace(jnp.zeros((3, 4)), jnp.zeros((2, 4))))
    with pytest.raises(KeyError, match="unknown label 'unicorn'"):
        SCENE_LABELS.index("unicorn")


# ---- the paper's claims on the embedded toy generator (needs its trained weights) ----------------
def _toy_weights_installed():
    import jaxdissect

    root = os.path.join(os.path.dirname(jaxdissect.__file__), "weights")
    return all(os.path.exists(os.path.join(root, n, "meta.json")) for n in ("toy_generator", "toy_segmenter"))


toy_only = pytest.mark.skipif(not _toy_weights_installed(), reason="toy_generator/toy_segmenter weights not installed")


@pytest.fixture(scope="module")
def toy_dissection(tmp_path_factory):
    cfg = gi.GeneratorInterventionConfig(outdir=str(tmp_path_factory.mktemp("toy")), dissect_sample_size=200,
                                         batch_size=10, progress=False)
    model, segmenter, result, sketch = gi.dissected_layer(cfg)
    return cfg, gi.GeneratorFns(model, result.layer, segmenter), result, sketch


@toy_only
@pytest.mark.slow
def test_toy_zeroing_top_units_removes_half_the_class(toy_dissection, tmp_path):
    cfg, fns, result, _ = toy_dissection
    label, _ = gi.DEFAULT_CLASSES["toy_generator"]
    lab = SCENE_LABELS.index(label)
    ranked = gi.ranked_units(result.iou, lab)
    masks = gi.best_units_masks(ranked, 20, fns.num_units)[[0, 5, 10, 20]]
    states = gi.segclass_stats(fns, runner(tmp_path, 4, 8), sources.ZSource(64, 64), gi.ablation_stack(masks),
                               "best")
    table = gi.removal_table(states, lab, label, ranked, L)
    assert table.baseline_fraction > 0.005, table.baseline_fraction
    assert table.removed[0] == 0
    assert table.removed[-1] >= 0.5, table.removed
    assert table.lo99[-1] > 0.25, table.lo99


@toy_only
@pytest.mark.slow
def test_toy_insertion_adds_the_class_where_context_allows(toy_dissection, tmp_path):
    cfg, fns, result, sketch = toy_dissection
    _, label = gi.DEFAULT_CLASSES["toy_generator"]
    lab = SCENE_LABELS.index(label)
    units = gi.ranked_units(result.iou, lab)[:20]
    values = np.asarray(sketch.quantiles([0.995]))[units, 0]
    states = runner(tmp_path, 4, 8).run(
        "insert", gi.insertion_step(fns), {"baseline": gi.Moments.create(L), "context": gi.Moments.create(L * L)},
        (fns.model.variables, gi.insertion_stack(units, values, fns.num_units, fns.layer_hw)),
        sources.ZSource(16, 64), {})
    table = gi.context_table(states, lab, label, units, values, SCENE_LABELS.names)
    rows = table.rows(min_samples=40)
    objects = [r for r in rows if SCENE_LABELS.categories[SCENE_LABELS.index(r["context"])] == "object"]
    assert len(objects) >= 3, rows
    best, worst = objects[0], objects[-1]
    assert best["mean_delta_pixels"] > 0
    # the best context gains clearly more than the least receptive one (beyond both 99% intervals)
    assert best["added"] - best["ci99"] > worst["added"] + worst["ci99"], (best, worst)
