"""The toy vision transformer: its layers and views, its attention written out in numpy, and the
shipped weights' recorded accuracy and dissection."""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdissect
from jaxdissect.capturing import capture_views_fn
from jaxdissect.data.scenes import SCENE_CLASSES, Scenes
from jaxdissect.models import load, registry, vit

WEIGHTS = pathlib.Path(jaxdissect.__file__).parent / "weights"
SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "scripts"
MEAN = np.asarray(registry.IMAGENET_NORMALIZATION["mean"], np.float32)
STD = np.asarray(registry.IMAGENET_NORMALIZATION["std"], np.float32)
SMALL = {**vit.VIT_CONFIG, "dim": 16, "depth": 2, "heads": 4, "mlp": 32}


def recorded():
    return json.loads((WEIGHTS / "TRAINING.json").read_text())["vit"]["metrics"]


def small_model():
    module = vit.build_vit(SMALL)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3)))
    return registry.LoadedModel("small_vit", "classifier", module, variables, SMALL, (128, 128),
                                registry.IMAGENET_NORMALIZATION, "blocks.1", vit.vit_layer_names(SMALL), None,
                                layer_views=vit.vit_layer_views(SMALL))


X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 128, 128, 3)), jnp.float32)


def test_layer_names_and_views():
    names = vit.vit_layer_names(SMALL)
    assert names[:6] == ("patch_embed", "blocks.0.attn.heads", "blocks.0.attn", "blocks.0.mlp.fc1", "blocks.0.mlp",
                         "blocks.0")
    model = small_model()
    assert set(names) <= set(jaxdissect.capturing.valid_layer_names(model))
    assert model.layer_views["blocks.1"] == vit.LayerView(prefix_tokens=1)
    assert model.layer_views["blocks.1.attn.heads"] == vit.LayerView(prefix_tokens=1, heads=4)
    _, acts = jaxdissect.capture(model, X, layers=("patch_embed", "blocks.1"))
    assert acts["patch_embed"].shape == (2, 8, 8, 16) and acts["blocks.1"].shape == (2, 65, 16)


def test_patch_embedding_is_a_stride_16_convolution():
    model = small_model()
    _, acts = jaxdissect.capture(model, X, layers=("patch_embed",))
    p = model.variables["params"]["patch_embed"]
    want = jax.lax.conv_general_dilated(X, p["kernel"], (16, 16), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest") + p["bias"]
    np.testing.assert_allclose(np.asarray(acts["patch_embed"]), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_heads_layer_is_attention_over_the_qkv_channels_head_by_head():
    model = small_model()
    layers = ("blocks.0.attn.qkv", "blocks.0.attn.heads", "blocks.0.attn")
    _, acts = jaxdissect.capture(model, X, layers=layers)
    qkv = np.asarray(acts["blocks.0.attn.qkv"], np.float64)
    d, heads = SMALL["dim"], SMALL["heads"]
    hd = d // heads
    want = np.zeros(qkv.shape[:2] + (d,))
    for h in range(heads):
        q, k, v = (qkv[..., part * d + h * hd: part * d + (h + 1) * hd] for part in range(3))
        logits = np.einsum("ntc,nsc->nts", q, k) / np.sqrt(hd)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        want[..., h * hd:(h + 1) * hd] = np.einsum("nts,nsc->ntc", w / w.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(np.asarray(acts["blocks.0.attn.heads"]), want, rtol=2e-3, atol=2e-4)
    proj = model.variables["params"]["blocks"]["0"]["attn"]["proj"]
    np.testing.assert_allclose(np.asarray(acts["blocks.0.attn"]), want @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"]),
                               rtol=2e-3, atol=2e-4)
    # One unit per head: the norm of the head's output channels at each patch (class token dropped).
    _, views = capture_views_fn(model, ("blocks.0.attn.heads:head_norms", "blocks.0.attn.heads"))(model.variables, X, {})
    grid = want[:, 1:].reshape(2, 8, 8, d)
    np.testing.assert_allclose(np.asarray(views["blocks.0.attn.heads"]), grid, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(np.asarray(views["blocks.0.attn.heads:head_norms"]),
                               np.linalg.norm(grid.reshape(2, 8, 8, heads, hd), axis=-1), rtol=2e-3, atol=2e-4)


def test_shipped_toy_vit_reproduces_its_recorded_val_accuracy():
    model = load("toy_vit")
    assert model.kind == "classifier" and model.labels == SCENE_CLASSES and model.default_layer in model.layer_names
    val = Scenes("val", 500, seed=0).batch(range(500))
    f = jax.jit(lambda v, x: model.module.apply(v, (x / 255.0 - MEAN) / STD).argmax(-1))
    pred = np.concatenate([np.asarray(f(model.variables, jnp.asarray(val["image"][i:i + 100], jnp.float32)))
                           for i in range(0, 500, 100)])
    acc = float((pred == val["scene"]).mean())
    rec = recorded()
    assert rec["val_size"] == 500 and abs(acc - rec["val_accuracy"]) <= 2 / 500
    assert acc >= 0.9


def test_recorded_dissection_of_the_best_block():
    blocks = {k: v for k, v in recorded()["dissection"].items() if k.startswith("blocks.")}
    assert len(blocks) == vit.VIT_CONFIG["depth"]
    best = max(blocks.values(), key=lambda s: s["fraction"])
    assert best["fraction"] >= 0.2 and best["units"] == vit.VIT_CONFIG["dim"]


@pytest.mark.slow
def test_dissection_of_the_default_block_reproduces_the_record(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import train_toy_vit
    finally:
        sys.path.remove(str(SCRIPTS))
    model = load("toy_vit")
    layer = model.default_layer
    got = train_toy_vit.measure_layers(model, (layer,), 0, None)[layer]
    want = recorded()["dissection"][layer]
    assert abs(got["units_iou_gt"] - want["units_iou_gt"]) <= 1
    assert got["units_iou_gt"] >= 0.2 * got["units"]
