"""Key maps: every missing, unexpected and mis-shaped checkpoint key is named in a KeyMapError;
layouts move to Flax's as hand-indexed; configs are read from checkpoints. No torch needed: the
checkpoints here are built from the key maps' own shape lists (zero-memory broadcast arrays).
The maps are the ones the model modules register: each bound to its architecture's facts."""
import numpy as np
import pytest

from jaxdissect.models import alexnet as alexnet_model
from jaxdissect.models import resnet152 as resnet152_model
from jaxdissect.models import vgg as vgg_model
from weight_conversion.errors import KeyMapError
from weight_conversion.keymaps import common, proggan

alexnet, resnet152, vgg = alexnet_model.KEYMAP, resnet152_model.KEYMAP, vgg_model.KEYMAP

CASES = {
    "vgg": (vgg, {"num_classes": 365}),
    "alexnet": (alexnet, {"num_classes": 365}),
    "resnet152": (resnet152, {"num_classes": 365, "width": 64, "blocks": [3, 8, 36, 3]}),
    "proggan": (proggan, {"z_dim": 512, "channels": [512, 512, 512, 256, 128, 64, 32]}),
}


def _state(keymap, config):
    """A checkpoint with every expected key at its expected shape (no memory used)."""
    return {e.key: np.broadcast_to(np.float32(0), e.shape) for e in keymap.entries(config)}


@pytest.mark.parametrize("family", sorted(CASES))
def test_complete_checkpoint_passes_and_config_reads_back(family):
    keymap, config = CASES[family]
    state = _state(keymap, config)
    common.check_keys(state, keymap.entries(config), family)
    assert keymap.config_from_torch(state) == config


@pytest.mark.parametrize("family", sorted(CASES))
def test_missing_unexpected_and_misshaped_keys_are_named(family):
    keymap, config = CASES[family]
    entries = keymap.entries(config)
    victim, other = entries[len(entries) // 2], entries[-1]

    state = _state(keymap, config)
    del state[victim.key]
    with pytest.raises(KeyMapError, match="1 missing key") as e:
        keymap.convert(state, config)
    assert repr(victim.key) in str(e.value)

    state = _state(keymap, config)
    state["stray.layer.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyMapError, match="1 unexpected key: 'stray.layer.weight'"):
        keymap.convert(state, config)

    state = _state(keymap, config)
    bad = other.shape[:-1] + (other.shape[-1] + 1,)
    state[other.key] = np.zeros(bad, np.float32)
    with pytest.raises(KeyMapError, match="1 mis-shaped key") as e:
        keymap.convert(state, config)
    assert f"{other.key!r} has shape {bad} but" in str(e.value)
    assert f"expects {tuple(other.shape)}" in str(e.value)


def test_all_problems_are_reported_together():
    config = CASES["alexnet"][1]
    state = _state(alexnet, config)
    del state["conv3.weight"], state["fc7.bias"]
    state["conv9.weight"] = np.zeros((1,), np.float32)
    state["fc8.bias"] = np.zeros((1000,), np.float32)
    with pytest.raises(KeyMapError) as e:
        alexnet.convert(state, config)
    msg = str(e.value)
    assert "alexnet_places" in msg and "2 missing keys: 'conv3.weight', 'fc7.bias'" in msg
    assert "1 unexpected key: 'conv9.weight'" in msg
    assert "'fc8.bias' has shape (1000,) but alexnet_places expects (365,)" in msg


def test_num_batches_tracked_is_accepted_not_required():
    config = {"num_classes": 10, "width": 4, "blocks": [1, 2, 1, 1]}
    state = _state(resnet152, config)
    resnet152.convert(state, config)
    state["1.num_batches_tracked"] = np.array(7, np.int64)
    variables = resnet152.convert(state, config)
    assert set(variables) == {"params", "batch_stats"}
    assert variables["batch_stats"]["4"]["0"]["0"]["1"]["1"]["var"].shape == (16,)


def test_config_from_torch_names_the_missing_key():
    with pytest.raises(KeyMapError, match="'classifier.fc8a.weight'"):
        vgg.config_from_torch({})
    with pytest.raises(KeyMapError, match="'layer1.conv.weight'"):
        proggan.config_from_torch({"foo": np.zeros(1)})
    state = _state(resnet152, {"num_classes": 5, "width": 4, "blocks": [1, 1, 1, 1]})
    del state["6.0.0.0.0.weight"]
    with pytest.raises(KeyMapError, match="'6.0.0.0.0.weight'"):
        resnet152.config_from_torch(state)
    with pytest.raises(KeyMapError, match="'fc8.weight'.*2 dimensions"):
        alexnet.config_from_torch({"fc8.weight": np.zeros(3)})


def test_truncated_proggan_names_the_missing_layer():
    config = {"z_dim": 16, "channels": [8, 8, 4]}
    state = _state(proggan, config)
    del state["layer6.conv.weight"], state["layer6.wscale.b"]
    with pytest.raises(KeyMapError, match="'layer6.conv.weight'"):
        proggan.convert(state, proggan.config_from_torch(state))


def test_layouts_by_hand():
    w = np.arange(5 * 3 * 2 * 4, dtype=np.float32).reshape(5, 3, 2, 4)  # O, I, kH, kW
    k = common.conv_kernel(w)
    assert k.shape == (2, 4, 3, 5)
    for o, i, h, x in [(0, 0, 0, 0), (4, 2, 1, 3), (1, 2, 0, 3), (3, 0, 1, 1)]:
        assert k[h, x, i, o] == w[o, i, h, x]
    lin = np.arange(6, dtype=np.float32).reshape(2, 3)  # out, in
    assert common.dense_kernel(lin)[2, 1] == lin[1, 2]
    state = {"a.weight": w[..., :2], "a.bias": np.arange(5.0)}  # float64 in, float32 out
    tree = common.apply_keymap(state, common.conv("a", ("blk", "conv"), 5, 3, 2)[:1]
                               + [common.Entry("a.bias", (5,), ("params", "blk", "conv", "bias"))], "m")
    assert set(tree["params"]["blk"]["conv"]) == {"kernel", "bias"}
    np.testing.assert_array_equal(tree["params"]["blk"]["conv"]["kernel"], k[:, :2])
    assert tree["params"]["blk"]["conv"]["bias"].dtype == np.float32
    with pytest.raises(KeyMapError, match="'a.weight' has shape"):
        common.apply_keymap(state, common.conv("a", ("c",), 5, 3, 3), "m")  # 2x2 kernel, 3x3 expected


def test_grouped_conv_shapes():
    by_key = {e.key: e.shape for e in alexnet.entries({"num_classes": 365})}
    assert by_key["conv2.weight"] == (256, 48, 5, 5)
    assert by_key["conv4.weight"] == (384, 192, 3, 3) and by_key["conv5.weight"] == (256, 192, 3, 3)
    assert by_key["fc6.weight"] == (4096, 9216)
