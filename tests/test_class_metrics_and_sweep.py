"""Per-class metrics against hand computation; ablation sweeps against full edited forwards."""
import jax
import jax.numpy as jnp
import numpy as np

import small_models
from jaxdissect import edit
from jaxdissect.capturing import capture
from jaxdissect.experiments.class_metrics import ClassCounts
from jaxdissect.experiments.sweep import sweep_predictions, tail_function
from stats_helpers import run_sharded


def test_class_metrics_match_definitions():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    preds = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2, 0])
    m = {k: np.asarray(v) for k, v in ClassCounts.create(4).update(preds, labels).metrics().items()}
    n = len(labels)
    for c in range(3):
        tp = ((preds == c) & (labels == c)).sum()
        fp = ((preds == c) & (labels != c)).sum()
        fn = ((preds != c) & (labels == c)).sum()
        tn = n - tp - fp - fn
        np.testing.assert_allclose(m["precision"][c], tp / (tp + fp))
        np.testing.assert_allclose(m["recall"][c], tp / (tp + fn))
        np.testing.assert_allclose(m["accuracy"][c], (tp + tn) / n)
        np.testing.assert_allclose(m["true_negative_rate"][c], tn / (tn + fp))
        np.testing.assert_allclose(m["balanced_accuracy"][c], (tp / (tp + fn) + tn / (tn + fp)) / 2, rtol=1e-6)
    assert np.isnan(m["recall"][3])  # a class never seen


def test_class_counts_merge_across_devices():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 6, 64), rng.integers(0, 6, 64)
    whole = ClassCounts.create(6).update(preds, labels)
    sharded = run_sharded(lambda p, l: ClassCounts.create(6).update(p, l).all_reduce("data"), preds, labels)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sweep_equals_full_forward_with_each_ablation():
    model = small_models.tiny_classifier()
    x = jax.random.normal(jax.random.key(2), (6, 16, 16, 3))
    _, acts = capture(model, x, ("features.conv2",))
    tail = tail_function(model, "features.conv2")
    out, _ = capture(model, x)
    np.testing.assert_allclose(np.asarray(tail(model.variables, acts["features.conv2"])), np.asarray(out),
                               rtol=1e-5, atol=1e-5)
    masks = jnp.eye(16)[:11]  # single-unit ablations, a count that does not divide the chunk
    preds = np.asarray(jax.jit(lambda v, a, m: sweep_predictions(tail, v, a, m, chunk=4))(
        model.variables, acts["features.conv2"], masks))
    for u in range(11):
        logits, _ = capture(model, x, (), edits={"features.conv2": edit.ablate([u], 16)})
        np.testing.assert_array_equal(preds[u], np.argmax(np.asarray(logits), -1))


def test_tail_skips_the_layers_before():
    model = small_models.tiny_classifier()
    acts = jnp.ones((2, 8, 8, 16))
    tail = tail_function(model, "features.conv2")
    hlo = jax.jit(tail).lower(model.variables, acts).as_text()
    assert hlo.count("convolution(") == 1  # only conv3 remains; conv1 and conv2 are gone
