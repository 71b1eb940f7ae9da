"""A small Broden-style folder built in the test, read back as ground-truth segmentations."""
import numpy as np
import pytest
from PIL import Image

from jaxdissect.segment.broden import BrodenSegmentation, decode_mask


def _mask_png(path, labels):
    a = np.zeros(labels.shape + (3,), np.uint8)
    a[..., 0] = labels % 256
    a[..., 1] = labels // 256
    Image.fromarray(a).save(path)


@pytest.fixture
def broden(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img / f"{name}.jpg")
    obj = np.zeros((4, 4), int)
    obj[:2, :2] = 1
    obj[2:, 2:] = 300  # needs the green byte
    _mask_png(img / "a_object.png", obj)
    _mask_png(img / "a_part.png", np.full((4, 4), 2))
    _mask_png(img / "b_object.png", np.eye(4, dtype=int))
    (tmp_path / "index.csv").write_text(
        "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n"
        "a.jpg,train,8,8,4,4,,a_object.png,a_part.png,,301,\n"
        "b.jpg,val,8,8,4,4,,b_object.png,,,,\n"
        "c.jpg,val,8,8,4,4,,,,,,\n")  # no data in any category: left out, as NetDissect-Lite does
    labels = ["0,-,-,0,0,", "1,wall,object(5),5,1,", "2,leg,part(3);object(1),3,1,"]
    labels += [f"{n},filler{n},object(1),1,1," for n in range(3, 300)]
    labels += ["300,sky,object(2),2,1,", "301,street,scene(1),1,1,"]
    (tmp_path / "label.csv").write_text("number,name,category,frequency,coverage,syns\n" + "\n".join(labels) + "\n")
    return tmp_path


def test_broden_reads_labels_and_masks(broden):
    ds = BrodenSegmentation(broden, categories=["object", "part", "scene"])
    assert len(ds) == 2 and ds.num_channels == 3
    assert ds.labels.names[:3] == ("-", "wall", "leg") and ds.labels.names[300] == "sky"
    assert ds.labels.categories[2] == "part" and ds.labels.categories[301] == "scene"
    seg = ds.segmentation(0)  # 8x8 image, 4x4 masks: nearest upsampling
    assert seg.shape == (3, 8, 8) and seg.dtype == np.int32
    want = np.zeros((8, 8), int)
    want[:4, :4], want[4:, 4:] = 1, 300
    np.testing.assert_array_equal(seg[0], want)
    np.testing.assert_array_equal(seg[1], 2)
    np.testing.assert_array_equal(seg[2], 301)  # whole-image scene label
    images, segs = ds.batch([0, 1], downsample=2)
    assert images.shape == (2, 8, 8, 3) and -1 <= images.min() and images.max() <= 1
    np.testing.assert_array_equal(segs[1, 0], np.eye(4, dtype=int))
    np.testing.assert_array_equal(segs[1, 1:], 0)  # padded channels are 'no label'
    assert len(BrodenSegmentation(broden, split="val")) == 1


def test_broden_errors(broden, tmp_path_factory):
    with pytest.raises(ValueError, match="unknown Broden categories"):
        BrodenSegmentation(broden, categories=["objects"])
    with pytest.raises(FileNotFoundError, match="index.csv"):
        BrodenSegmentation(tmp_path_factory.mktemp("empty"))
    (broden / "images" / "b_object.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b_object.png"):
        BrodenSegmentation(broden).segmentation(1)
    assert decode_mask(str(broden / "images" / "a_part.png")).max() == 2


def test_broden_netdissect_lite_conventions(broden):
    """category.csv order, primary category by c_<category>.csv coverage, texture as a
    whole-image category, and one block of channels per category."""
    (broden / "category.csv").write_text("name,first,last,count,frequency\n"
                                         "texture,1,1,1,1\nscene,1,1,1,1\npart,1,1,1,1\nobject,1,3,3,2\n")
    # 'leg' is counted in more part images, but covers more as an object: its category is object
    (broden / "c_part.csv").write_text("code,number,name,frequency,coverage\n1,2,leg,3,0.1\n")
    (broden / "c_object.csv").write_text("code,number,name,frequency,coverage\n1,1,wall,5,2.0\n2,2,leg,1,0.5\n")
    index = (broden / "index.csv").read_text().replace("a_part.png,,301,", "a_part.png;a_part.png,,301,302")
    (broden / "index.csv").write_text(index)
    with open(broden / "label.csv", "a") as f:
        f.write("302,striped,texture(1),1,1,\n")
    ds = BrodenSegmentation(broden)
    assert ds.categories == ("texture", "scene", "part", "object", "color", "material")
    assert ds.labels.categories[2] == "object" and ds.labels.categories[302] == "texture"
    assert ds.slots == {"texture": 1, "scene": 1, "part": 2, "object": 1, "color": 0, "material": 0}
    seg = ds.segmentation(0, downsample=2)
    assert seg.shape == (5, 4, 4)
    np.testing.assert_array_equal(seg[0], 302)  # texture, whole image
    np.testing.assert_array_equal(seg[1], 301)  # scene, whole image
    np.testing.assert_array_equal(seg[2:4], 2)
    seg_b = ds.segmentation(1, downsample=2)
    np.testing.assert_array_equal(seg_b[:4], 0)  # b has only an object mask, in the object channel
    np.testing.assert_array_equal(seg_b[4], np.eye(4, dtype=int))
    assert len(ds) == 2  # c.jpg has no data
