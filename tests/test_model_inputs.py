"""LoadedModel.prepare / example_input and the one pixel normalization, against numpy, and the
messages a wrong batch gets (NCHW order, a missing batch axis, another size, floats)."""
import numpy as np
import pytest

from jaxdissect.models import load, registry


@pytest.fixture(scope="module")
def classifier():
    return load("toy_classifier")


def test_prepare_is_imagenet_normalization(classifier):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expect = (images / 255.0 - mean) / std
    np.testing.assert_allclose(np.asarray(classifier.prepare(images)), expect, rtol=1e-5, atol=1e-5)


def test_range_normalization():
    x = np.array([[[[0.0, 0.5, 1.0]]]])
    np.testing.assert_allclose(np.asarray(registry.normalize_pixels(x, {"range": (-1, 1)})), [[[[-1, 0, 1]]]])


def test_example_input_shapes(classifier):
    x = classifier.example_input(3)
    assert x.shape == (3, 128, 128, 3) and x.dtype == np.float32
    # zero pixels normalized: -mean/std per channel
    np.testing.assert_allclose(np.asarray(x[0, 0, 0]), -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)
    gen = load("toy_generator")
    assert gen.example_input(2).shape == (2, gen.z_dim)
    with pytest.raises(ValueError, match=r"latents of shape \(N, 64\)"):
        gen.prepare(np.zeros((2, 3)))


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 128, 128), "channels-first, NCHW: use images.transpose"),
    ((128, 128, 3), "one image; .* add the batch axis"),
    ((2, 64, 64, 3), "are 64x64; the model takes 128x128"),
    ((2, 128, 128), r"batch of RGB images \(N, H, W, 3\)"),
])
def test_wrong_batches_are_named(classifier, shape, message):
    with pytest.raises(ValueError, match=message):
        classifier.prepare(np.zeros(shape, np.uint8))


def test_float_images_refused(classifier):
    with pytest.raises(ValueError, match="uint8 images"):
        classifier.prepare(np.zeros((1, 128, 128, 3), np.float32))


def test_edit_of_the_wrong_width_names_the_layer(classifier):
    import jaxdissect
    from jaxdissect import edit

    x = classifier.example_input(1)
    with pytest.raises(ValueError, match=r"edit of layer 'features.conv4_2' .*num_units=128"):
        jaxdissect.capture(classifier, x, layers=("features.conv4_2",),
                           edits={"features.conv4_2": edit.ablate([3, 7], num_units=64)})


def test_out_of_range_units_are_refused():
    from jaxdissect import edit

    with pytest.raises(ValueError, match=r"units \[300\] out of range .* 128 units"):
        edit.ablate([3, 300], num_units=128)
    with pytest.raises(ValueError, match="out of range"):
        edit.insert([-1], [1.0], np.ones((4, 4)), num_units=8)
