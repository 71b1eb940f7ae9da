"""The scenes world exported in Broden's layout and read back through the Broden reader."""
import csv

import numpy as np
import pytest

from jaxdissect.data.broden_export import BRODEN_CATEGORIES, SCENE_OFFSET, main
from jaxdissect.data.broden_source import BrodenSource, parse_broden_name
from jaxdissect.data.scenes import CHANNELS, SCENE_CLASSES, SCENE_LABELS, Scenes
from jaxdissect.segment.broden import BrodenSegmentation
from jaxdissect.segment.toy import subsample_labels

SIZE, IMAGE = 6, 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "broden"
    assert main(["--split", "val", "--size", str(SIZE), "--image-size", str(IMAGE), "--seed", "3",
                 "--out", str(out)]) == 0
    return out, Scenes(split="val", size=SIZE, seed=3, image_size=IMAGE).batch(range(SIZE))


def test_read_back_equals_the_renderer(exported):
    out, truth = exported
    source = BrodenSource(out, categories=["object", "part", "material", "color", "scene"])
    assert len(source) == SIZE and source.image_size == (IMAGE, IMAGE)
    batch = source.load(list(range(SIZE)))
    assert batch.ok.all() and not batch.errors
    np.testing.assert_array_equal(batch.inputs, truth["image"])  # PNG: lossless
    # one channel per category, in the renderer's order, then the whole-image scene label
    assert batch.segmentation.shape == (SIZE, 5, IMAGE, IMAGE)
    np.testing.assert_array_equal(batch.segmentation[:, :4], truth["segmentation"])
    np.testing.assert_array_equal(batch.segmentation[:, 4], (SCENE_OFFSET + truth["scene"])[:, None, None]
                                  * np.ones((1, IMAGE, IMAGE), int))
    assert source.classes == SCENE_CLASSES
    np.testing.assert_array_equal(batch.labels, truth["scene"])
    names = SCENE_LABELS.names + SCENE_CLASSES
    assert source.labels.names == names
    assert source.labels.categories == SCENE_LABELS.categories + ("scene",) * len(SCENE_CLASSES)


def test_broden_order_texture_and_downsampling(exported):
    out, truth = exported
    ds = BrodenSegmentation(out)  # every category, in category.csv's (Broden's) order
    assert ds.categories == BRODEN_CATEGORIES
    assert ds.slots["texture"] == 0  # no whole-image textures in the scenes world
    seg = ds.segment_indices(range(SIZE), downsample=2)
    want = subsample_labels(truth["segmentation"], 2)[:, [CHANNELS.index(c) for c in ("color", "object")]]
    np.testing.assert_array_equal(seg[:, :2], want)
    # part / material: present in some scenes only; a scene without any has zeros there
    for k, cat in ((2, "part"), (3, "material")):
        np.testing.assert_array_equal(seg[:, k], subsample_labels(truth["segmentation"], 2)[:, CHANNELS.index(cat)])
    images, _ = ds.batch([0])
    np.testing.assert_allclose(images[0], truth["image"][0] / 127.5 - 1.0, atol=1e-6)


def test_label_statistics_match_the_renderer(exported):
    out, truth = exported
    with open(out / "label.csv") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    seg = truth["segmentation"]
    for number in (1, 8, 20, 40, 50):
        present = np.asarray([(s == number).any() for s in seg])
        cov = sum((s == number).any(0).sum() / s[0].size for s in seg)
        assert int(rows[number]["frequency"]) == present.sum()
        assert rows[number]["category"] == f"{SCENE_LABELS.categories[number]}({present.sum()})"
        assert abs(float(rows[number]["coverage"]) - cov) < 1e-5
    counts = np.bincount(truth["scene"], minlength=len(SCENE_CLASSES))
    for s, name in enumerate(SCENE_CLASSES):
        assert rows[SCENE_OFFSET + s]["name"] == name and int(rows[SCENE_OFFSET + s]["frequency"]) == counts[s]
    with open(out / "c_part.csv") as f:
        part = list(csv.DictReader(f))
    assert [int(r["code"]) for r in part] == list(range(1, 15))
    assert [r["name"] for r in part] == [SCENE_LABELS.names[int(r["number"])] for r in part]


def test_cli_errors_and_dataset_name(exported, tmp_path, capsys):
    out, _ = exported
    assert main(["--size", "1", "--out", str(out)]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--split", "holdout", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert main(["--size", "1", "--image-size", "8", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    assert parse_broden_name("broden:/data/broden1_224") == "/data/broden1_224"
    assert parse_broden_name("scenes") is None
    with pytest.raises(ValueError, match="broden:PATH"):
        parse_broden_name("broden:")


def test_unreadable_files_mark_samples_not_ok(exported, tmp_path):
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "images" / "scenes" / "val_000001_object.png").write_bytes(b"broken")
    batch = BrodenSource(copy).load([0, 1])
    assert batch.ok.tolist() == [True, False] and "val_000001_object.png" in batch.errors[1]
