"""The dissection pipeline end to end: planted concepts, outputs, devices, caches, resume, locking."""
import json
import os

import numpy as np
import pytest

from jaxdissect.array_cache import ArrayCache
from jaxdissect.dissect import DissectConfig, dissect, runstate, sources
from planted import EncodedScenes, planted_model

PLANTED_DIR = "planted-scenes-scenes-planted-500-t32"


def config(tmp_path, **kw):
    base = dict(outdir=str(tmp_path), quantile=0.5, batch_size=8, progress=False, checkpoint_every=2,
                thumbsize=32, topk=10)
    base.update(kw)
    return DissectConfig(**base)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    [result] = dissect(config(out, devices=1), model=planted_model(), source=EncodedScenes(size=40))
    return out, result


def test_planted_units_are_labelled_with_their_own_label(planted_run):
    _, r = planted_run
    # Every unit whose label occurs in the data, of the planted categories, finds itself exactly.
    present = np.asarray([r.iou[:, u].max() > 0 for u in range(len(r.best_label))])
    planted = [u for u in range(1, 44) if present[u]]
    assert len(planted) >= 25
    for u in planted:
        # its own label is the best (a label covering the same pixels, like crown and foliage,
        # may tie; ties go to the lower id), at IoU >= 0.9
        assert r.iou[u, u] == r.best_iou[u], (u, r.label_names[u], r.label_names[r.best_label[u]])
        assert r.best_iou[u] >= 0.9, (u, r.best_iou[u])
    assert np.mean([r.best_label[u] == u for u in planted]) > 0.8


def test_outputs_written(planted_run):
    out, r = planted_run
    d = r.directory
    assert os.path.basename(d) == PLANTED_DIR
    for f in ("report.json", "report.html", "concepts.svg", "done.txt", "fingerprint.json", "image/unit1.jpg",
              "stats/activations/quantiles", "stats/activations/topk", "stats/activations/top_maps",
              "stats/thresholds.json", "stats/iou/iou", "cache/activations/array.zarr"):
        assert os.path.exists(os.path.join(d, f)), f
    report = json.load(open(os.path.join(d, "report.json")))
    assert len(report["units"]) == 55
    assert report["units"][1]["label"] == "sky" and report["units"][1]["cat"] == "object"
    assert not os.path.exists(os.path.join(d, runstate.LOCK_FILE))
    assert not os.path.exists(os.path.join(d, "checkpoints"))


@pytest.mark.parametrize("devices", [4, pytest.param(2, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)])
def test_device_count_gives_identical_results(planted_run, tmp_path, devices):
    _, one = planted_run
    [four] = dissect(config(tmp_path, devices=devices), model=planted_model(), source=EncodedScenes(size=40))
    assert_same(four, one)


def assert_same(a, b):
    np.testing.assert_array_equal(a.best_label, b.best_label)
    np.testing.assert_allclose(a.iou, b.iou, atol=1e-6)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    np.testing.assert_array_equal(a.topk_indices, b.topk_indices)


class Crashing(EncodedScenes):
    """Fails once when asked for a given sample, like a run killed mid-pass."""

    def __init__(self, fail_at, **kw):
        super().__init__(**kw)
        self.fail_at = fail_at

    def load(self, indices):
        if self.fail_at is not None and self.fail_at in list(indices):
            self.fail_at = None
            raise KeyboardInterrupt("simulated kill")
        return super().load(indices)


def test_killed_run_resumes_to_identical_results(planted_run, tmp_path):
    _, reference = planted_run
    src = Crashing(fail_at=30, size=40)
    with pytest.raises(KeyboardInterrupt):
        dissect(config(tmp_path, devices=2), model=planted_model(), source=src)
    d = os.path.join(tmp_path, PLANTED_DIR)
    meta = json.load(open(os.path.join(d, "checkpoints", "activations", "meta.json")))
    assert meta["samples_done"] == 16  # checkpointed before the kill (2 batches of 8)
    assert not os.path.exists(os.path.join(d, runstate.LOCK_FILE))
    [resumed] = dissect(config(tmp_path, devices=2), model=planted_model(), source=src)
    assert_same(resumed, reference)


def test_a_killed_run_resumes_with_another_batch_size_and_device_count(planted_run, tmp_path):
    """The checkpoint counts samples done (a prefix), so the rest can be batched differently."""
    _, reference = planted_run
    src = Crashing(fail_at=30, size=40)
    with pytest.raises(KeyboardInterrupt):
        dissect(config(tmp_path, devices=2), model=planted_model(), source=src)
    [resumed] = dissect(config(tmp_path, devices=3, batch_size=7), model=planted_model(), source=src)
    assert_same(resumed, reference)


def test_second_run_on_a_locked_folder_exits_with_message(tmp_path):
    d = os.path.join(tmp_path, PLANTED_DIR)
    with runstate.ExclusiveRun(d):
        with pytest.raises(runstate.RunLockedError, match="another run"):
            dissect(config(tmp_path), model=planted_model(), source=EncodedScenes(size=8))


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    import socket

    (d / runstate.LOCK_FILE).write_text(f"999999999@{socket.gethostname()}\n")
    with runstate.ExclusiveRun(d):
        assert (d / runstate.LOCK_FILE).read_text().startswith(str(os.getpid()))


def test_several_layers_in_one_run(tmp_path):
    import small_models

    model = small_models.tiny_classifier(size=32)
    cfg = config(tmp_path, quantile=0.01, layers=("features.conv2", "features.conv3"), devices=2)
    results = dissect(cfg, model=model, source=sources.ScenesSource(size=16, image_size=32))
    assert [r.layer for r in results] == ["features.conv2", "features.conv3"]
    assert [r.iou.shape for r in results] == [(55, 16), (55, 12)]
    for r in results:
        report = json.load(open(os.path.join(r.directory, "report.json")))
        assert report["header"]["layer"] == r.layer and len(report["units"]) == r.iou.shape[1]
        assert os.path.exists(os.path.join(r.directory, "report.html"))
    assert results[0].directory != results[1].directory


def test_scenes_source_memory_cache_serves_identical_batches(monkeypatch):
    from jaxdissect.data.scenes import Scenes

    idx = np.array([3, 0, 7])
    direct = Scenes("val", 8, image_size=32).batch(idx)
    cached = sources.ScenesSource(size=8, image_size=32)
    rendered = []
    render = Scenes.__getitem__
    monkeypatch.setattr(Scenes, "__getitem__", lambda self, i: rendered.append(i) or render(self, i))
    for _ in range(2):  # the second read comes from memory
        b = cached.load(idx)
        np.testing.assert_array_equal(b.inputs, direct["image"])
        np.testing.assert_array_equal(b.segmentation, direct["segmentation"])
        assert b.segmentation.dtype == np.int32
        np.testing.assert_array_equal(b.labels, direct["scene"])
    assert rendered == [3, 0, 7]
    # A budget of two scenes keeps the first two and renders the rest again each time.
    small = sources.ScenesSource(size=8, image_size=32, cache_bytes=2 * 32 * 32 * 7 + 8)
    small.load(idx)
    small.load(idx)
    assert sorted(small._cache) == [0, 3]


def test_more_values_than_the_sketch_counts_is_refused_up_front(tmp_path):
    class Huge(sources.ZSource):
        def __len__(self):
            return 2**31 // (64 * 64) + 1  # one sample more than int32 counts hold at 64 x 64

    with pytest.raises(ValueError, match="values per unit, more than the quantile sketch counts"):
        dissect(DissectConfig(model="toy_generator", outdir=str(tmp_path), progress=False),
                source=Huge(4, 64))
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_activation_cache_holds_the_layer_at_its_own_resolution(planted_run):
    """The cache's rows are the layer's activations of each sample, NHWC at layer resolution."""
    import jaxdissect

    _, r = planted_run
    cache = ArrayCache.open(os.path.join(r.directory, "cache", "activations"), 40, (64, 64, 55), "float32",
                            json.load(open(os.path.join(r.directory, "cache", "activations", "fingerprint.json")))
                            ["fingerprint"])
    assert cache.present().all()
    src = EncodedScenes(size=40)
    batch = src.load(np.array([5, 17]))
    from jaxdissect.dissect.run import DissectRun

    run = DissectRun.create(DissectConfig(outdir="unused"), planted_model(), src)
    _, acts = jaxdissect.capture(run.model, run.model_input(batch.inputs), layers=("planted",))
    np.testing.assert_array_equal(cache.read(np.array([5, 17])), np.asarray(acts["planted"]))
