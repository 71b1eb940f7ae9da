"""The Flax CLIP (ViT) port equals a PyTorch reference on random weights, through the key map,
the TorchScript reader and `models.load`; a missing checkpoint says which file to get."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import torch_clip  # noqa: E402
from jaxdissect.models import clip as jclip  # noqa: E402
from jaxdissect.models import get_spec, load  # noqa: E402
from weight_conversion import DownloadError, KeyMapError  # noqa: E402
from weight_conversion.keymaps import clip as keymap  # noqa: E402
from weight_conversion.torchscript import is_torchscript, read_checkpoint, read_torchscript  # noqa: E402


def _inputs(cfg, n=3, seed=0):
    rng = np.random.default_rng(seed)
    r = cfg["image_resolution"]
    images = rng.normal(size=(n, 3, r, r)).astype(np.float32)
    tokens = np.zeros((n, cfg["context_length"]), np.int64)
    eot = cfg["vocab_size"] - 1
    for i, length in enumerate([5, 17, cfg["context_length"]][:n]):
        tokens[i, 0] = eot - 1
        tokens[i, 1:length - 1] = rng.integers(1, eot - 1, length - 2)
        tokens[i, length - 1] = eot
    return images, tokens


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _flax_features(state, images, tokens):
    config = keymap.config_from_torch(state)
    variables = keymap.convert(state, config)
    module = jclip.build_clip(config)
    x = jnp.asarray(images.transpose(0, 2, 3, 1))
    fi = module.apply(variables, x, method="encode_image")
    ft = module.apply(variables, jnp.asarray(tokens, jnp.int32), method="encode_text")
    return np.asarray(fi), np.asarray(ft), config


def _check_parity(cfg, seed=0):
    ref = torch_clip.randomize(torch_clip.CLIP(**cfg), seed)
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        ti, tt = ref(torch.from_numpy(images), torch.from_numpy(tokens))
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    fi, ft, config = _flax_features(state, images, tokens)
    assert config == cfg
    assert _rel(fi, ti.numpy()) <= 1e-4, _rel(fi, ti.numpy())
    assert _rel(ft, tt.numpy()) <= 1e-4, _rel(ft, tt.numpy())
    assert np.std(ft) > 1e-2 and np.std(fi) > 1e-2  # not a degenerate comparison
    return ref, state


def test_small_clip_matches_torch():
    with jax.default_matmul_precision("float32"):
        _check_parity(torch_clip.SMALL)


def test_text_pooling_reads_the_end_token_and_is_causal():
    cfg = torch_clip.SMALL
    ref = torch_clip.randomize(torch_clip.CLIP(**cfg), 1)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    _, tokens = _inputs(cfg)
    changed = tokens.copy()
    changed[1, 16:] = 0  # after the end token of row 1 (length 17): must not matter
    changed[1, 16] = tokens[1, 16]
    changed[1, 20:30] = 7
    _, a, _ = _flax_features(state, np.zeros((1, 3, 224, 224), np.float32), tokens)
    _, b, _ = _flax_features(state, np.zeros((1, 3, 224, 224), np.float32), changed)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)


def test_torchscript_archive_reads_like_the_state_dict(tmp_path):
    cfg = torch_clip.SMALL
    ref = torch_clip.randomize(torch_clip.CLIP(**cfg), 2)
    ref.input_resolution = torch.nn.Parameter(torch.tensor(224), requires_grad=False)  # as in OpenAI's archives
    images, tokens = _inputs(cfg, 2)
    traced = torch.jit.trace(ref, (torch.from_numpy(images), torch.from_numpy(tokens)), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    assert is_torchscript(path)
    got = read_torchscript(path)
    want = {k: v.numpy() for k, v in traced.state_dict().items()}
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert "input_resolution" in got  # dropped by the key map, not an error
    variables = keymap.convert(got, keymap.config_from_torch(got))
    assert variables["params"]["logit_scale"].shape == ()


def test_torchscript_reader_refuses_other_globals(tmp_path):
    import pickle
    import zipfile

    from weight_conversion import PthReadError

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(os.system, protocol=2))
        zf.writestr("evil/constants.pkl", b"")
    with pytest.raises(PthReadError, match="refusing to load global"):
        read_torchscript(path)


def test_load_converts_a_torchscript_file_and_a_pth(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    cfg = torch_clip.SMALL
    ref = torch_clip.randomize(torch_clip.CLIP(**cfg), 3)
    images, tokens = _inputs(cfg, 2)
    with torch.no_grad():
        ti, tt = ref(torch.from_numpy(images), torch.from_numpy(tokens))
    jit_path = tmp_path / "ViT-small.pt"
    torch.jit.trace(ref, (torch.from_numpy(images), torch.from_numpy(tokens)), check_trace=False).save(str(jit_path))
    pth_path = tmp_path / "small_state.pth"
    torch.save(ref.state_dict(), pth_path)
    assert read_checkpoint(pth_path).keys() == read_checkpoint(jit_path).keys()
    for path in (jit_path, pth_path):
        model = load("clip_vit_b32", weights=str(path))
        assert model.kind == "clip" and model.config["vision_width"] == 128
        assert model.layer_names[-2] == "visual.transformer.resblocks.1"
        fi = model.module.apply(model.variables, jnp.asarray(images.transpose(0, 2, 3, 1)), method="encode_image")
        ft = model.module.apply(model.variables, jnp.asarray(tokens, jnp.int32), method="encode_text")
        assert _rel(np.asarray(fi), ti.numpy()) <= 1e-4
        assert _rel(np.asarray(ft), tt.numpy()) <= 1e-4


def test_key_map_names_missing_and_misshaped_keys():
    cfg = torch_clip.SMALL
    state = {k: v.numpy() for k, v in torch_clip.CLIP(**cfg).state_dict().items()}
    config = keymap.config_from_torch(state)
    broken = dict(state)
    del broken["visual.ln_post.bias"]
    broken["text_projection"] = np.zeros((128, 3), np.float32)
    with pytest.raises(KeyMapError, match=r"visual\.ln_post\.bias.*text_projection"):
        keymap.convert(broken, config)
    with pytest.raises(KeyMapError, match="visual.conv1.weight"):
        keymap.config_from_torch({"x": np.zeros(1)})


def test_registration_and_missing_checkpoint_message(tmp_path, monkeypatch):
    spec = get_spec("clip_vit_b32")
    assert spec.kind == "clip" and spec.url.endswith("/ViT-B-32.pt")
    assert spec.sha256_prefix in spec.url  # the original publishes the sha256 as the URL's folder
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))

    def offline(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DownloadError) as err:
        load("clip_vit_b32")
    msg = str(err.value)
    assert "ViT-B-32.pt" in msg and str(tmp_path / "home" / "downloads" / "ViT-B-32.pt") in msg
    assert not list((tmp_path / "home" / "downloads").glob("*"))  # no partial file left


@pytest.mark.slow
def test_full_size_vit_b32_matches_torch():
    with jax.default_matmul_precision("float32"):
        _check_parity(torch_clip.VIT_B32, seed=5)
