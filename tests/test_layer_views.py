"""models.views: token layers read through their patch grid, attention heads as units."""
import numpy as np
import pytest

from jaxdissect.models.registry import LoadedModel
from jaxdissect.models.views import (LayerView, head_norms, heads_mask, parse_spec, same_aspect, spatial_view,
                                     token_prefix, tokens_to_grid, view_for)

RNG = np.random.default_rng(0)


def _tokens(n, prefix, side, c):
    return RNG.normal(size=(n, prefix + side * side, c)).astype(np.float32)


@pytest.mark.parametrize("prefix,explicit", [(0, False), (1, False), (5, True), (1, True)])
def test_grid_is_the_row_major_patch_tokens_after_the_prefix(prefix, explicit):
    n, side, c = 2, 3, 4
    x = _tokens(n, prefix, side, c)
    grid = np.asarray(tokens_to_grid(x, prefix if explicit else None))
    assert grid.shape == (n, side, side, c)
    for i in range(n):
        for r in range(side):
            for col in range(side):
                np.testing.assert_array_equal(grid[i, r, col], x[i, prefix + r * side + col])


def test_prefix_inference_and_its_errors():
    assert token_prefix(16) == 0 and token_prefix(65) == 1 and token_prefix(197) == 1
    assert token_prefix(21, 5) == 5
    with pytest.raises(ValueError, match="21 tokens minus 1 prefix tokens = 20 patch tokens, not a square"):
        token_prefix(21, 1)
    with pytest.raises(ValueError, match="21 tokens are neither a square patch grid nor one class token"):
        token_prefix(21)
    with pytest.raises(ValueError, match="give the number of leading class/register tokens"):
        tokens_to_grid(np.zeros((1, 21, 2)))


def test_head_norms_are_per_head_l2_norms():
    heads, d = 3, 4
    x = RNG.normal(size=(2, 5, 5, heads * d)).astype(np.float32)
    want = np.sqrt((x.reshape(2, 5, 5, heads, d) ** 2).sum(-1))
    np.testing.assert_allclose(np.asarray(head_norms(x, heads)), want, rtol=1e-6)
    with pytest.raises(ValueError, match="12 channels do not split into 5 heads"):
        head_norms(x, 5)


def test_view_of_a_heads_layer_with_a_class_token():
    heads, d, side = 2, 3, 4
    x = _tokens(2, 1, side, heads * d)
    grid = x[:, 1:].reshape(2, side, side, heads * d)
    np.testing.assert_array_equal(np.asarray(LayerView(prefix_tokens=1, heads=heads)(x)), grid)
    norms = np.asarray(LayerView(prefix_tokens=1, heads=heads, units="head_norms")(x))
    np.testing.assert_allclose(norms, np.linalg.norm(grid.reshape(2, side, side, heads, d), axis=-1), rtol=1e-6)


def test_view_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 'fc' of shape \(2, 10\) cannot be dissected: only"):
        LayerView()(np.zeros((2, 10)), "fc")
    with pytest.raises(ValueError, match="needs the layer's head count"):
        LayerView(units="head_norms")
    with pytest.raises(ValueError, match="unknown units 'heads'"):
        LayerView(units="heads")
    # A 4-D array that is not a map of the input, e.g. (N, T, heads, head_dim) of attention.
    with pytest.raises(ValueError, match="17x2 is not a map of the 16x16 input"):
        LayerView()(np.zeros((1, 17, 2, 4)), "attn.query", (16, 16))
    assert LayerView()(np.zeros((1, 8, 6, 4)), "conv", (128, 96)).shape == (1, 8, 6, 4)
    assert same_aspect((7, 7), (224, 224)) and same_aspect((13, 13), (227, 227)) and not same_aspect((17, 2), (16, 16))


def test_specs_and_model_views():
    assert parse_spec("blocks.3.attn.heads:head_norms") == ("blocks.3.attn.heads", "head_norms")
    assert parse_spec("features.conv1") == ("features.conv1", None)
    with pytest.raises(ValueError, match="unknown units 'norms'"):
        parse_spec("blocks.3:norms")
    views = {"b.heads": LayerView(prefix_tokens=1, heads=2)}
    assert view_for(views, "b.heads:head_norms") == ("b.heads", LayerView(prefix_tokens=1, heads=2, units="head_norms"))
    assert view_for(views, "b") == ("b", LayerView())
    model = LoadedModel("m", "classifier", None, {}, {}, (16, 16), {}, "b", ("b",), None, layer_views=views)
    x = _tokens(1, 1, 4, 6)
    assert spatial_view(model, "b.heads:head_norms", x).shape == (1, 4, 4, 2)
    assert spatial_view(model, "b.heads", x).shape == (1, 4, 4, 6)


def test_heads_mask_covers_whole_heads():
    np.testing.assert_array_equal(np.asarray(heads_mask([0, 2], 3, 2)), [1, 1, 0, 0, 1, 1])
