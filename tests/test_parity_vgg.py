"""VGG16 (Places365 layout): the Flax port equals a PyTorch reference on random weights at full
size, for the output and every dissectable layer (post-ReLU) and their pre-ReLU values."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402
from jaxdissect.models import registry, vgg  # noqa: E402
from jaxdissect.models.layers import AdaptiveAvgPool  # noqa: E402


def test_vgg16_parity_full_size():
    ref = tr.randomize_(tr.vgg16(), seed=2)
    state = tr.state_dict_numpy(ref)
    spec = registry.get_spec("vgg16_places")
    config = spec.config_from_torch(state)
    assert config == {"num_classes": 365}
    variables = spec.convert(state, config)
    del state
    module = spec.build(config)

    x = np.random.default_rng(2).standard_normal((2, 224, 224, 3)).astype(np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)

    pre_relu = vgg.PRE_RELU_LAYERS
    names = list(spec.layer_names) + ["features.pool5", "avgpool"]
    y_t, retained, snaps = tr.run_with_hooks(ref, tr.nchw(x), retain=names, snapshot=list(pre_relu))
    y_f, acts = tr.flax_capture(module, variables, x, names + list(pre_relu.values()))

    tr.assert_close(y_f, y_t, "output")
    assert np.std(y_t) > 0.1
    for name in names:
        tr.assert_close(acts[name], retained[name], name)
    for name, inner in pre_relu.items():
        assert (snaps[name] < 0).any() and (retained[name] >= 0).all()  # the in-place ReLU happened
        tr.assert_close(acts[inner], snaps[name], inner)
    assert acts["features.conv5_3"].shape == (2, 14, 14, 512)


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (9, 12), (3, 5)])
def test_adaptive_avg_pool_matches_torch(size):
    x = np.random.default_rng(3).standard_normal((2, *size, 4)).astype(np.float32)
    want = torch.nn.AdaptiveAvgPool2d(7)(torch.from_numpy(tr.nchw(x))).numpy()
    got = AdaptiveAvgPool(7).apply({}, x)
    np.testing.assert_allclose(tr.nchw(np.asarray(got)), want, rtol=1e-6, atol=1e-6)


def test_vgg16_spec():
    spec = registry.get_spec("vgg16_places")
    assert spec.kind == "classifier" and spec.input_size == (224, 224)
    assert spec.default_layer == "features.conv5_3"
    assert len(spec.layer_names) == 16 and spec.layer_names[-3:] == (
        "classifier.fc6", "classifier.fc7", "classifier.fc8a")
    assert spec.url == "https://dissect.csail.mit.edu/models/vgg16_places365-0bafbc55.pth"
    assert spec.sha256_prefix == "0bafbc55"
