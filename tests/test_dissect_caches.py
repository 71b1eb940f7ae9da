"""Forward once: exact thresholds, identical results with and without the activation cache,
segmentations reused across dissections, resume at every stage, the disk-space check."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import small_models
from jaxdissect.array_cache import ArrayCache
from jaxdissect.config_error import UserError
from jaxdissect.dissect import DissectConfig, dissect, outputs, run as run_module, sources
from jaxdissect.dissect.run import DissectRun
from jaxdissect.segment.base import SegmentLabels


class ColourSegmenter:
    """Labels pixels by their brightest channel (red / green / blue); counts how often it is traced
    for a batch (shape inference traces it with one image)."""

    labels = SegmentLabels(("-", "red", "green", "blue"), ("-", "color", "color", "color"), ("color",))

    def __init__(self):
        self.traces = 0

    def identity(self):
        return {"kind": "colour-argmax"}

    def segment(self, images, downsample=1):
        self.traces += images.shape[0] > 1
        small = images[:, downsample // 2::downsample, downsample // 2::downsample]
        return (jnp.argmax(small, axis=-1) + 1).astype(jnp.int32)[:, None]


def cfg(tmp_path, **kw):
    base = dict(outdir=str(tmp_path), quantile=0.2, batch_size=6, progress=False, checkpoint_every=1, thumbsize=16,
                topk=6, strip_images=3, layers=("features.conv2", "features.conv3"))
    base.update(kw)
    return DissectConfig(**base)


def source(n=18):
    return sources.ScenesSource(size=n, image_size=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    results = dissect(cfg(out, devices=1), model=small_models.tiny_classifier(size=32), source=source())
    return out, results


def assert_same(a_results, b_results):
    for a, b in zip(a_results, b_results):
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
        np.testing.assert_array_equal(a.best_label, b.best_label)
        np.testing.assert_allclose(a.iou, b.iou, atol=1e-6)


def test_thresholds_are_the_exact_quantile_of_the_upsampled_activations(reference):
    out, results = reference
    model = small_models.tiny_classifier(size=32)
    run = DissectRun.create(cfg(out), model, source())
    for r in results:
        acts = ArrayCache.open(os.path.join(r.directory, "cache", "activations"), 18, run.geometry[r.layer].shape,
                               "float32", run.activations_fingerprint(r.layer)).read(np.arange(18))
        up = np.asarray(run.geometry[r.layer].upsample(acts)).reshape(-1, acts.shape[-1]).astype(np.float64)
        want = np.quantile(up, 0.8, axis=0)  # 1 - quantile
        np.testing.assert_allclose(r.thresholds, want, rtol=1e-6, atol=1e-7)
        n = len(up)
        lo = np.floor(0.8 * (n - 1)).astype(int)
        srt = np.sort(up, axis=0)
        assert (srt[lo] <= r.thresholds + 1e-7).all() and (r.thresholds <= srt[lo + 1] + 1e-7).all()
        saved = json.load(open(os.path.join(r.directory, "stats", "thresholds.json")))
        assert saved["level"] == pytest.approx(0.8) and saved["thresholds"] == [float(t) for t in r.thresholds]


@pytest.mark.parametrize("devices", [pytest.param(2, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)])
def test_no_activation_cache_and_any_device_count_give_identical_results(reference, tmp_path, devices):
    _, ref = reference
    model = small_models.tiny_classifier(size=32)
    no_cache = dissect(cfg(tmp_path, devices=devices, activation_cache=False), model=model, source=source())
    assert_same(no_cache, ref)
    assert not os.path.exists(os.path.join(no_cache[0].directory, "cache", "activations"))


def test_bfloat16_cache_dissects_the_rounded_activations(tmp_path):
    model = small_models.tiny_classifier(size=32)
    [r] = dissect(cfg(tmp_path, layers=("features.conv3",), cache_dtype="bfloat16"), model=model, source=source())
    run = DissectRun.create(cfg(tmp_path, layers=("features.conv3",), cache_dtype="bfloat16"), model, source())
    acts = ArrayCache.open(os.path.join(r.directory, "cache", "activations"), 18, run.geometry[r.layer].shape,
                           "bfloat16", run.activations_fingerprint(r.layer)).read(np.arange(18))
    assert acts.dtype == np.dtype("bfloat16")
    up = np.asarray(run.geometry[r.layer].upsample(acts.astype(np.float32))).reshape(-1, 12).astype(np.float64)
    np.testing.assert_allclose(r.thresholds, np.quantile(up, 0.8, axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_segmentations_are_cached_and_reused_by_another_layer_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    seg = ColourSegmenter()
    model = small_models.tiny_classifier(size=32)
    [first] = dissect(cfg(tmp_path / "a", layers=("features.conv2",)), model=model, source=source(), segmenter=seg)
    assert seg.traces == 1
    assert len(cache_folders(tmp_path / "home" / "segmentations")) == 1
    # Another layer, and another model with other weights, on the same images: no segmenter runs.
    [second] = dissect(cfg(tmp_path / "b", layers=("features.conv3",)), model=model, source=source(), segmenter=seg)
    other = small_models.tiny_classifier(seed=5, size=32)
    dissect(cfg(tmp_path / "c", layers=("features.conv3",)), model=other, source=source(), segmenter=seg)
    assert seg.traces == 1
    # ... and the IoU is what the segmenter gives (the same layer dissected with a fresh cache).
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home2"))
    fresh_seg = ColourSegmenter()
    [fresh] = dissect(cfg(tmp_path / "d", layers=("features.conv3",)), model=model, source=source(), segmenter=fresh_seg)
    assert fresh_seg.traces == 1
    np.testing.assert_allclose(second.iou, fresh.iou, atol=1e-6)
    # Other images (another sample size) get their own entry.
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    dissect(cfg(tmp_path / "e", layers=("features.conv3",)), model=model, source=source(12), segmenter=seg)
    assert seg.traces == 2
    assert len(cache_folders(tmp_path / "home" / "segmentations")) == 2


def cache_folders(root):
    """The caches in `root` (each has a hidden `.<name>.lock` beside it, taken while it is created)."""
    names = os.listdir(root)
    assert all(f".{n}.lock" in names for n in names if not n.startswith("."))
    return [n for n in names if not n.startswith(".")]


class KillAfter:
    """Raise KeyboardInterrupt (a kill) at the n-th call of `target`, once."""

    def __init__(self, monkeypatch, owner, name, n, when=lambda *a, **k: True):
        self.count, self.n, self.fired = 0, n, False
        original = getattr(owner, name)

        def wrapped(*a, **k):
            if not self.fired and when(*a, **k):
                self.count += 1
                if self.count == self.n:
                    self.fired = True
                    raise KeyboardInterrupt("simulated kill")
            return original(*a, **k)

        monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("stage", ["refinement", pytest.param("iou", marks=pytest.mark.slow),
                                   pytest.param("thumbnails", marks=pytest.mark.slow)])
def test_a_kill_in_any_later_stage_resumes_to_identical_results(reference, tmp_path, monkeypatch, stage):
    ref_out, ref = reference
    model = small_models.tiny_classifier(size=32)
    if stage == "refinement":  # the refinement reads the activation cache, the IoU pass the segmentations too
        KillAfter(monkeypatch, ArrayCache, "read", 5, when=lambda self, idx: "activations" in self.path)
    elif stage == "iou":
        KillAfter(monkeypatch, ArrayCache, "read", 2, when=lambda self, idx: "segmentations" in self.path)
    else:
        KillAfter(monkeypatch, outputs, "masked_image", 20)
    with pytest.raises(KeyboardInterrupt):
        dissect(cfg(tmp_path, devices=2), model=model, source=source())
    monkeypatch.undo()
    # The kill came after pass 1 finished: its stored result (and the caches) are what the rerun
    # reuses. (Whether a mid-pass checkpoint of the later stage exists depends on where the
    # loader's read-ahead met the kill; the checkpoint resume itself is tested in test_dissect_pipeline.)
    layer_dir = os.path.join(tmp_path, os.path.basename(ref[0].directory))
    assert os.path.isdir(os.path.join(layer_dir, "stats", "activations")), os.listdir(layer_dir)
    resumed = dissect(cfg(tmp_path, devices=2), model=model, source=source())
    assert_same(resumed, ref)
    for a, b in zip(resumed, ref):
        for u in range(a.iou.shape[1]):
            name = f"image/unit{u}.jpg"
            assert open(os.path.join(a.directory, name), "rb").read() == open(os.path.join(b.directory, name), "rb").read()


@pytest.mark.slow
def test_disk_space_is_checked_before_pass_one(tmp_path, monkeypatch):
    class Tiny:
        free = 1000

    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda path: Tiny)
    with pytest.raises(UserError) as e:
        dissect(cfg(tmp_path), model=small_models.tiny_classifier(size=32), source=source())
    msg = str(e.value)
    assert "--cache-dtype bfloat16" in msg and "--no-activation-cache" in msg and "free" in msg
    layer_dir = os.path.join(tmp_path, "tiny-scenes-scenes-conv2-200-t16")
    assert not os.path.exists(os.path.join(layer_dir, "cache", "activations", "array.zarr", "0.0.0.0"))
    # Without the activation cache the same run fits (the segmentation cache is small).
    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda path: type("Free", (), {"free": 10**9}))
    dissect(cfg(tmp_path, activation_cache=False), model=small_models.tiny_classifier(size=32), source=source())


@pytest.mark.slow
def test_cache_rows_are_complete_samples_under_concurrent_writers(tmp_path):
    """Two processes write the same samples while a third reads: every sample read is whole."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from jaxdissect.array_cache import ArrayCache\n"
            "c = ArrayCache.open(sys.argv[1], 64, (256, 256), 'int16', {'k': 1})\n"
            "v = int(sys.argv[2])\n"
            "for r in range(40):\n"
            "    for i in range(64):\n"
            "        c.write(np.array([i]), np.full((1, 256, 256), v + (r % 2), np.int16)).result()\n")
    reader = ("import sys, numpy as np; from jaxdissect.array_cache import ArrayCache\n"
              "c = ArrayCache.open(sys.argv[1], 64, (256, 256), 'int16', {'k': 1})\n"
              "bad = 0\n"
              "for r in range(200):\n"
              "    x = c.read(np.arange(64))\n"
              "    p = c.present()\n"
              "    for i in np.flatnonzero(p):\n"
              "        bad += len(np.unique(x[i])) != 1\n"
              "print(bad)\n")
    path = str(tmp_path / "c")
    ArrayCache.open(path, 64, (256, 256), "int16", {"k": 1})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", code, path, str(v)], env=env) for v in (10, 20)]
    out = subprocess.run([sys.executable, "-c", reader, path], env=env, capture_output=True, text=True, timeout=300)
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_a_stale_cache_is_replaced_not_mixed(tmp_path):
    c = ArrayCache.open(tmp_path / "c", 4, (2,), "float32", {"made_by": "A"})
    c.write(np.arange(4), np.ones((4, 2))).result()
    with pytest.raises(Exception, match="made by something else"):
        ArrayCache.open(tmp_path / "c", 4, (2,), "float32", {"made_by": "B"})
    fresh = ArrayCache.open(tmp_path / "c", 4, (2,), "float32", {"made_by": "B"}, replace_stale=True)
    assert not fresh.present().any()
    shutil.rmtree(tmp_path / "c")


@pytest.mark.slow
def test_processes_opening_a_new_cache_at_once_share_one_creation(tmp_path):
    """Four processes create the same cache at the same moment (like the processes of one run):
    every one opens it, and what each wrote is there for the others (none removed another's
    half-made folder, the race a multi-process run once lost)."""
    import subprocess
    import sys

    code = ("import sys, time, numpy as np; from jaxdissect import array_cache\n"
            "from jaxdissect.array_cache import ArrayCache\n"
            "write = array_cache.atomic_write_text  # a slow creation: the others arrive mid-way\n"
            "array_cache.atomic_write_text = lambda *a: (time.sleep(0.5), write(*a))\n"
            "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
            "c = ArrayCache.open(sys.argv[1], 8, (3,), 'float32', {'k': 1}, replace_stale=True)\n"
            "i = int(sys.argv[2]); c.write(np.array([i]), np.full((1, 3), i, np.float32)).result()\n")
    path = str(tmp_path / "cache")
    ArrayCache.open(path, 8, (3,), "float32", {"k": "stale"})  # every process must replace this one
    start = __import__("time").time() + 8.0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", code, path, str(i), str(start)], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    c = ArrayCache.open(path, 8, (3,), "float32", {"k": 1})
    np.testing.assert_array_equal(c.present(), [True] * 4 + [False] * 4)
    np.testing.assert_array_equal(c.read(np.arange(4))[:, 0], np.arange(4))


def test_a_process_that_may_not_create_waits_for_the_cache_then_names_it(tmp_path):
    import threading

    path = tmp_path / "cache"
    with pytest.raises(Exception, match=r"waited 0 s for process 0 to create the cache .*cache; it is still absent"):
        ArrayCache.open(path, 4, (2,), "float32", {"k": 1}, may_create=False, wait_seconds=0.2)
    assert not path.exists()  # it neither created nor removed anything
    threading.Timer(0.3, lambda: ArrayCache.open(path, 4, (2,), "float32", {"k": 1}).write(
        np.array([1]), np.ones((1, 2))).result()).start()
    c = ArrayCache.open(path, 4, (2,), "float32", {"k": 1}, may_create=False, wait_seconds=30)
    assert c.shape == (4, 2)
