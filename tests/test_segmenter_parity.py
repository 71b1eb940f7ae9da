"""Parity of the Flax segmenters with PyTorch reference implementations (tests/torch_segmenters.py)
on random weights and random BatchNorm statistics: head logits, probabilities, label maps."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_segmenters as ref  # noqa: E402
from jaxdissect.segment.base import Segmenter  # noqa: E402
from jaxdissect.segment.color import SemanticSegmenter  # noqa: E402
from jaxdissect.segment.merge import MergedSegmenter, load_segmenter  # noqa: E402
from jaxdissect.segment.upp import UnifiedParsingSegmenter  # noqa: E402
from weight_conversion.errors import KeyMapError  # noqa: E402

# object_part keys deliberately out of object-id order: the decoder orders part groups by
# ascending object id (building, sky, person, car), the default owners are sky, building, person.
UPP_LABELS = {
    "object": ["-", "wall", "building", "sky", "person", "door", "car", "tree"],
    "material": ["-", "wood", "glass", "brick"],
    "scene": ["street", "room", "forest"],
    "part": ["head", "arm", "leg", "wheel", "door", "window", "roof", "cloud", "sun"],
    "object_part": {"person": ["head", "arm", "leg"], "car": ["wheel", "door", "window"],
                    "building": ["window", "door", "roof"], "sky": ["cloud", "sun"]},
}
COLOR_META = {
    "labels": [{"name": "red", "category": "color"}, {"name": "green", "category": "color"},
               {"name": "blue", "category": "color"}, {"name": "void", "category": "color", "internal": True},
               {"name": "dark", "category": "shade"}, {"name": "green", "category": "shade"},
               {"name": "light", "category": "shade"}],
    "categories": [{"name": "color"}, {"name": "shade", "mask": "red"}],
    "imageformat": {"byteorder": "BGR", "mean": [0.4, 0.45, 0.5], "stdev": [0.2, 0.25, 0.3]},
    "segsizes": [48, 64],
}
SMALL = dict(stage_sizes=(2, 1, 1, 1), stem=(8, 8, 16), planes=(8, 16, 16, 32))
REL = 1e-4


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def upp_torch():
    return ref.build_upp(UPP_LABELS, fpn_dim=16, ppm_dim=16, seed=1, **SMALL)


@pytest.fixture(scope="module")
def color_torch():
    return ref.build_color(len(COLOR_META["labels"]), ppm_dim=16, seed=2, **SMALL)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (2, 80, 72, 3)).astype(np.float32)  # not square, not a segsize


def test_upp_head_logits(upp_torch):
    enc, dec = ref.state_dicts(upp_torch)
    seg = UnifiedParsingSegmenter.from_state_dicts(enc, dec, UPP_LABELS, segsizes=(64,))
    x = np.random.default_rng(1).normal(0, 50, (2, 96, 64, 3)).astype(np.float32)
    got = seg.logits(seg.variables, jnp.asarray(x))
    with torch.no_grad():
        want = upp_torch(torch.from_numpy(nchw(x)))
    for head in ("object", "part", "material"):
        assert got[head].shape == tuple(want[head].permute(0, 2, 3, 1).shape)
        assert rel_err(nchw(got[head]), want[head].numpy()) < REL, head
    assert rel_err(got["scene"], want["scene"].numpy()) < REL


def test_upp_quad_all_parts_matches_reference(upp_torch, images):
    enc, dec = ref.state_dicts(upp_torch)
    seg = UnifiedParsingSegmenter.from_state_dicts(enc, dec, UPP_LABELS, segsizes=(96,),
                                                   segdiv="quad", all_parts=True)
    assert isinstance(seg, Segmenter)
    _, _, labels, want = ref.upp_reference(upp_torch, UPP_LABELS, images, downsample=2,
                                           segsizes=(96,), quad=True, all_parts=True)
    assert seg.labels.as_pairs() == labels
    got = np.asarray(seg.segment(jnp.asarray(images), downsample=2))
    assert got.dtype == np.int32 and got.shape == want.shape == (2, 5, 40, 36)
    np.testing.assert_array_equal(got, want)
    assert (got[:, 2] != 0).any(), "the test image should show some parts"
    assert len(np.unique(got[:, 0])) >= 4, "the test image should show several objects"


def test_upp_default_owners_matches_reference(upp_torch, images):
    enc, dec = ref.state_dicts(upp_torch)
    seg = UnifiedParsingSegmenter.from_state_dicts(enc, dec, UPP_LABELS, segsizes=(64,))
    probs, _, labels, want = ref.upp_reference(upp_torch, UPP_LABELS, images, downsample=2, segsizes=(64,))
    assert seg.labels.as_pairs() == labels
    got_probs = seg.predict(jnp.asarray(images), downsample=2)
    for k in ("object", "material"):
        assert rel_err(nchw(got_probs[k]), probs[k].numpy()) < REL, k
    assert len(got_probs["parts"]) == len(probs["parts"]) == 3  # sky, building, person
    for g, w in zip(got_probs["parts"], probs["parts"]):
        assert rel_err(nchw(g), w.numpy()) < REL
    got = np.asarray(seg.segment(jnp.asarray(images), downsample=2))
    assert got.shape == (2, 3, 40, 36)
    np.testing.assert_array_equal(got, want)


def test_color_logits_and_segment(color_torch, images):
    enc, dec = ref.state_dicts(color_torch)
    assert any(k.startswith("cbr_deepsup") for k in dec)  # training-only keys are present...
    seg = SemanticSegmenter.from_state_dicts(enc, dec, COLOR_META)  # ...and accepted
    x = np.random.default_rng(2).normal(0, 1, (2, 48, 56, 3)).astype(np.float32)
    got = seg.logits(seg.variables, jnp.asarray(x))
    with torch.no_grad():
        want = color_torch(torch.from_numpy(nchw(x))).numpy()
    assert got.shape == (2, 6, 7, 7)
    assert rel_err(nchw(got), want) < REL

    _, _, labels, want_seg = ref.color_reference(color_torch, COLOR_META, images, 2, (48, 64))
    assert seg.labels.as_pairs() == labels
    assert seg.labels.category_names == ("color", "shade")
    got_seg = np.asarray(seg.segment(jnp.asarray(images), 2))
    assert got_seg.shape == (2, 2, 40, 36)
    np.testing.assert_array_equal(got_seg, want_seg)
    assert (got_seg[:, 1] == 0).any() and (got_seg[:, 1] != 0).any()  # the mask acts


def test_keymap_errors_name_the_key(upp_torch):
    enc, dec = ref.state_dicts(upp_torch)
    bad = dict(dec)
    del bad["object_head.0.1.running_var"]
    with pytest.raises(KeyMapError, match="object_head.0.1.running_var"):
        UnifiedParsingSegmenter.from_state_dicts(enc, bad, UPP_LABELS)
    bad = dict(enc)
    bad["layer2.0.conv2.weight"] = bad["layer2.0.conv2.weight"][:, :, :1]
    with pytest.raises(KeyMapError, match="layer2.0.conv2.weight"):
        UnifiedParsingSegmenter.from_state_dicts(bad, dec, UPP_LABELS)
    labels = dict(UPP_LABELS, material=UPP_LABELS["material"][:-1])
    with pytest.raises(ValueError, match="material"):
        UnifiedParsingSegmenter.from_state_dicts(enc, dec, labels)


def _write_model_folder(folder, model, labeldata, epoch):
    os.makedirs(folder)
    torch.save(model.encoder.state_dict(), os.path.join(folder, f"encoder_epoch_{epoch}.pth"))
    torch.save(model.decoder.state_dict(), os.path.join(folder, f"decoder_epoch_{epoch}.pth"))
    with open(os.path.join(folder, "labels.json"), "w") as f:
        json.dump(labeldata, f)


def test_load_segmenter_netpqc_from_files(tmp_path, upp_torch, color_torch, images):
    pytest.importorskip("weight_conversion.pth_reader")
    _write_model_folder(tmp_path / "upp-resnet50-upernet", upp_torch, UPP_LABELS, 40)
    _write_model_folder(tmp_path / "color-resnet18dilated-ppm_deepsup", color_torch, COLOR_META, 20)
    seg = load_segmenter("netpqc", weights_dir=tmp_path, segsizes=(96,))
    assert isinstance(seg, MergedSegmenter)
    _, _, upp_labels, upp_seg = ref.upp_reference(upp_torch, UPP_LABELS, images, 2, (96,), True, True)
    _, _, color_labels, color_seg = ref.color_reference(color_torch, COLOR_META, images, 2, (48, 64))
    names = [n for n, _ in upp_labels] + [n for n, _ in color_labels[1:]]
    assert list(seg.labels.names) == names
    got = np.asarray(seg.segment(jnp.asarray(images), 2))
    offset = len(upp_labels) - 1
    want = np.concatenate([upp_seg, np.where(color_seg == 0, 0, color_seg + offset)], axis=1)
    np.testing.assert_array_equal(got, want)
    assert (got[:, 5:] == 0).any()  # 'no label' stays 0 after merging
    with pytest.raises(ValueError, match="texture"):
        load_segmenter("netpqxc", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown segmenter"):
        load_segmenter("netz", weights_dir=tmp_path)


@pytest.mark.slow
def test_upp_full_size_parity():
    """The published architecture (ResNet-50 deep stem, fpn_dim 512) on one 256x256 image."""
    model = ref.build_upp(UPP_LABELS, seed=3)
    enc, dec = ref.state_dicts(model)
    seg = UnifiedParsingSegmenter.from_state_dicts(enc, dec, UPP_LABELS, segdiv="quad", all_parts=True)
    assert seg.config.fpn_dim == 512 and seg.config.stage_sizes == (3, 4, 6, 3)
    img = np.random.default_rng(3).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    probs, raw, _, want = ref.upp_reference(model, UPP_LABELS, img, 4, (256,), True, True)
    bgr = (img + 1) / 2 * 255
    bgr = bgr[..., ::-1] - np.array([102.9801, 115.9465, 122.7717], np.float32)
    got_raw = seg.logits(seg.variables, jnp.asarray(bgr))
    for head in ("object", "part", "material"):
        assert rel_err(nchw(got_raw[head]), raw[head].numpy()) < REL, head
    assert rel_err(got_raw["scene"], raw["scene"].numpy()) < REL
    np.testing.assert_array_equal(np.asarray(seg.segment(jnp.asarray(img), 4)), want)


def test_segmenter_networks_load_as_registered_models(tmp_path, monkeypatch, upp_torch, color_torch):
    """models.load('upp_segmenter' / 'color_segmenter'): from a folder of the original's files, and
    by default from the cache's copy of them; the bare network equals the segmenter's, layers capture."""
    import jaxdissect
    from jaxdissect import models

    home = tmp_path / "home"
    monkeypatch.setenv("JAXDISSECT_HOME", str(home))
    _write_model_folder(home / "segmodel" / "upp-resnet50-upernet", upp_torch, UPP_LABELS, 40)
    _write_model_folder(tmp_path / "color", color_torch, COLOR_META, 20)
    x = jnp.asarray(np.random.default_rng(4).normal(0, 60, (1, 64, 64, 3)).astype(np.float32))

    upp = models.load("upp_segmenter")  # the cache already holds the files: nothing is downloaded
    assert upp.kind == "segmenter" and upp.config["num_object"] == len(UPP_LABELS["object"])
    wrapper = UnifiedParsingSegmenter.from_state_dicts(*ref.state_dicts(upp_torch), UPP_LABELS)
    out, acts = jaxdissect.capture(upp, x, layers=("encoder.layer4", "decoder.conv_fusion"))
    want = wrapper.logits(wrapper.variables, x)
    for k in ("object", "part", "material", "scene"):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(want[k]))
    with torch.no_grad():
        feats = upp_torch.encoder(torch.from_numpy(nchw(x).copy()))
    assert rel_err(nchw(acts["encoder.layer4"]), feats[-1].numpy()) < REL
    assert acts["decoder.conv_fusion"].shape[-1] == 16

    color = models.load("color_segmenter", weights=tmp_path / "color")
    assert color.config["num_class"] == len(COLOR_META["labels"])
    with torch.no_grad():
        want = color_torch(torch.from_numpy(nchw(x).copy())).numpy()
    out, _ = jaxdissect.capture(color, x, layers=())
    assert rel_err(nchw(out), want) < REL

    # python -m weight_conversion writes a weights folder that loads like any other
    from weight_conversion.__main__ import main as convert_main

    assert convert_main(["--model", "color_segmenter", "--pth", str(tmp_path / "color"),
                         "--out", str(tmp_path / "converted")]) == 0
    again = models.load("color_segmenter", weights=tmp_path / "converted")
    np.testing.assert_array_equal(np.asarray(jaxdissect.capture(again, x, layers=())[0]), np.asarray(out))

    with pytest.raises(ValueError, match="pass the folder"):
        models.load("upp_segmenter", weights=home / "segmodel" / "upp-resnet50-upernet" / "encoder_epoch_40.pth")
    with pytest.raises(FileNotFoundError, match="labels.json"):
        os.remove(tmp_path / "color" / "labels.json")
        models.load("color_segmenter", weights=tmp_path / "color")
