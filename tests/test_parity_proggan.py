"""Progressive GAN generator: the Flax port equals a PyTorch reference of the original's
ProgressiveGenerator on random weights, for the output and every layer; sizes and resolution come
from the checkpoint (256x256 scene models, 1024x1024 celebhq)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402
from jaxdissect.models import proggan, registry  # noqa: E402
from jaxdissect.models.layers import PixelNorm, UpsampleNearest2x  # noqa: E402
from weight_conversion.keymaps import proggan as keymap  # noqa: E402

DOMAIN_FILES = {
    "bedroom": "proggan_bedroom-d8a89ff1", "church": "proggan_churchoutdoor-7e701dd5",
    "conferenceroom": "proggan_conferenceroom-21e85882", "diningroom": "proggan_diningroom-3aa0ab80",
    "kitchen": "proggan_kitchen-67f1e16c", "livingroom": "proggan_livingroom-5ef336dd",
    "restaurant": "proggan_restaurant-b8578299", "celebhq": "proggan_celebhq-620d161c",
}


def _parity(sizes, batch, seed, inner=()):
    ref = tr.randomize_(tr.ProgressiveGenerator(sizes), seed=seed, conv_std="unit")
    state = tr.state_dict_numpy(ref)
    spec = registry.get_spec("proggan_bedroom")  # every domain shares the same build/convert
    config = spec.config_from_torch(state)
    assert config == {"z_dim": sizes[0], "channels": list(sizes[1:])}
    variables = spec.convert(state, config)
    module = spec.build(config)

    z = np.random.default_rng(seed).standard_normal((batch, sizes[0])).astype(np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), z)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)

    names = list(proggan.layer_names(config["channels"])) + list(inner)
    assert len(names) - len(inner) == 2 * (len(sizes) - 1) + 1
    y_t, retained, _ = tr.run_with_hooks(ref, z, retain=names)
    y_f, acts = tr.flax_capture(module, variables, z, names)
    tr.assert_close(y_f, y_t, "output")
    assert np.std(y_t) > 0.1
    for name in names:
        tr.assert_close(acts[name], retained[name], name)
    return y_f, acts, state, variables


def test_proggan_parity_256_full_size():
    sizes = [512, 512, 512, 512, 256, 128, 64, 32]  # the published scene generators' widths
    y, acts, state, variables = _parity(sizes, batch=2, seed=6, inner=["layer3.up", "layer5.conv"])
    assert y.shape == (2, 256, 256, 3)
    assert acts["layer4"].shape == (2, 8, 8, 512) and acts["layer14"].shape == (2, 256, 256, 32)
    assert "output_256x256" in acts
    # The same weights under the original's older key names convert to the same variables.
    old = {}
    for k, v in state.items():
        if k.startswith("layer"):
            n, rest = k[len("layer"):].split(".", 1)
            old[f"features.{int(n) - 1}.{rest}"] = v
        else:
            old["output." + k.split(".", 1)[1]] = v
    assert keymap.config_from_torch(old) == keymap.config_from_torch(state)
    converted = keymap.convert(old, keymap.config_from_torch(old))
    jax.tree.map(np.testing.assert_array_equal, converted, variables)


def test_proggan_parity_1024_full_size():
    sizes = [512, 512, 512, 512, 512, 256, 128, 64, 32, 16]  # the celebhq layout (9 resolutions)
    y, acts, _, _ = _parity(sizes, batch=1, seed=8)
    assert y.shape == (1, 1024, 1024, 3) and "output_1024x1024" in acts and "layer18" in acts


def test_pixel_norm_and_upsample_by_hand():
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(np.asarray(PixelNorm().apply({}, x)), want, rtol=1e-5)
    up = np.asarray(UpsampleNearest2x().apply({}, x))
    assert up.shape == (2, 6, 8, 5)
    for i in range(6):
        for j in range(8):
            np.testing.assert_array_equal(up[:, i, j], x[:, i // 2, j // 2])


def test_proggan_rejects_wrong_z():
    module = proggan.build({"z_dim": 8, "channels": [4, 4]})
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        module.init(jax.random.key(0), np.zeros((2, 7), np.float32))


@pytest.mark.parametrize("domain", sorted(DOMAIN_FILES))
def test_proggan_specs(domain):
    spec = registry.get_spec(f"proggan_{domain}")
    stem = DOMAIN_FILES[domain]
    assert spec.kind == "generator" and spec.input_size is None
    assert spec.url == f"https://dissect.csail.mit.edu/models/{stem}.pth"
    assert spec.sha256_prefix == stem.rsplit("-", 1)[1]
    assert spec.normalization["z"] == "standard_normal"
    assert tuple(spec.normalization["output_range"]) == (-1, 1)
    assert spec.default_layer == "layer4"
    res = 1024 if domain == "celebhq" else 256
    n = 18 if domain == "celebhq" else 14
    assert spec.layer_names == tuple(f"layer{i}" for i in range(1, n + 1)) + (f"output_{res}x{res}",)
    out = jax.eval_shape(spec.build(spec.default_config).init_with_output, jax.random.key(0),
                         jax.ShapeDtypeStruct((1, spec.default_config["z_dim"]), np.float32))[0]
    assert out.shape == (1, res, res, 3)


def test_proggan_from_legacy_pth_file(tmp_path):
    """A legacy-format torch.save -> models.load (read_pth, sizes from the file) -> capture equals torch."""
    import jaxdissect
    from jaxdissect import models

    sizes = [64, 32, 32, 16]  # a 16x16 generator: 6 layers + output_16x16
    ref = tr.randomize_(tr.ProgressiveGenerator(sizes), seed=10, conv_std="unit")
    path = tmp_path / "gen.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)
    model = models.load("proggan_kitchen", weights=path, cache=False)
    assert model.config == {"z_dim": 64, "channels": [32, 32, 16]} and model.z_dim == 64
    z = np.random.default_rng(10).standard_normal((3, 64)).astype(np.float32)
    y_f, acts = jaxdissect.capture(model, z, layers=("layer4", "output_16x16"))
    y_t, retained, _ = tr.run_with_hooks(ref, z, retain=["layer4", "output_16x16"])
    tr.assert_close(np.asarray(y_f), y_t, "output")
    for name in ("layer4", "output_16x16"):
        tr.assert_close(np.asarray(acts[name]), retained[name], name)
