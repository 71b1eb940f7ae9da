"""Nothing silently wrong: every stored stage carries the fingerprint of what made it, so a rerun
with other settings recomputes what changed or refuses, never mixes; NaN fails loudly."""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import small_models
from jaxdissect.config_error import UserError
from jaxdissect.data.image_folder import IMAGE_EXTENSIONS  # noqa: F401 (the folder source's reader)
from jaxdissect.dissect import DissectConfig, FinishedWithOtherSettingsError, dissect, sources

LAYERS = ("features.conv3",)


def cfg(tmp_path, **kw):
    base = dict(outdir=str(tmp_path), quantile=0.2, batch_size=6, progress=False, checkpoint_every=1, thumbsize=16,
                topk=6, strip_images=3, layers=LAYERS, devices=1)
    base.update(kw)
    return DissectConfig(**base)


def source(n=18):
    return sources.ScenesSource(size=n, image_size=32)


def model(seed=0):
    return small_models.tiny_classifier(seed=seed, size=32)


def same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.thresholds, y.thresholds)
        np.testing.assert_array_equal(x.topk_indices, y.topk_indices)
        np.testing.assert_array_equal(x.best_label, y.best_label)
        np.testing.assert_allclose(x.iou, y.iou, atol=1e-6)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    return out, dissect(cfg(out), model=model(), source=source())


def copy_of(base, tmp_path):
    shutil.copytree(base, tmp_path / "out")
    return tmp_path / "out"


# Each setting that changes a stored stage; the rerun in the same folder must equal a fresh run.
CHANGES = {
    "sample_size": (dict(), dict(n=12)),
    "resolution": (dict(resolution=64), dict()),
    "topk": (dict(topk=4), dict()),
    "strip_images": (dict(strip_images=2), dict()),
    "cache_dtype": (dict(cache_dtype="bfloat16"), dict()),
    "activation_cache": (dict(activation_cache=False), dict()),
    "weights": (dict(), dict(seed=3)),
    "segmenter": (dict(), dict(seg="other")),
    "miniou": (dict(miniou=0.2), dict()),
}


class OtherLabels:
    """A segmenter: pixels labelled by their brightest channel."""

    from jaxdissect.segment.base import SegmentLabels
    labels = SegmentLabels(("-", "red", "green", "blue"), ("-", "color", "color", "color"), ("color",))
    name = "scenes"  # the same results folder as the exact labels: only the fingerprint tells them apart

    def identity(self):
        return {"kind": "argmax-colour"}

    def segment(self, images, downsample=1):
        small = images[:, downsample // 2::downsample, downsample // 2::downsample]
        return (jnp.argmax(small, axis=-1) + 1).astype(jnp.int32)[:, None]


def run_with(out, config_changes, object_changes):
    seg = OtherLabels() if object_changes.get("seg") else None
    return dissect(cfg(out, **config_changes), model=model(object_changes.get("seed", 0)),
                   source=source(object_changes.get("n", 18)), segmenter=seg)


FAST = ("sample_size", "segmenter")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CHANGES])
def test_finished_results_with_other_settings_are_refused_then_replaced_exactly(base_run, tmp_path, name):
    base, _ = base_run
    config_changes, object_changes = CHANGES[name]
    out = copy_of(base, tmp_path)
    if name != "activation_cache":  # the cache is how results are made, not what they are
        with pytest.raises(FinishedWithOtherSettingsError, match="--overwrite") as e:
            run_with(out, config_changes, object_changes)
        assert "another --outdir" in str(e.value)
    replaced = run_with(out, {**config_changes, "overwrite": True}, object_changes)
    fresh = run_with(tmp_path / "fresh", config_changes, object_changes)
    same(replaced, fresh)
    d = replaced[0].directory
    assert open(os.path.join(d, "image", "unit3.jpg"), "rb").read() == \
        open(os.path.join(fresh[0].directory, "image", "unit3.jpg"), "rb").read()


def test_a_finished_run_with_the_same_settings_is_reused_and_says_so(base_run, capsys):
    base, results = base_run
    again = dissect(dataclasses.replace(cfg(base), progress=True), model=model(), source=source())
    same(again, results)
    assert "already dissected with these settings" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_after_pass_one_then_rerun_with_more_samples_equals_a_clean_run(tmp_path, monkeypatch):
    from jaxdissect.dissect import pipeline

    original = pipeline.stage_thresholds

    def killed(*a, **k):
        raise KeyboardInterrupt("killed after pass 1")

    monkeypatch.setattr(pipeline, "stage_thresholds", killed)
    with pytest.raises(KeyboardInterrupt):
        dissect(cfg(tmp_path / "out"), model=model(), source=source(12))
    monkeypatch.setattr(pipeline, "stage_thresholds", original)
    rerun = dissect(cfg(tmp_path / "out"), model=model(), source=source(18))
    clean = dissect(cfg(tmp_path / "clean"), model=model(), source=source(18))
    same(rerun, clean)
    # and the other way round: pass 1 of 18 samples, then a run of 12
    monkeypatch.setattr(pipeline, "stage_thresholds", killed)
    with pytest.raises(KeyboardInterrupt):
        dissect(cfg(tmp_path / "out2"), model=model(), source=source(18))
    monkeypatch.setattr(pipeline, "stage_thresholds", original)
    same(dissect(cfg(tmp_path / "out2"), model=model(), source=source(12)),
         dissect(cfg(tmp_path / "clean2"), model=model(), source=source(12)))


@pytest.mark.slow
def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, capsys):
    class Killed(sources.ScenesSource):
        def load(self, indices):
            if 12 in list(indices):
                raise KeyboardInterrupt
            return super().load(indices)

    with pytest.raises(KeyboardInterrupt):
        dissect(cfg(tmp_path / "out", resolution=64), model=model(), source=Killed(size=18, image_size=32))
    assert os.path.exists(tmp_path / "out" / "tiny-scenes-scenes-conv3-200-t16" / "checkpoints" / "activations")
    rerun = dissect(cfg(tmp_path / "out", progress=True), model=model(), source=source())
    assert "not resuming the checkpoint" in capsys.readouterr().out
    same(rerun, dissect(cfg(tmp_path / "clean"), model=model(), source=source()))


def nan_model(where: str):
    """The tiny classifier with a NaN in conv3's bias (before its ReLU) or after it."""
    m = model()
    params = jax.tree.map(lambda a: a, m.variables)
    bias = params["params"]["features"]["conv3"]["conv"]["bias"]
    if where == "pre":
        params["params"]["features"]["conv3"]["conv"]["bias"] = bias.at[4].set(jnp.nan)
    else:
        params["params"]["features"]["conv3"]["conv"]["bias"] = bias.at[4].set(jnp.inf)
    return dataclasses.replace(m, variables=params)


@pytest.mark.parametrize("where", ["pre", pytest.param("inf", marks=pytest.mark.slow)])
def test_nan_or_inf_in_a_unit_fails_the_run_naming_layer_and_unit_then_the_fixed_model_runs(tmp_path, where):
    with pytest.raises(FloatingPointError, match=r"features.conv3.*units \[4\]"):
        dissect(cfg(tmp_path), model=nan_model(where), source=source())
    d = tmp_path / "tiny-scenes-scenes-conv3-200-t16"
    assert not (d / "stats" / "activations").exists()  # nothing of the broken pass became a result
    fixed = dissect(cfg(tmp_path), model=model(), source=source())
    same(fixed, dissect(cfg(tmp_path / "clean"), model=model(), source=source()))


def test_a_folder_of_only_unreadable_images_fails_with_that_message(tmp_path):
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"broken{i}.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="no readable samples.*all 5 failed"):
        dissect(cfg(tmp_path / "out", seg="toy"), model=model(),
                source=sources.FolderSource(tmp_path / "images", crop=32))
