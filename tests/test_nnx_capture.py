"""Capture and edits on Flax NNX models: an NNX CNN and its Linen twin with the same weights give
the same layers, the same edited outputs and the same dissection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdissect
import own_models
from jaxdissect import edit, models
from jaxdissect.capturing import capture_fn, capture_views_fn, valid_layer_names
from jaxdissect.dissect import DissectConfig, dissect, sources
from jaxdissect.models.nnx_linen import nnx_to_linen
from jaxdissect.models.registry import LoadedModel

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 3)), jnp.float32)


def twins(size=16):
    """(NNX LoadedModel, Linen LoadedModel) with the same parameters."""
    net = own_models.make_nnx_cnn()
    nnx_model = models.load(own_models.make_nnx_cnn, input_size=size, name="twin_nnx")
    linen_model = models.load(own_models.make_linen_cnn, input_size=size, name="twin_linen")
    linen_model = LoadedModel(**{**linen_model.__dict__, "variables": own_models.linen_params_of(net)})
    return net, nnx_model, linen_model


def test_wrapped_nnx_model_runs_like_the_nnx_module():
    net = own_models.make_nnx_cnn()
    module, variables = nnx_to_linen(net)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, X)), np.asarray(net(X)))
    assert set(variables) == {"params"}
    assert variables["params"]["features"]["conv1"]["kernel"].shape == (3, 3, 3, 8)


def test_layers_are_named_by_attribute_path_and_match_the_linen_twin():
    _, n, l = twins()
    assert n.layer_names == l.layer_names == own_models.CNN_LAYERS
    assert set(valid_layer_names(n)) == set(valid_layer_names(l)) == set(own_models.CNN_LAYERS) | {"fc"}
    out_n, acts_n = jaxdissect.capture(n, X, layers=own_models.CNN_LAYERS)
    out_l, acts_l = jaxdissect.capture(l, X, layers=own_models.CNN_LAYERS)
    np.testing.assert_allclose(np.asarray(out_n), np.asarray(out_l), rtol=1e-6, atol=1e-6)
    for name in own_models.CNN_LAYERS:
        np.testing.assert_allclose(np.asarray(acts_n[name]), np.asarray(acts_l[name]), rtol=1e-6, atol=1e-6)
    # Independent truth for one layer: relu of conv1, computed outside any wrapper.
    net = own_models.make_nnx_cnn()
    np.testing.assert_allclose(np.asarray(acts_n["features.relu1"]),
                               np.maximum(np.asarray(net.features.conv1(X)), 0), rtol=1e-6, atol=1e-6)


def test_edits_on_nnx_layers_match_the_linen_twin_and_a_hand_computation():
    net, n, l = twins()
    mask = edit.ablate([1, 4, 15], 16)
    repl = edit.replace(jnp.full((8,), 2.0), jnp.zeros((8,)).at[3].set(1.0))
    edits = {"features": mask, "features.conv1": repl}
    out_n, acts_n = jaxdissect.capture(n, X, layers=("features", "features.conv1"), edits=edits)
    out_l, acts_l = jaxdissect.capture(l, X, layers=("features", "features.conv1"), edits=edits)
    np.testing.assert_allclose(np.asarray(out_n), np.asarray(out_l), rtol=1e-6, atol=1e-6)
    # The captured values show the edits ...
    assert np.all(np.asarray(acts_n["features.conv1"])[..., 3] == 2.0)
    assert np.all(np.asarray(acts_n["features"])[..., [1, 4, 15]] == 0)
    # ... and the output is the head applied to the edited features.
    feats = np.asarray(acts_n["features"]).mean(axis=(1, 2))
    want = feats @ np.asarray(net.fc.kernel[...]) + np.asarray(net.fc.bias[...])
    np.testing.assert_allclose(np.asarray(out_n), want, rtol=1e-5, atol=1e-5)
    unedited, _ = jaxdissect.capture(n, X)
    assert np.abs(np.asarray(unedited) - np.asarray(out_n)).max() > 1e-3


def test_traced_edit_arrays_compile_once_inside_jit():
    _, n, _ = twins()
    run = capture_fn(n.module, ("features.relu2",))
    traces = []

    @jax.jit
    def f(variables, x, mask):
        traces.append(1)
        return run(variables, x, {"features.relu2": edit.Ablate(mask)})[1]["features.relu2"]

    for units in ([0], [5, 6]):
        acts = np.asarray(f(n.variables, X, edit.unit_mask(units, 16)))
        assert np.all(acts[..., units] == 0) and np.any(acts[..., 7] != 0)
    assert len(traces) == 1


class Shared(nnx.Module):
    """One sub-module called twice, and a grandchild called directly from the root."""

    def __init__(self, rngs):
        self.inner = own_models.NNXFeatures(rngs)
        self.lin = nnx.Linear(16, 16, rngs=rngs)

    def __call__(self, x):
        a = self.lin(self.inner(x))
        b = self.lin(a)
        return self.inner.conv1(x).sum() + b.sum()


def test_shared_and_directly_called_submodules():
    net = own_models.built(Shared, 0)
    module, variables = nnx_to_linen(net)
    model = LoadedModel("shared", "classifier", module, variables, {}, (16, 16), {}, "lin", ("lin",), None)
    out, acts = jaxdissect.capture(model, X, layers=("lin", "inner.conv1"))
    np.testing.assert_allclose(np.asarray(out), np.asarray(net(X)), rtol=1e-5)
    a = net.lin(net.inner(X))
    np.testing.assert_allclose(np.asarray(acts["lin"]), np.asarray(net.lin(a)), rtol=1e-6)  # the last call's output
    np.testing.assert_allclose(np.asarray(acts["inner.conv1"]), np.asarray(net.inner.conv1(X)), rtol=1e-6)
    # An edit on a shared module applies at every call.
    y, _ = jaxdissect.capture(model, X, edits={"lin": edit.Ablate(jnp.ones((16,)))})
    np.testing.assert_allclose(np.asarray(y), np.asarray(net.inner.conv1(X).sum()), rtol=1e-5)


class Borrower(nnx.Module):
    """Its __call__ uses another module's sub-module, passed in."""

    def __call__(self, x, other):
        return other.conv1(x) * 2


class Lender(nnx.Module):
    def __init__(self, rngs):
        self.a = Borrower()
        self.b = own_models.NNXFeatures(rngs)

    def __call__(self, x):
        return self.a(x, self.b) + self.a(x, self.b)


def test_a_submodule_called_inside_another_branch_keeps_its_own_name():
    net = own_models.built(Lender, 0)
    module, variables = nnx_to_linen(net)
    model = LoadedModel("lender", "classifier", module, variables, {}, (16, 16), {}, "a", ("a",), None)
    assert {"a", "b.conv1"} <= set(valid_layer_names(model))
    y, acts = jaxdissect.capture(model, X, layers=("b.conv1", "a"), edits={"b.conv1": edit.ablate([0], 8)})
    conv = np.array(net.b.conv1(X))
    conv[..., 0] = 0
    np.testing.assert_allclose(np.asarray(acts["b.conv1"]), conv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), 4 * conv, rtol=1e-6, atol=1e-6)


def test_nnx_vit_token_layers_through_views():
    model = models.load("own_models:make_nnx_vit", input_size=16)
    assert "blocks.0" in model.layer_names and "blocks.1.attn" in model.layer_names
    assert not any(name.endswith((".query", ".key", ".value")) for name in model.layer_names)  # (N, T, heads, d)
    fn = capture_views_fn(model, ("blocks.0", "patch"))
    out, acts = fn(model.variables, X, {})
    raw = jaxdissect.capture(model, X, layers=("blocks.0",))[1]["blocks.0"]
    assert raw.shape == (3, 17, 8) and acts["blocks.0"].shape == (3, 4, 4, 8) and acts["patch"].shape == (3, 4, 4, 8)
    np.testing.assert_array_equal(np.asarray(acts["blocks.0"]), np.asarray(raw)[:, 1:].reshape(3, 4, 4, 8))


@pytest.mark.slow
def test_dissection_of_the_nnx_model_equals_its_linen_twin(tmp_path):
    _, n, l = twins(size=32)
    results = {}
    for which, model in (("nnx", n), ("linen", l)):
        cfg = DissectConfig(outdir=str(tmp_path / which), quantile=0.02, batch_size=8, progress=False, thumbsize=32,
                            topk=5, layers=("features",), devices=1)
        results[which] = dissect(cfg, model=model, source=sources.ScenesSource(size=16, image_size=32))
    for rn, rl in zip(results["nnx"], results["linen"]):
        assert rn.layer == rl.layer
        np.testing.assert_allclose(rn.thresholds, rl.thresholds, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rn.iou, rl.iou, atol=1e-6)
        np.testing.assert_array_equal(rn.best_label, rl.best_label)
        assert rn.best_iou.max() > 0  # a real comparison: units find labels
