"""AlexNet (Places365 layout): the Flax port equals a PyTorch reference on random weights, for the
output and every dissectable layer, with the original's post-ReLU meaning of conv layers."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402
from jaxdissect.models import alexnet, registry  # noqa: E402
from jaxdissect.models.layers import LocalResponseNorm  # noqa: E402


def _assert_tree_matches_init(module, variables, x):
    """The converted tree has exactly the structure and shapes that module.init makes."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    want = jax.tree.map(lambda a: a.shape, abstract)
    got = jax.tree.map(np.shape, variables)
    assert got == want


def test_lrn_matches_hand_computation():
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 7)).astype(np.float32) * 30
    y = np.asarray(LocalResponseNorm(5, 1e-4, 0.75).apply({}, x))
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    for c in range(7):
        div = (1 + 1e-4 * sq[..., c:c + 5].sum(-1) / 5) ** 0.75  # padding counted in the /5
        np.testing.assert_allclose(y[..., c], x[..., c] / div, rtol=1e-5)


def test_alexnet_parity_full_size():
    ref = tr.randomize_(tr.alexnet(), seed=1)
    state = tr.state_dict_numpy(ref)
    spec = registry.get_spec("alexnet_places")
    config = spec.config_from_torch(state)
    assert config == {"num_classes": 365}
    variables = spec.convert(state, config)
    module = spec.build(config)

    x = np.random.default_rng(1).standard_normal((2, 227, 227, 3)).astype(np.float32)
    _assert_tree_matches_init(module, variables, x)
    pre_relu = alexnet.PRE_RELU_LAYERS
    torch_names = list(spec.layer_names) + ["pool1", "lrn1", "pool2", "lrn2", "pool5"]
    y_t, retained, snaps = tr.run_with_hooks(ref, tr.nchw(x), retain=torch_names, snapshot=list(pre_relu))
    y_f, acts = tr.flax_capture(module, variables, x, torch_names + list(pre_relu.values()))

    tr.assert_close(y_f, y_t, "output")
    assert np.std(y_t) > 0.1  # random weights give non-trivial logits
    for name in torch_names:
        tr.assert_close(acts[name], retained[name], name)
    for name, inner in pre_relu.items():
        assert (snaps[name] < 0).any() and (retained[name] >= 0).all()  # the in-place ReLU happened
        tr.assert_close(acts[inner], snaps[name], inner)
    assert acts["conv5"].shape == (2, 13, 13, 256)


def test_alexnet_spec():
    spec = registry.get_spec("alexnet_places")
    assert spec.kind == "classifier" and spec.input_size == (227, 227)
    assert spec.default_layer == "conv5" and spec.layer_names[:5] == ("conv1", "conv2", "conv3", "conv4", "conv5")
    assert spec.url == "https://dissect.csail.mit.edu/models/alexnet_places365-92864cf6.pth"
    assert spec.sha256_prefix == "92864cf6"
    assert spec.normalization == registry.IMAGENET_NORMALIZATION


def test_alexnet_from_pth_files_both_formats(tmp_path):
    """torch.save (zip and legacy) -> read_pth -> convert -> models.load -> capture equals torch."""
    import jaxdissect
    from jaxdissect import models
    from weight_conversion import read_pth

    ref = tr.randomize_(tr.alexnet(), seed=3)
    want = tr.state_dict_numpy(ref)
    paths = {"zip": tmp_path / "zip.pth", "legacy": tmp_path / "legacy.pth"}
    torch.save(ref.state_dict(), paths["zip"])
    torch.save(ref.state_dict(), paths["legacy"], _use_new_zipfile_serialization=False)
    for fmt, path in paths.items():
        got = read_pth(path)
        assert sorted(got) == sorted(want), fmt
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{fmt}: {k}")

    model = models.load("alexnet_places", weights=paths["legacy"], cache=False)
    assert model.input_size == (227, 227) and len(model.labels) == 365
    x = np.random.default_rng(4).standard_normal((2, 227, 227, 3)).astype(np.float32)
    y_f, acts = jaxdissect.capture(model, x, layers=("conv5", "conv5.conv", "lrn2"))
    y_t, retained, snaps = tr.run_with_hooks(ref, tr.nchw(x), retain=["conv5", "lrn2"], snapshot=["conv5"])
    tr.assert_close(np.asarray(y_f), y_t, "output")
    tr.assert_close(np.asarray(acts["conv5"]), retained["conv5"], "conv5")
    tr.assert_close(np.asarray(acts["lrn2"]), retained["lrn2"], "lrn2")
    tr.assert_close(np.asarray(acts["conv5.conv"]), snaps["conv5"], "conv5.conv")
