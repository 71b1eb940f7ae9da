"""jaxdissect.capture on a tiny Linen model, checked against a hand-written numpy forward."""
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdissect
from jaxdissect.capturing import layer_shapes, valid_layer_names
from jaxdissect.models.registry import LoadedModel

TRACES = {"n": 0}


class Block(nn.Module):
    """conv 3x3 (pad 1) -> ReLU; its inner conv is the pre-ReLU layer '<name>.conv'."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3), padding=1, name="conv")(x))


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        TRACES["n"] += 1  # runs once per trace, never per jitted call
        x = Block(4, name="block1")(x)
        x = Block(6, name="block2")(x)
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


@flax.struct.dataclass
class ZeroUnits:
    """Multiply channels by (1 - mask): mask 1 ablates a unit."""

    mask: jax.Array

    def __call__(self, x):
        return x * (1 - self.mask)


def _model(seed=0):
    module = Tiny()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: rng.normal(scale=0.5, size=s.shape).astype(np.float32), shapes)
    return LoadedModel(name="tiny", kind="classifier", module=module, variables=variables, config={},
                       input_size=(8, 8), normalization={}, default_layer="block2",
                       layer_names=("block1", "block2", "head"), labels=None)


def _np_conv(x, kernel, bias):
    """NHWC 3x3 convolution with zero padding 1, by explicit sums over kernel offsets."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwc,co->nhwo", xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out + bias


def _np_forward(p, x, edit_block2=None):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p["params"])
    acts = {}
    acts["block1.conv"] = _np_conv(x, p["block1"]["conv"]["kernel"], p["block1"]["conv"]["bias"])
    acts["block1"] = np.maximum(acts["block1.conv"], 0)
    acts["block2.conv"] = _np_conv(acts["block1"], p["block2"]["conv"]["kernel"], p["block2"]["conv"]["bias"])
    acts["block2"] = np.maximum(acts["block2.conv"], 0)
    if edit_block2 is not None:
        acts["block2"] = edit_block2(acts["block2"])
    acts["head"] = acts["block2"].mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
    return acts


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-5, atol=1e-5)


def test_captured_values_equal_hand_forward(data):
    model = _model()
    ref = _np_forward(model.variables, data.astype(np.float64))
    out, acts = jaxdissect.capture(model, data, layers=("block1.conv", "block1", "block2"))
    assert set(acts) == {"block1.conv", "block1", "block2"}  # nothing unrequested
    for name in acts:
        assert acts[name].shape == ref[name].shape
        _close(acts[name], ref[name])
    _close(out, ref["head"])
    assert np.any(np.asarray(acts["block1.conv"]) < 0)  # pre-ReLU really is pre-ReLU


def test_no_layers_and_single_string(data):
    model = _model()
    ref = _np_forward(model.variables, data.astype(np.float64))
    out, acts = jaxdissect.capture(model, data)
    assert acts == {}
    _close(out, ref["head"])
    _, acts = jaxdissect.capture(model, data, layers="block2")
    assert list(acts) == ["block2"]


def test_unrequested_layers_not_computed_outputs(data):
    """The jitted function returns exactly the output and the requested layers."""
    model = _model()
    from jaxdissect.capturing import capture_fn

    fn = capture_fn(model.module, ("block1",))
    jaxpr = jax.make_jaxpr(fn)(model.variables, data, {})
    assert len(jaxpr.out_avals) == 2
    y, acts = fn(model.variables, data, {})
    y2, acts2 = jaxdissect.capture(model, data, layers=("block1",))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(acts["block1"]), np.asarray(acts2["block1"]))


def test_edit_zeroes_units(data):
    model = _model()
    units = np.array([1, 4])
    mask = np.zeros(6, np.float32)
    mask[units] = 1

    def zero(a):
        a = a.copy()
        a[..., units] = 0
        return a

    ref = _np_forward(model.variables, data.astype(np.float64), edit_block2=zero)
    base_out, base = jaxdissect.capture(model, data, layers=("block1", "block2"))
    out, acts = jaxdissect.capture(model, data, layers=("block1", "block2"),
                                   edits={"block2": ZeroUnits(jnp.asarray(mask))})
    np.testing.assert_array_equal(np.asarray(acts["block1"]), np.asarray(base["block1"]))  # before: unchanged
    _close(acts["block2"], ref["block2"])  # captured value shows the edit
    assert np.all(np.asarray(acts["block2"])[..., units] == 0)
    assert np.any(np.asarray(base["block2"])[..., units] != 0)
    _close(out, ref["head"])
    assert not np.allclose(np.asarray(out), np.asarray(base_out))


def test_no_retrace_for_new_mask(data):
    model, other = _model(), _model(seed=5)  # same module, other weights
    m1 = jnp.zeros(6).at[0].set(1.0)
    m2 = jnp.zeros(6).at[3].set(1.0)
    _, a1 = jaxdissect.capture(model, data, layers=("block2",), edits={"block2": ZeroUnits(m1)})
    traces = TRACES["n"]
    _, a2 = jaxdissect.capture(model, data, layers=("block2",), edits={"block2": ZeroUnits(m2)})
    jaxdissect.capture(other, data, layers=("block2",), edits={"block2": ZeroUnits(m1)})
    assert TRACES["n"] == traces
    assert np.all(np.asarray(a2["block2"])[..., 3] == 0) and np.any(np.asarray(a2["block2"])[..., 0] != 0)
    assert np.all(np.asarray(a1["block2"])[..., 0] == 0)
    # A different edit structure (edit on another layer) is a new compilation.
    jaxdissect.capture(model, data, layers=("block2",), edits={"block1": ZeroUnits(jnp.zeros(4))})
    assert TRACES["n"] == traces + 1


def test_static_function_edit(data):
    model = _model()
    p = jax.tree.map(np.asarray, model.variables["params"])
    _, acts = jaxdissect.capture(model, data, layers=("block1", "block2"), edits={"block1": lambda x: x * 0})
    assert np.all(np.asarray(acts["block1"]) == 0)
    expected = np.broadcast_to(np.maximum(p["block2"]["conv"]["bias"], 0), acts["block2"].shape)
    _close(acts["block2"], expected)


def test_edit_on_pre_relu_layer(data):
    model = _model()
    mask = jnp.ones(4)  # ablate every pre-ReLU unit of block1: block1 = relu(0) = 0
    _, acts = jaxdissect.capture(model, data, layers=("block1",), edits={"block1.conv": ZeroUnits(mask)})
    assert np.all(np.asarray(acts["block1"]) == 0)


def test_unknown_names(data):
    model = _model()
    with pytest.raises(ValueError, match=r"nope.*block1\.conv") as err:
        jaxdissect.capture(model, data, layers=("nope",))
    assert "block2" in str(err.value) and "head" in str(err.value)
    with pytest.raises(ValueError, match=r"'block9'.*edit"):
        jaxdissect.capture(model, data, edits={"block9": ZeroUnits(jnp.zeros(4))})


def test_valid_names_and_shapes(data):
    model = _model()
    assert set(valid_layer_names(model)) == {"block1", "block1.conv", "block2", "block2.conv", "head"}
    assert layer_shapes(model) == {"block1": (1, 8, 8, 4), "block2": (1, 8, 8, 6), "head": (1, 3)}
    assert layer_shapes(model, "block2.conv", x=data) == {"block2.conv": (2, 8, 8, 6)}
    with pytest.raises(ValueError, match="unknown"):
        layer_shapes(model, ("bad",))


def test_sharded_batch(data):
    """A batch sharded across the simulated devices gives the same values."""
    model = _model()
    n = jax.device_count()
    x = np.concatenate([data] * n)[:max(n, 2)]
    mesh = jax.make_mesh((len(x) if len(x) <= n else n,), ("data",))
    xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    out_s, acts_s = jaxdissect.capture(model, xs, layers=("block2",))
    out, acts = jaxdissect.capture(model, x, layers=("block2",))
    np.testing.assert_allclose(np.asarray(out_s), np.asarray(out), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(acts_s["block2"]), np.asarray(acts["block2"]), rtol=1e-6, atol=1e-6)
