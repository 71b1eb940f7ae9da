"""Images from a tensorflow-datasets data source (`--dataset tfds:places365_small`)."""
import numpy as np
import pytest
from PIL import Image

from jaxdissect.data.image_folder import prepare_image
from jaxdissect.data.tfds_images import parse_tfds_name
from jaxdissect.dissect import sources
from jaxdissect.dissect import DissectConfig
from jaxdissect.dissect.run import result_dir
from jaxdissect.folder_names import dataset_short_name


def test_names():
    assert parse_tfds_name("places") is None
    assert parse_tfds_name("tfds:places365_small") == ("places365_small", "validation")
    assert parse_tfds_name("tfds:places365_small:train") == ("places365_small", "train")
    for bad in ("tfds:", "tfds:a:", "tfds:a:b:c"):
        with pytest.raises(ValueError, match="tfds:NAME"):
            parse_tfds_name(bad)
    assert dataset_short_name("tfds:places365_small") == "places365_small"
    assert dataset_short_name("tfds:places365_small:train") == "places365_small-train"
    from jaxdissect.data.places import is_places365

    assert is_places365("places") and is_places365("tfds:places365_small") and not is_places365("tfds:mnist")
    cfg = DissectConfig(dataset="tfds:places365_small", quantile=0.005)
    assert result_dir(cfg, cfg.dataset, "vgg16_places", "features.conv5_3", "netpqc").endswith("vgg16-places365_small-netpqc-conv5_3")


def test_records_are_prepared_like_image_files_and_bad_ones_are_reported():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (300, 200, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, (240, 260, 4), dtype=np.uint8)

    class Records(list):
        def __getitem__(self, i):
            item = list.__getitem__(self, i)
            if isinstance(item, Exception):
                raise item
            return item

    data = Records([{"image": rgb, "label": np.int64(5)}, {"image": gray, "label": 7},
                    OSError("truncated record"), {"image": rgba, "label": 1},
                    {"image": rng.normal(size=(8, 8, 3)), "label": 2}])
    src = sources.TfdsSource("fake", crop=224, size=10, data=data)
    assert len(src) == 5 and src.classes == ()
    b = src.load([0, 1, 2, 3, 4])
    want = [prepare_image(Image.fromarray(rgb), 256, 224), prepare_image(Image.fromarray(gray[:, :, 0]), 256, 224),
            None, prepare_image(Image.fromarray(rgba), 256, 224)]
    for j in (0, 1, 3):
        np.testing.assert_array_equal(b.inputs[j], want[j])
    assert b.inputs.shape == (5, 224, 224, 3) and b.inputs.dtype == np.uint8
    assert b.ok.tolist() == [True, True, False, True, False]
    assert b.labels.tolist()[:2] == [5, 7] and b.labels[3] == 1
    assert "truncated record" in b.errors[2] and "uint8" in b.errors[4]
    # an RGB 256x256 record crops like the original: the centre 224 x 224
    np.testing.assert_array_equal(b.inputs[0], rgb[16:240, 16:240])


def test_places365_small_through_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="tfds build places365_small"):
        sources.TfdsSource("places365_small", data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        src = sources.TfdsSource("places365_small", crop=224, size=4)
        b = src.load(np.arange(4))
    assert len(src) == 4 and len(src.classes) == 365 and src.classes[0] == "airfield"
    assert b.inputs.shape == (4, 224, 224, 3) and b.ok.all()
    assert ((0 <= b.labels) & (b.labels < 365)).all()


@pytest.mark.slow
def test_dissection_reads_a_tfds_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jaxdissect.dissect import dissect

    cfg = DissectConfig(dataset="tfds:places365_small", seg="toy", sample_size=6, batch_size=3, topk=4,
                        outdir=str(tmp_path), progress=False)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        [result] = dissect(cfg)
    assert result.directory.endswith("toy_classifier-places365_small-toy-conv4_2-10")
    assert result.iou.shape == (len(result.label_names), 128)
    assert set(result.topk_indices[:, 0].tolist()) <= set(range(6))
