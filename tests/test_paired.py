"""Paired sources: folders matched by normalized file name (missing partners, ambiguous names,
different sizes, unreadable files: reported, never fatal) and the scenes / stylized scenes pair."""
import os
import random
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxdissect.data.paired import (PairedFolders, PairedScenes, StylizedScenesSource, normalize_filename,
                                    pair_files, paired_source)
from jaxdissect.data.scenes import Scenes


def test_normalize_filename_default_and_pattern():
    assert normalize_filename("a/Places365_val_00000001.jpg") == "a/Places365_val_00000001"
    assert normalize_filename("a/Places365_val_00000001-stylized-10345.png") == "a/Places365_val_00000001"
    assert normalize_filename("x-stylized-dir/b.jpg") == "x-stylized-dir/b"  # only the file name's suffix
    pat = re.compile(r"^(.*Places365_\w+_\d+)")  # the original's pattern
    assert normalize_filename("a/Places365_val_00000001-stylized-1.jpg", pat) == "a/Places365_val_00000001"
    assert normalize_filename("a/other.jpg", pat) is None
    assert normalize_filename("a/img7_v2.png", r"img\d+") == "img7"  # no group: the whole match


def test_pair_files_reports_every_kind_of_problem():
    first = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.jpg", "b/4.png"]
    second = ["a/1-stylized-x.jpg", "a/2-stylized-y.png", "b/3-stylized-z.jpg", "b/5-stylized-w.jpg",
              "b/4-stylized-v.jpg"]
    p = pair_files(first, second)
    assert p.keys == ["a/1", "a/2", "b/3"]
    assert p.first == ["a/1.jpg", "a/2.jpg", "b/3.jpg"] and p.second[1] == "a/2-stylized-y.png"
    assert p.only_first == [] and p.only_second == ["b/5-stylized-w.jpg"]
    assert p.ambiguous == {"b/4": ["1:b/4.jpg", "1:b/4.png"]}  # and its partner is skipped too
    msg = p.problems("orig", "styl")
    assert "1 file(s) only in styl: b/5-stylized-w.jpg" in msg and "1:b/4.png" in msg and "3 pairs" in msg
    q = pair_files(["a/1.jpg", "zz.jpg"], ["a/1.jpg"], r"^(a/\d)")
    assert q.keys == ["a/1"] and q.unmatched == ["1:zz.jpg"]
    assert pair_files(["a.jpg"], ["a.png"]).problems() is None


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "orig", tmp_path / "styl"
    for i in range(8):
        cls = "cd"[i % 2]
        img = rng.integers(0, 255, (40, 50, 3), np.uint8)
        _save(str(a / cls / f"im{i}.png"), img)
        other = rng.integers(0, 255, (44, 50, 3) if i == 3 else (40, 50, 3), np.uint8)
        if i != 6:  # im6 has no stylized partner
            _save(str(b / cls / f"im{i}-stylized-s{i}.png"), other)
    _save(str(b / "d" / "extra-stylized-q.png"), np.zeros((8, 8, 3), np.uint8))  # no original
    with open(b / "c" / "im4-stylized-s4.png", "wb") as f:  # unreadable partner
        f.write(b"not a png")
    return str(a), str(b)


def _prepared(path, resize, crop):
    with Image.open(path) as im:
        im = im.convert("RGB").resize((resize, resize), Image.BILINEAR)
    left = (resize - crop) // 2
    return np.asarray(im)[left:left + crop, left:left + crop]


def test_paired_folders_pairs_order_and_skipped_files(folders):
    a, b = folders
    with pytest.warns(UserWarning) as rec:
        ds = PairedFolders(a, b, crop=24, resize=32)
    msg = str(rec[0].message)
    assert "only in " + a in msg and "c/im6.png" in msg and "d/extra-stylized-q.png" in msg
    assert len(ds) == 7 and ds.classes == ("c", "d")
    keys = sorted(f"{'cd'[i % 2]}/im{i}" for i in range(8) if i != 6)
    order = list(range(7))
    random.Random(1).shuffle(order)  # the original's shuffle of the sorted list
    assert [os.path.splitext(ds.files(i)[0])[0] for i in range(7)] == [keys[j] for j in order]
    assert PairedFolders(a, b, crop=24, resize=32, size=3, warn=False).order == order[:3]


def test_paired_folders_load_sizes_and_unreadable(folders):
    a, b = folders
    ds = PairedFolders(a, b, crop=24, resize=32, warn=False)
    where = {os.path.basename(ds.files(i)[0]): i for i in range(len(ds))}
    idx = [where["im0.png"], where["im3.png"], where["im4.png"]]
    with pytest.warns(UserWarning, match=r"im3.png is 50x40 but .*im3-stylized-s3.png is 50x44; both resized to 24x24"):
        ds.warn = True
        first, second = ds.load(idx)
    assert first.inputs.shape == second.inputs.shape == (3, 24, 24, 3)
    np.testing.assert_array_equal(first.inputs[0], _prepared(os.path.join(a, "c", "im0.png"), 32, 24))
    np.testing.assert_array_equal(second.inputs[1], _prepared(os.path.join(b, "d", "im3-stylized-s3.png"), 32, 24))
    assert first.ok.tolist() == second.ok.tolist() == [True, True, False]
    assert "im4-stylized-s4.png" in first.errors[where["im4.png"]] and first.errors == second.errors
    assert ds.size_mismatches == {where["im3.png"]: ((50, 40), (50, 44))}
    assert first.labels.tolist() == [0, 1, 0] and np.array_equal(first.indices, idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known mismatch is not warned twice
        ds.load([where["im3.png"]])
    with pytest.raises(IndexError, match="out of range"):
        ds.load([7])


def test_paired_folders_clear_errors(folders, tmp_path):
    a, b = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    _save(str(empty / "zzz.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="has a partner"):
        PairedFolders(a, str(empty), warn=False)
    with pytest.raises(ValueError, match="not a regular expression"):
        PairedFolders(a, b, pattern="(", warn=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairedFolders(a, str(tmp_path / "nope"), warn=False)


def test_paired_scenes_are_each_scene_and_its_stylized_twin():
    ps = PairedScenes(size=6, image_size=64)
    orig, styl = ps.load([4, 1])
    ref = Scenes("val", 6, image_size=64).batch([4, 1])
    ref_s = Scenes("val", 6, image_size=64, stylized=True).batch([4, 1])
    np.testing.assert_array_equal(orig.inputs, ref["image"])
    np.testing.assert_array_equal(styl.inputs, ref_s["image"])
    np.testing.assert_array_equal(styl.segmentation, ref_s["segmentation"])
    np.testing.assert_array_equal(orig.segmentation[:, :2], styl.segmentation[:, :2])
    assert np.array_equal(orig.labels, styl.labels) and len(ps) == 6
    assert not np.array_equal(StylizedScenesSource(3, style_seed=1).load([0]).inputs,
                              StylizedScenesSource(3).load([0]).inputs)


def test_restyled_scenes_are_two_stylizations_of_each_scene():
    ps = PairedScenes(size=5, image_size=64, restyle_seed=1)
    first, second = ps.load([3, 0])
    ref = [Scenes("val", 5, image_size=64, stylized=True, style_seed=k).batch([3, 0]) for k in (0, 1)]
    for batch, want in zip((first, second), ref):
        np.testing.assert_array_equal(batch.inputs, want["image"])
        np.testing.assert_array_equal(batch.segmentation, want["segmentation"])
    np.testing.assert_array_equal(first.segmentation[:, :2], second.segmentation[:, :2])  # objects and parts
    assert not np.array_equal(first.segmentation[:, 2:], second.segmentation[:, 2:])  # surfaces drawn anew
    with pytest.raises(ValueError, match="two style seeds"):
        PairedScenes(size=5, restyle_seed=0)


def test_paired_source_from_flags(folders):
    a, b = folders
    assert isinstance(paired_source("scenes", None, size=4), PairedScenes)
    assert isinstance(paired_source("scenes", "scenes-stylized", size=4), PairedScenes)
    colors = paired_source("scenes", "scenes-stylized-colors", size=4)
    assert colors.sources[1].dataset.stylized == "colors"
    with pytest.raises(ValueError, match="pairs with a stylized scenes world"):
        paired_source("scenes", "scenes")
    with pytest.raises(ValueError, match="original world first"):
        paired_source("scenes-stylized", "scenes")
    restyled = paired_source("scenes-stylized-colors", None, size=4)  # a stylized world: its restyled twins
    assert [src.dataset.stylized for src in restyled.sources] == ["colors", "colors"]
    assert [src.dataset.style_seed for src in restyled.sources] == [0, 1]
    assert paired_source("scenes-stylized", "scenes-restyled", size=4).sources[1].dataset.style_seed == 1
    with pytest.raises(ValueError, match="restyles a stylized world"):
        paired_source("scenes", "scenes-restyled")
    with pytest.raises(ValueError, match="needs --paired-dataset"):
        paired_source(a, None)
    with pytest.warns(UserWarning):
        assert len(paired_source(a, b, crop=24)) == 7
