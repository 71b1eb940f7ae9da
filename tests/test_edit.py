"""Edits through jaxdissect.capture: equal to editing by hand, local to their layer, one compile."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import small_models
from jaxdissect import edit
from jaxdissect.capturing import capture


def by_hand(model, x, ablate_conv2=None):
    """The tiny net computed step by step, zeroing conv2 channels by hand."""
    p = model.variables["params"]["features"]
    conv = lambda h, q: jax.lax.conv_general_dilated(h, q["kernel"], (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + q["bias"]
    h1 = jax.nn.relu(conv(x, p["conv1"]["conv"]))
    h = jax.lax.reduce_window(h1, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h2 = jax.nn.relu(conv(h, p["conv2"]["conv"]))
    if ablate_conv2 is not None:
        h2 = h2.at[..., np.asarray(ablate_conv2)].set(0)
    h3 = jax.nn.relu(conv(h2, p["conv3"]["conv"]))
    logits = h3.mean((1, 2)) @ model.variables["params"]["fc"]["kernel"] + model.variables["params"]["fc"]["bias"]
    return logits, {"features.conv1": h1, "features.conv2": h2, "features.conv3": h3}


@pytest.fixture(scope="module")
def model_and_input():
    return small_models.tiny_classifier(), jax.random.normal(jax.random.key(1), (3, 16, 16, 3))


def test_ablation_equals_zeroing_by_hand_and_leaves_earlier_layers(model_and_input):
    model, x = model_and_input
    layers = ("features.conv1", "features.conv2", "features.conv3")
    out0, acts0 = capture(model, x, layers)
    out, acts = capture(model, x, layers, edits={"features.conv2": edit.ablate([1, 5, 7], 16)})
    want_out, want = by_hand(model, x, ablate_conv2=[1, 5, 7])
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), rtol=1e-5, atol=1e-5)
    for name in layers:
        np.testing.assert_allclose(np.asarray(acts[name]), np.asarray(want[name]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(acts["features.conv1"]), np.asarray(acts0["features.conv1"]))
    assert not np.allclose(np.asarray(out), np.asarray(out0))


def test_one_compilation_serves_every_mask(model_and_input):
    model, x = model_and_input
    capture(model, x, ("features.conv3",), edits={"features.conv2": edit.ablate([0], 16)})
    before = small_models.TRACES["count"]
    for units in ([2], [3, 4], list(range(10))):
        capture(model, x, ("features.conv3",), edits={"features.conv2": edit.ablate(units, 16)})
    assert small_models.TRACES["count"] == before


def test_replace_broadcasting_and_keep_only(model_and_input):
    model, x = model_and_input
    _, base = capture(model, x, ("features.conv2",))
    base = np.asarray(base["features.conv2"])
    r = np.linspace(0, 1, 16).astype(np.float32)
    a = np.zeros(16, np.float32)
    a[[2, 9]] = 1
    _, acts = capture(model, x, ("features.conv2",), edits={"features.conv2": edit.replace(r, a)})
    want = base * (1 - a) + r * a  # (C,) vectors broadcast over N, H, W
    np.testing.assert_allclose(np.asarray(acts["features.conv2"]), want, rtol=1e-6)
    _, kept = capture(model, x, ("features.conv2",), edits={"features.conv2": edit.keep_only([3], 16)})
    kept = np.asarray(kept["features.conv2"])
    assert (kept[..., [i for i in range(16) if i != 3]] == 0).all()
    np.testing.assert_array_equal(kept[..., 3], base[..., 3])


def test_insert_touches_only_its_units_and_location(model_and_input):
    model, x = model_and_input
    _, base = capture(model, x, ("features.conv2",))
    base = np.asarray(base["features.conv2"])
    loc = np.zeros((8, 8), np.float32)
    loc[2, 5] = 1
    e = edit.insert([4, 6], np.array([7.0, 9.0]), loc, 16)
    _, acts = capture(model, x, ("features.conv2",), edits={"features.conv2": e})
    got = np.asarray(acts["features.conv2"])
    np.testing.assert_array_equal(got[:, 2, 5, 4], 7.0)
    np.testing.assert_array_equal(got[:, 2, 5, 6], 9.0)
    changed = got != base
    changed[:, 2, 5, [4, 6]] = False
    assert not changed.any()


def test_user_rule(model_and_input):
    model, x = model_and_input
    rule = edit.Rule(params=jnp.float32(2.0), fn=lambda h, s: h * s)
    _, base = capture(model, x, ("features.conv2",))
    _, acts = capture(model, x, ("features.conv2",), edits={"features.conv2": rule})
    np.testing.assert_allclose(np.asarray(acts["features.conv2"]), 2 * np.asarray(base["features.conv2"]), rtol=1e-6)
