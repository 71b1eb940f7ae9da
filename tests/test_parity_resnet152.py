"""ResNet152 (Torch7-converted Places365 layout): the Flax port equals a PyTorch reference with
random weights and random BN running statistics. The default test uses fewer blocks per stage
(same structure, full width); the full 3/8/36/3 model runs in a slow test."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402
from jaxdissect.models import registry  # noqa: E402

# Nested paths checked too: stem BN/pool, a main-branch conv, BN and ReLU, a shortcut BN, a block, the head.
EXTRA_LAYERS = ["1", "3", "4.0.0.0.0", "4.0.0.0.4", "5.0.0.1.1", "5.1.0.0.5", "6.1", "8", "10"]


def _parity(blocks, batch, seed, extra=()):
    ref = tr.randomize_(tr.resnet152(blocks=blocks), seed=seed)
    state = tr.state_dict_numpy(ref)
    assert any(k.endswith("num_batches_tracked") for k in state)  # real checkpoints carry these
    spec = registry.get_spec("resnet152_places")
    config = spec.config_from_torch(state)
    assert config == {"num_classes": 365, "width": 64, "blocks": list(blocks)}
    variables = spec.convert(state, config)
    module = spec.build(config)

    x = np.random.default_rng(seed).standard_normal((batch, 224, 224, 3)).astype(np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)

    names = list(spec.layer_names) + list(extra)
    y_t, retained, _ = tr.run_with_hooks(ref, tr.nchw(x), retain=names)
    y_f, acts = tr.flax_capture(module, variables, x, names)
    errors = {"output": tr.assert_close(y_f, y_t, "output")}
    assert np.std(y_t) > 0.1
    for name in names:
        errors[name] = tr.assert_close(acts[name], retained[name], name)
    assert acts["7"].shape == (batch, 7, 7, 2048) and acts["0"].shape == (batch, 112, 112, 64)
    assert (retained["0"] < 0).any()  # layer '0' is the pre-BN conv output, not a ReLU output
    return errors


def test_resnet_parity_reduced_blocks():
    _parity(blocks=(2, 2, 2, 2), batch=2, seed=4, extra=EXTRA_LAYERS)


@pytest.mark.slow
def test_resnet152_parity_full_size():
    _parity(blocks=(3, 8, 36, 3), batch=1, seed=5, extra=["6.35", "7.2.0.1"])


def test_resnet152_spec():
    spec = registry.get_spec("resnet152_places")
    assert spec.layer_names == ("0", "4", "5", "6", "7") and spec.default_layer == "7"
    assert spec.url == "https://dissect.csail.mit.edu/models/resnet152_places365-f928166e5c.pth"
    assert spec.sha256_prefix == "f928166e5c" and spec.input_size == (224, 224)
    # The default config is the real ResNet152: 3/8/36/3 blocks (50 bottlenecks, 155 convs + fc).
    variables = jax.eval_shape(spec.build(spec.default_config).init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    assert n_params == 58_891_693  # torch ResNet152 (60,192,808 for 1000 classes) with a 365-way head
