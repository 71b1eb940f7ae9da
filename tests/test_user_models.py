"""models.load('package.module:factory', ...): users' Linen and NNX modules, their weights in every
accepted format, and a clear error for every mistake."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

import jaxdissect
import own_models
from jaxdissect import models
from jaxdissect.models import user_model
from jaxdissect.models.registry import IMAGENET_NORMALIZATION

X = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)


# A jitted forward against the eager NNX module: float32 may round differently in the last bit.
JIT_VS_EAGER = dict(rtol=1e-5, atol=1e-6)


def _forward(model):
    return np.asarray(jaxdissect.capture(model, X)[0])


def _save_msgpack(path, tree):
    path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, tree)))
    return path


# ---- loading ---------------------------------------------------------------------------------
def test_linen_factory_without_weights_is_initialized_with_key_zero():
    model = models.load("own_models:make_linen_cnn", input_size=16)
    assert (model.kind, model.input_size, model.name) == ("classifier", (16, 16), "own_models.make_linen_cnn")
    assert model.layer_names == own_models.CNN_LAYERS and model.default_layer == "features"
    assert model.normalization == IMAGENET_NORMALIZATION
    want = jax.jit(own_models.LinenCNN().init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, model.variables), jax.tree.map(np.asarray, want))


def test_nnx_factory_without_weights_keeps_its_parameters():
    model = models.load("own_models:make_nnx_cnn", input_size=16)
    net = own_models.make_nnx_cnn()  # same seed, same parameters
    np.testing.assert_array_equal(np.asarray(model.variables["params"]["features"]["conv2"]["kernel"]),
                                  np.asarray(net.features.conv2.kernel[...]))
    np.testing.assert_allclose(_forward(model), np.asarray(net(X)), **JIT_VS_EAGER)


def test_factory_returning_a_loaded_model_keeps_its_settings():
    base = models.load("own_models:make_linen_cnn", input_size=16, normalization="[-1,1]", default_layer="features.conv2")
    model = models.load(lambda: base)
    assert model.normalization == base.normalization and model.default_layer == "features.conv2"
    assert model.input_size == (16, 16)


def test_msgpack_weights_linen_and_nnx(tmp_path):
    other = own_models.built(own_models.NNXCNN, 7)
    params = own_models.linen_params_of(other)
    # Linen: the full variables or the params alone.
    for tree in (params, params["params"]):
        f = _save_msgpack(tmp_path / "w.msgpack", tree)
        np.testing.assert_allclose(_forward(models.load("own_models:make_linen_cnn", str(f), input_size=16)),
                                   np.asarray(other(X)), rtol=1e-5, atol=1e-6)
    # NNX: the module's state (attribute paths) or the Linen layout ({'params': ...}).
    for tree in (nnx.to_pure_dict(nnx.state(other)), params):
        f = _save_msgpack(tmp_path / "n.msgpack", tree)
        model = models.load("own_models:make_nnx_cnn", f, input_size=16)
        jax.tree.map(np.testing.assert_array_equal, model.variables["params"], nnx.to_pure_dict(nnx.state(other)))
        np.testing.assert_allclose(_forward(model), np.asarray(other(X)), **JIT_VS_EAGER)


def test_orbax_checkpoint_folder(tmp_path):
    import orbax.checkpoint as ocp

    other = own_models.built(own_models.NNXCNN, 3)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(other))))
        ckpt.wait_until_finished()
    model = models.load("own_models:make_nnx_cnn", tmp_path / "ckpt", input_size=16)
    # the weights read back bit for bit; the forward within float32 rounding
    jax.tree.map(np.testing.assert_array_equal, model.variables["params"], nnx.to_pure_dict(nnx.state(other)))
    np.testing.assert_allclose(_forward(model), np.asarray(other(X)), **JIT_VS_EAGER)
    with pytest.raises(ValueError, match="is not an orbax checkpoint readable here"):
        models.load("own_models:make_nnx_cnn", tmp_path, input_size=16)


class _TorchCNN:
    """The CNN in plain torch (flax 'SAME' padding: stride 1 pads 1/1, stride 2 pads 0/1 on 16 px)."""

    def __init__(self, seed):
        import torch

        torch.manual_seed(seed)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 5)

    def state_dict(self):
        return {f"{n}.{k}": v for n in ("conv1", "conv2", "fc") for k, v in getattr(self, n).state_dict().items()}

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            t = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
            t = F.relu(self.conv1(F.pad(t, (1, 1, 1, 1))))
            t = F.relu(self.conv2(F.pad(t, (0, 1, 0, 1))))
            return self.fc(t.mean(dim=(2, 3))).numpy()


KEY_MAP = {"conv1.weight": "features.conv1.kernel", "conv1.bias": "features.conv1.bias",
           "conv2.weight": "features.conv2.kernel", "conv2.bias": "features.conv2.bias",
           "fc.weight": "fc.kernel", "fc.bias": "fc.bias"}


def test_pth_with_a_key_map_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    net = _TorchCNN(5)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    for factory in ("own_models:make_linen_cnn", "own_models:make_nnx_cnn"):
        model = models.load(factory, tmp_path / "w.pth", input_size=16, key_map=KEY_MAP)
        np.testing.assert_allclose(_forward(model), net(X), rtol=1e-4, atol=1e-5)
    # A key map as a function of the state dict.
    def by_function(state):
        return {"params": {"features": {c: {"kernel": state[f"{c}.weight"].transpose(2, 3, 1, 0),
                                            "bias": state[f"{c}.bias"]} for c in ("conv1", "conv2")},
                           "fc": {"kernel": state["fc.weight"].T, "bias": state["fc.bias"]}}}

    model = models.load("own_models:make_linen_cnn", tmp_path / "w.pth", input_size=16, key_map=by_function)
    np.testing.assert_allclose(_forward(model), net(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="PyTorch weights: give a key map"):
        models.load("own_models:make_linen_cnn", tmp_path / "w.pth", input_size=16)
    with pytest.raises(ValueError, match=r"torch keys without a mapping: fc.bias"):
        models.load("own_models:make_linen_cnn", tmp_path / "w.pth", input_size=16,
                    key_map={k: v for k, v in KEY_MAP.items() if k != "fc.bias"})


# ---- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,mean,std", [
    ("imagenet", IMAGENET_NORMALIZATION["mean"], IMAGENET_NORMALIZATION["std"]),
    ("[-1,1]", (0.5,) * 3, (0.5,) * 3), ("-1,1", (0.5,) * 3, (0.5,) * 3),
    ("none", (0.0,) * 3, (1.0,) * 3), ("0.5,0.25", (0.5,) * 3, (0.25,) * 3),
    ("0.1,0.2,0.3,1,2,3", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))])
def test_normalizations(text, mean, std):
    norm = user_model.parse_normalization(text)
    np.testing.assert_allclose(norm["mean"], mean) and np.testing.assert_allclose(norm["std"], std)
    # (x - mean) / std of [0, 1] pixels: '[-1,1]' maps 0 -> -1 and 1 -> 1.
    if text == "[-1,1]":
        assert (0 - norm["mean"][0]) / norm["std"][0] == -1 and (1 - norm["mean"][0]) / norm["std"][0] == 1


def test_bad_options():
    with pytest.raises(ValueError, match="normalization 'imagenette'"):
        user_model.parse_normalization("imagenette")
    with pytest.raises(ValueError, match="std must be positive"):
        user_model.parse_normalization("0.5,0")
    assert user_model.parse_input_size("128") == (128, 128) and user_model.parse_input_size("128x96") == (128, 96)
    with pytest.raises(ValueError, match="input size 'big'"):
        user_model.parse_input_size("big")
    with pytest.raises(ValueError, match="apply to a user's model"):
        models.load("toy_classifier", input_size=64)


def test_layers_and_default_layer_can_be_given():
    model = models.load("own_models:make_nnx_cnn", input_size=16, layers=["features.conv2"], default_layer="features.conv2")
    assert model.layer_names == ("features.conv2",) and model.default_layer == "features.conv2"
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['features.conv9'\]"):
        models.load("own_models:make_nnx_cnn", input_size=16, layers=["features.conv9"])


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path,message", [
    ("nosuchpackage.models:make", "no module named 'nosuchpackage'"),
    ("own_models:make_resnet", "'own_models' has no attribute 'make_resnet'; it has: .*make_nnx_cnn"),
    ("own_models:failing_factory", "factory 'own_models:failing_factory' failed: RuntimeError: no GPU here"),
    ("own_models:returns_a_string", "returned a str; expected a flax.linen.Module, a flax.nnx.Module"),
    ("own_models:NOT_CALLABLE", "is a int, not a callable"),
    ("own_models:make_dense", "has no spatial layer"),
    ("own_models", "expected package.module:name"),
])
def test_factory_errors(path, message):
    with pytest.raises(ValueError, match=message):
        models.load(path if ":" in path else path + ":", input_size=16)


def test_weights_that_do_not_fit_name_every_key(tmp_path):
    params = jax.tree.map(np.asarray, own_models.linen_params_of(own_models.make_nnx_cnn()))["params"]
    bad = {"features": {"conv1": params["features"]["conv1"],
                        "conv2": {"kernel": np.zeros((3, 3, 8, 32), np.float32), "bias": params["features"]["conv2"]["bias"]}},
           "fc": {"kernel": params["fc"]["kernel"]}, "extra": {"w": np.zeros((2,), np.float32)}}
    f = _save_msgpack(tmp_path / "bad.msgpack", bad)
    for factory in ("own_models:make_nnx_cnn", "own_models:make_linen_cnn"):
        with pytest.raises(ValueError) as e:
            models.load(factory, f, input_size=16)
        msg = str(e.value)
        assert "bad.msgpack" in msg and "do not fit the module" in msg
        assert "missing: " in msg and "fc.bias (5,)" in msg
        assert "extra: " in msg and "extra.w (2,)" in msg
        assert "mis-shaped: " in msg and "features.conv2.kernel (3, 3, 8, 32) (module: (3, 3, 8, 16))" in msg
    with pytest.raises(ValueError, match="no such file or folder"):
        models.load("own_models:make_nnx_cnn", tmp_path / "nothing.msgpack", input_size=16)
    (tmp_path / "junk.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    with pytest.raises(ValueError, match="is not a flax.serialization msgpack file"):
        models.load("own_models:make_nnx_cnn", tmp_path / "junk.msgpack", input_size=16)


def test_a_model_that_does_not_run_at_the_input_size():
    assert models.load("own_models:make_nnx_flat", input_size=16).layer_names == ("conv",)
    with pytest.raises(ValueError, match=r"does not run on a \(1, 18, 18, 3\) input: TypeError"):
        models.load("own_models:make_nnx_flat", input_size=18)  # its classifier reads a 16x16 map


def test_loaded_model_is_frozen():
    model = models.load("own_models:make_nnx_cnn", input_size=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.kind = "generator"


def test_nnx_batch_norm_and_dropout_run_in_evaluation_mode(tmp_path):
    model = models.load("own_models:make_nnx_bn", input_size=16)
    assert set(model.variables) == {"params", "batch_stats", "RngKey", "RngCount"}
    net = own_models.make_nnx_bn()
    net.eval()  # dropout off, running statistics
    np.testing.assert_allclose(_forward(model), np.asarray(net(X)), **JIT_VS_EAGER)
    # Weights without the RNG state load (it is not a weight); without the batch statistics they do not.
    other = own_models.built(own_models.NNXBatchNormNet, 9)
    other.eval()
    weights = nnx.to_pure_dict(nnx.state(other, nnx.Any(nnx.Param, nnx.BatchStat)))
    f = _save_msgpack(tmp_path / "bn.msgpack", weights)
    np.testing.assert_allclose(_forward(models.load("own_models:make_nnx_bn", f, input_size=16)),
                               np.asarray(other(X)), **JIT_VS_EAGER)
    f = _save_msgpack(tmp_path / "params.msgpack", nnx.to_pure_dict(nnx.state(other, nnx.Param)))
    with pytest.raises(ValueError, match=r"missing: bn.mean \(6,\), bn.var \(6,\)"):
        models.load("own_models:make_nnx_bn", f, input_size=16)
