"""The upsampler against a hand-computed case and against torch grid_sample on the original's grid."""
import numpy as np
import pytest
import torch

from jaxdissect import upsample


def original_grid(data_shape, target_shape, image_size=None, scale_offset=None):
    """The original's grid construction, transcribed (normalized x, y for grid_sample)."""
    if scale_offset is None:
        scale = [t / d for t, d in zip(target_shape, data_shape)]
        offset = [0.5 * s - 0.5 for s in scale]
    else:
        scale, offset = [list(v) for v in zip(*scale_offset)]
        if image_size is not None:
            scale = [s * (t - 1) / (n - 1) for s, n, t in zip(scale, image_size, target_shape)]
            offset = [o * (t - 1) / (n - 1) for o, n, t in zip(offset, image_size, target_shape)]
    ty, tx = ((torch.arange(t, dtype=torch.float64) - o) * (2 / (s * max(1, d - 1))) - 1
              for t, d, s, o in zip(target_shape, data_shape, scale, offset))
    grid = torch.stack((tx[None, :].expand(target_shape), ty[:, None].expand(target_shape)), 2)
    return grid[None]


def torch_upsample(x_nhwc, grid):
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).double()
    out = torch.nn.functional.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear",
                                          padding_mode="zeros", align_corners=True)
    return out.permute(0, 2, 3, 1).numpy()


def test_hand_computed_case():
    # 2 -> 4 with the default grid: targets sample source coords -0.25, 0.25, 0.75, 1.25.
    coords = upsample.source_coordinates(2, 4)
    np.testing.assert_allclose(coords, [-0.25, 0.25, 0.75, 1.25])
    x = np.array([[[[1.0], [3.0]], [[5.0], [7.0]]]], np.float32)  # (1, 2, 2, 1)
    out = np.asarray(upsample.upsampler((4, 4), (2, 2))(x))[0, :, :, 0]
    # along one axis: [0.75*1, 0.75*1+0.25*3, 0.25*1+0.75*3, 0.75*3] = [0.75, 1.5, 2.5, 2.25]
    row = np.array([0.75, 1.5, 2.5, 2.25])
    col_weights = np.array([[0.75, 0], [0.75, 0.25], [0.25, 0.75], [0, 0.75]])
    src = np.array([[1.0, 3.0], [5.0, 7.0]])
    np.testing.assert_allclose(out, col_weights @ src @ col_weights.T, rtol=1e-6)
    np.testing.assert_allclose(out[0] / 0.75, row, rtol=1e-6)


@pytest.mark.parametrize("data,target", [((14, 14), (56, 56)), ((7, 5), (56, 40)), ((8, 8), (64, 64)),
                                         ((224, 224), (56, 56)), ((1, 1), (4, 4))])
def test_default_grid_matches_grid_sample(data, target):
    x = np.random.default_rng(0).normal(size=(2, *data, 3)).astype(np.float32)
    got = np.asarray(upsample.upsampler(target, data)(x))
    want = torch_upsample(x, original_grid(data, target))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_alexnet_receptive_field_geometry_matches_grid_sample():
    convs, _ = upsample.layer_geometry("alexnet_places", "conv5")
    scale, offset = upsample.receptive_field_scale_offset(convs)
    assert (scale, offset) == (16, 17)  # the corrected geometry (without pool5)
    assert upsample.conv_output_size(convs, 227) == 13
    with_pool5, _ = upsample.layer_geometry("alexnet_places", "pool5")
    assert upsample.receptive_field_scale_offset(with_pool5) == (32, 33)  # the original's numbers
    x = np.random.default_rng(1).normal(size=(2, 13, 13, 4)).astype(np.float32)
    up = upsample.upsampler((56, 56), (13, 13), image_size=(227, 227), convolutions=(convs, convs))
    want = torch_upsample(x, original_grid((13, 13), (56, 56), (227, 227), ((16, 17), (16, 17))))
    np.testing.assert_allclose(np.asarray(up(x)), want, atol=1e-5)
    # the first target pixel samples conv5 index (0 - 17*55/226) / (16*55/226), about -1.06
    coords = upsample.source_coordinates(13, 56, 227, (16, 17))
    np.testing.assert_allclose([coords[0], coords[-1]], [-17 / 16, (55 * 226 / 55 - 17) / 16], rtol=1e-6)


def test_other_models_use_default_grid_and_shape_errors():
    assert upsample.layer_geometry("vgg16_places", "features.conv5_3") is None
    with pytest.raises(ValueError, match="expects"):
        upsample.upsampler((8, 8), (2, 2))(np.zeros((1, 3, 3, 1), np.float32))


def test_equal_grids_are_the_identity():
    x = np.random.default_rng(2).normal(size=(1, 64, 48, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(upsample.upsampler((64, 48), (64, 48))(x)), x)
