"""The shipped toy networks: they load through the registry, are measured here (accuracy on val
scenes against their exact labels, with floors far above chance and trivial baselines; nothing
is read back from TRAINING.json), and show the paper's causal findings in miniature (fixed seeds)."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdissect
from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS, Scenes
from jaxdissect.models import load, registry, toy
from jaxdissect.models.weights_io import load_weights
from jaxdissect.segment.base import Segmenter
from jaxdissect.segment.toy import ToySegmenter

WEIGHTS = pathlib.Path(jaxdissect.__file__).parent / "weights"
MEAN = np.asarray(registry.IMAGENET_NORMALIZATION["mean"], np.float32)
STD = np.asarray(registry.IMAGENET_NORMALIZATION["std"], np.float32)


def zero_units(layer, mask):
    """Interceptor multiplying `layer`'s output by (1 - mask) (written here, independently of the script)."""

    def f(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and ".".join(context.module.path) == layer:
            out = out * (1.0 - mask)
        return out

    return f


def capture(module, variables, x, layer, mask):
    def flt(mdl, name):
        return name == "__call__" and ".".join(mdl.path) == layer

    with nn.intercept_methods(zero_units(layer, mask)):
        y, st = module.apply(variables, x, capture_intermediates=flt, mutable=["intermediates"])
    node = st["intermediates"]
    for p in layer.split("."):
        node = node[p]
    return y, node["__call__"][0]


@pytest.fixture(scope="module")
def val500():
    return Scenes("val", 500, seed=0).batch(range(500))


def test_registered_and_loadable():
    assert {"toy_classifier", "toy_segmenter", "toy_generator"} <= set(registry.available())
    clf = load("toy_classifier")
    assert clf.kind == "classifier" and clf.labels == SCENE_CLASSES
    assert clf.normalization == registry.IMAGENET_NORMALIZATION and clf.default_layer == "features.conv4_2"
    gen = load("toy_generator")
    assert gen.kind == "generator" and gen.z_dim == 64
    assert gen.normalization == {"z": "standard_normal", "output_range": (-1, 1)}
    # The shipped folders are weights_io folders recording the training seed.
    _, config, meta = load_weights(WEIGHTS / "toy_classifier")
    assert meta["model"] == "toy_classifier" and meta["seed"] == 0 and config["num_classes"] == 8
    # The package's size budget: each shipped network under 3 MB, all of them under 10 MB (six
    # toys today: classifier, shape-trained classifier, segmenter, generator, ViT, CLIP), so the package stays a quick install.
    folders = [d for d in WEIGHTS.iterdir() if d.is_dir()]
    sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in folders}
    assert {"toy_classifier", "toy_segmenter", "toy_generator"} <= set(sizes)
    assert all(s < 3e6 for s in sizes.values()), sizes
    assert sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file()) < 10e6


def test_layer_shapes_and_values():
    clf = load("toy_classifier")
    x = jnp.zeros((2, 128, 128, 3))
    _, h = capture(clf.module, clf.variables, x, "features.conv4_2", 0.0)
    assert h.shape == (2, 16, 16, 128) and float(h.min()) >= 0.0  # post-ReLU
    gen = load("toy_generator")
    z = jax.random.normal(jax.random.key(0), (2, 64))
    img, h = capture(gen.module, gen.variables, z, "layer6", 0.0)
    assert img.shape == (2, 128, 128, 3) and float(jnp.abs(img).max()) <= 1.0
    assert h.shape == (2, 16, 16, 64)
    with pytest.raises(ValueError, match="z of shape"):
        gen.module.apply(gen.variables, jnp.zeros((2, 63)))


def test_classifier_accuracy_on_val_scenes(val500):
    """Measured here on 500 val scenes (chance 1/8): at least 0.9 overall and 0.8 in every class."""
    clf = load("toy_classifier")
    f = jax.jit(lambda v, x: clf.module.apply(v, (x / 255.0 - MEAN) / STD).argmax(-1))
    pred = np.concatenate([np.asarray(f(clf.variables, jnp.asarray(val500["image"][i:i + 100], jnp.float32)))
                           for i in range(0, 500, 100)])
    truth = val500["scene"]
    assert float((pred == truth).mean()) >= 0.9
    for c, name in enumerate(SCENE_CLASSES):
        assert (truth == c).sum() >= 40, name  # the val split covers every class
        assert float((pred[truth == c] == c).mean()) >= 0.8, name


def test_segmenter_accuracy_on_val_scenes(val500):
    """Measured here on 100 val scenes against their exact segmentation: labelled-pixel accuracy
    and mean IoU per category above floors, and far above predicting each category's most
    frequent label everywhere."""
    seg = ToySegmenter()
    assert isinstance(seg, Segmenter) and seg.labels is SCENE_LABELS
    x = jnp.asarray(val500["image"][:100], jnp.float32) / 127.5 - 1
    pred = np.asarray(seg.segment(x))
    truth = val500["segmentation"][:100]
    assert pred.shape == truth.shape and pred.dtype == np.int32
    floors = {"object": (0.9, 0.6), "part": (0.5, 0.2), "material": (0.85, 0.45), "color": (0.9, 0.6)}
    for c, cat in enumerate(SCENE_LABELS.category_names):
        p, t = pred[:, c], truth[:, c]
        assert all(SCENE_LABELS.categories[i] == cat for i in np.unique(p) if i), cat
        labelled = t > 0
        accuracy = float((p[labelled] == t[labelled]).mean())
        present = [k for k in np.unique(t) if k]
        mean_iou = float(np.mean([((p == k) & (t == k)).sum() / ((p == k) | (t == k)).sum() for k in present]))
        assert accuracy >= floors[cat][0] and mean_iou >= floors[cat][1], (cat, accuracy, mean_iou)
        values, counts = np.unique(t, return_counts=True)
        majority = values[counts.argmax()]
        assert float((p == t).mean()) > float((t == majority).mean()), cat
        if majority == 0:  # mostly unlabelled (parts): the trivial map finds none of the labelled pixels
            continue
        assert float((p == t).mean()) >= float((t == majority).mean()) + 0.4, cat
    half = np.asarray(seg.segment(x[:4], downsample=2))
    assert half.shape == (4, 4, 64, 64)
    with pytest.raises(ValueError, match="NHWC"):
        seg.segment(jnp.zeros((4, 3, 128, 128)))


def _classifier_effects(clf, val, cls, k, n_random=4, seed=0):
    """Accuracy on class `cls` (its val images) with no units, the k most important units, and k random
    units of features.conv4_2 zeroed. Importance: mean over the class's images of activation x gradient
    of the class logit with respect to the spatially pooled activation."""
    layer = "features.conv4_2"
    x = (jnp.asarray(val["image"][val["scene"] == cls], jnp.float32) / 255.0 - MEAN) / STD

    head = toy.ToyClassifierHead(clf.module.hidden, clf.module.num_classes)

    def logit_from_pooled(pooled):
        return head.apply({"params": clf.variables["params"]["classifier"]}, pooled)[:, cls].sum()

    _, acts = capture(clf.module, clf.variables, x, layer, 0.0)
    pooled = acts.mean((1, 2))
    imp = np.asarray((pooled * jax.grad(logit_from_pooled)(pooled)).mean(0))
    units = acts.shape[-1]

    @jax.jit  # variables and images are arguments: one compilation, no constant folding
    def accuracy_of(variables, x, mask):
        with nn.intercept_methods(zero_units(layer, mask)):
            return (clf.module.apply(variables, x).argmax(-1) == cls).mean()

    def accuracy(mask):
        return float(accuracy_of(clf.variables, x, mask))

    base = accuracy(jnp.zeros(units))
    top = accuracy(jnp.zeros(units).at[np.argsort(-imp)[:k]].set(1.0))
    rng = np.random.default_rng(seed)
    rand = [accuracy(jnp.zeros(units).at[rng.choice(units, k, replace=False)].set(1.0)) for _ in range(n_random)]
    return base, top, float(np.mean(rand))


def test_zeroing_most_important_classifier_units_hurts_far_more_than_random(val500):
    clf = load("toy_classifier")
    for cls in (SCENE_CLASSES.index("park"), SCENE_CLASSES.index("street")):
        base, top, rand = _classifier_effects(clf, val500, cls, k=8)
        assert base - top >= 0.3, (SCENE_CLASSES[cls], base, top, rand)
        assert base - top >= 3 * max(base - rand, 0.02), (SCENE_CLASSES[cls], base, top, rand)


def test_zeroing_generator_units_matching_an_object_removes_half_its_pixels():
    """Dissect the default layer of toy_generator against the toy segmenter's object channel on
    100 samples (numpy quantiles and IoU), zero the 8 units best matching trees (the class the
    generator experiments remove), and count tree pixels again: at least half are gone, and far
    more than when 8 random units are zeroed. Settings are this test's own, not the training's."""
    gen, seg = load("toy_generator"), ToySegmenter()
    layer, k, name, samples, seed = gen.default_layer, 8, "tree", 100, 1
    c = SCENE_LABELS.index(name)
    z = np.random.default_rng(seed).standard_normal((samples, gen.z_dim)).astype(np.float32)
    run_v = jax.jit(lambda v, m, z: capture(gen.module, v, z, layer, m))
    run = lambda m, z: run_v(gen.variables, m, z)  # noqa: E731
    outs = [run(0.0, z[i:i + 50]) for i in range(0, len(z), 50)]
    units = outs[0][1].shape[-1]
    objmask = np.concatenate([np.asarray(seg.segment(im, 2))[:, 0] == c for im, _ in outs])
    acts = np.concatenate([np.asarray(jax.image.resize(a, (a.shape[0], 64, 64, units), "bilinear"))
                           for _, a in outs])
    thr = np.quantile(acts.reshape(-1, units), 0.99, axis=0)
    on = acts > thr
    inter = (on & objmask[..., None]).sum((0, 1, 2))
    iou = inter / (on.sum((0, 1, 2)) + objmask.sum() - inter)

    def pixels_with_zeroed(chosen):
        mask = jnp.zeros(units).at[chosen].set(1.0)
        return sum(int((np.asarray(seg.segment(run(mask, z[i:i + 50])[0], 2))[:, 0] == c).sum())
                   for i in range(0, len(z), 50))

    before = int(objmask.sum())
    assert before > 500  # the generator draws trees
    best = pixels_with_zeroed(np.argsort(-iou)[:k])
    rng = np.random.default_rng(0)
    rand = pixels_with_zeroed(rng.choice(units, k, replace=False))
    removed_best, removed_random = 1 - best / before, 1 - rand / before
    print(f"{name}: {before} pixels; best {k} units zeroed: {removed_best:.2f} removed, random: {removed_random:.2f}")
    assert removed_best >= 0.5, (before, best)
    assert removed_best >= removed_random + 0.3, (removed_best, removed_random)
