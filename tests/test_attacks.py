"""Targeted attacks: CW-L2 against the closed-form minimal perturbation of a linear model, PGD's
ball and box, per-example independence of the vmapped batch, gradients against finite
differences (float64, in a subprocess), and success rate / L2 on the trained toy classifier (slow)."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import models
from jaxdissect.experiments import attacks as A

D, K = 4 * 4 * 3, 3


def tiny_model(size=16, dtype=np.float32):
    """small_models' TinyNet with numpy-drawn weights (its flax init compiles slowly on CPU)."""
    import small_models
    from jaxdissect.models.registry import LoadedModel

    module = small_models.TinyNet()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(
        rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(dtype)), shapes)
    return LoadedModel("tiny", "classifier", module, variables, {}, (size, size), small_models.IMAGENET_NORMALIZATION,
                       "features.conv3", ("features.conv1", "features.conv2", "features.conv3"), None)


def linear_forward(params, x):
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


def linear_problem(seed=0, n=3):
    """A 3-class linear model on (4, 4, 3) images near mid-gray; class 2 is never competitive, so the
    minimal L2 perturbation to flip source -> target is |margin| / ||w_t - w_s|| along w_t - w_s."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K)).astype(np.float32)
    b = np.array([0.0, 0.0, -100.0], np.float32)
    x = np.clip(0.5 + 0.05 * rng.normal(size=(n, 4, 4, 3)), 0, 1).astype(np.float32)
    logits = linear_forward((w, b), x)
    source = np.argmax(logits, axis=1)
    target = 1 - source
    d = (w[:, target] - w[:, source]).T  # (n, D)
    margin = logits[np.arange(n), target] - logits[np.arange(n), source]
    optimal = -margin / np.linalg.norm(d, axis=1)
    return (jnp.asarray(w), jnp.asarray(b)), x, target, d, optimal


def test_cw_finds_the_closed_form_minimal_perturbation_of_a_linear_model():
    params, x, target, d, optimal = linear_problem()
    attack = jax.jit(A.make_attack(linear_forward, A.CWConfig()))  # foolbox defaults
    r = jax.device_get(attack(params, jnp.asarray(x), jnp.asarray(target), None))
    assert r.success.all()
    np.testing.assert_array_equal(r.predicted, target)
    # No attack can beat the optimum; CW lands within 0.5 % of it.
    assert (r.l2 >= optimal * (1 - 1e-4)).all(), (r.l2, optimal)
    assert (r.l2 <= optimal * 1.005).all(), (r.l2, optimal)
    # Crossing the boundary needs a step of at least `optimal` along w_t - w_s.
    delta = (r.adversarial - x).reshape(len(x), -1)
    along = np.sum(delta * d, 1) / np.linalg.norm(d, axis=1)
    assert (along >= optimal * (1 - 1e-4)).all(), (along, optimal)
    assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    np.testing.assert_allclose(r.linf, np.abs(delta).max(1), rtol=1e-6)


def test_cw_failure_returns_the_original_and_batch_members_are_independent():
    params, x, target, _, optimal = linear_problem(seed=1, n=3)
    w, b = params
    b = b.at[2].set(-1e4)  # class 2 cannot win anywhere in the [0, 1] box
    targets = np.array([target[0], 2, target[2]])
    cfg = A.CWConfig(binary_search_steps=3, steps=200)
    attack = jax.jit(A.make_attack(linear_forward, cfg))
    r = jax.device_get(attack((w, b), jnp.asarray(x), jnp.asarray(targets), None))
    np.testing.assert_array_equal(r.success, [True, False, True])
    np.testing.assert_array_equal(r.adversarial[1], x[1])
    assert r.l2[1] == 0 and r.linf[1] == 0
    # Each image attacked alone gives the same result as in the batch (per-example early stops).
    for i in (0, 2):
        alone = jax.device_get(attack((w, b), jnp.asarray(x[i:i + 1]), jnp.asarray(targets[i:i + 1]), None))
        np.testing.assert_allclose(alone.adversarial[0], r.adversarial[i], atol=1e-6)
        assert alone.success[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_its_ball_and_the_box(norm):
    model = tiny_model(16)
    forward = A.model_forward(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    x[0] = np.round(x[0])  # an image on the box's corners: clipping must bind
    eps = 0.05 if norm == "linf" else 0.5
    cfg = A.PGDConfig(norm=norm, epsilon=eps, steps=10, rel_stepsize=0.3)
    attack = jax.jit(A.make_attack(forward, cfg))
    keys = jax.random.split(jax.random.key(0), 4)
    r = jax.device_get(attack(model.variables, jnp.asarray(x), jnp.arange(4) % 5, keys))
    assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    delta = (r.adversarial - x).reshape(4, -1)
    if norm == "linf":
        assert np.abs(delta).max() <= eps * (1 + 1e-6)
        assert np.isclose(np.abs(delta).max(), eps, rtol=1e-4)  # big steps reach the ball's edge
    else:
        norms = np.linalg.norm(delta, axis=1)
        assert (norms <= eps * (1 + 1e-5)).all(), norms
        assert (norms > 0.5 * eps).all()
    np.testing.assert_allclose(r.l2, np.linalg.norm(delta, axis=1), rtol=1e-5)


def test_pgd_reaches_the_best_point_of_the_ball_on_a_linear_model():
    params, x, target, d, _ = linear_problem(seed=2, n=2)
    for norm, eps in (("l2", 0.2), ("linf", 0.01)):
        cfg = A.PGDConfig(norm=norm, epsilon=eps, random_start=False)
        r = jax.device_get(jax.jit(A.make_attack(linear_forward, cfg))(
            params, jnp.asarray(x), jnp.asarray(target), jax.random.key(0)))
        flat = x.reshape(2, -1)
        if norm == "l2":  # the best L2 step is eps along w_t - w_s (the box is far away)
            best = flat + eps * d / np.linalg.norm(d, axis=1, keepdims=True)
        else:  # the best L-inf step is eps times the sign of w_t - w_s
            best = np.clip(flat + eps * np.sign(d), 0, 1)
        np.testing.assert_allclose(r.adversarial.reshape(2, -1), best, atol=2e-4)


def test_configs_check_their_values():
    with pytest.raises(ValueError, match="steps"):
        A.CWConfig(steps=0)
    with pytest.raises(ValueError, match="confidence"):
        A.CWConfig(confidence=-1)
    with pytest.raises(ValueError, match="norm"):
        A.PGDConfig(norm="l1")
    with pytest.raises(ValueError, match="unknown attack"):
        A.attack_config("fgsm")
    assert A.attack_config("pgd_l2").radius == 1.0 and A.attack_config("pgd_linf").radius == pytest.approx(8 / 255)
    assert A.attack_config("pgd_linf").num_steps == 40 and A.attack_config("pgd_l2", steps=7).num_steps == 7
    assert A.attack_config("cw", steps=None).steps == 1000


GRADIENT_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from test_attacks import tiny_model
    from jaxdissect.experiments import attacks as A
    assert jax.config.jax_enable_x64
    model = tiny_model(8, np.float64)
    params = model.variables
    forward = A.model_forward(model)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0.05, 0.95, (8, 8, 3)))
    w = A.to_tanh_space(x) + jnp.asarray(rng.normal(0, 0.1, x.shape))
    ref = A.from_tanh_space(A.to_tanh_space(x))
    fns = {"cw": lambda v: A.cw_loss(forward, params, v, ref, 3, 7.0, 0.5)[0],
           "ce": lambda v: A.target_cross_entropy(forward, params, A.from_tanh_space(v), 2)}
    worst = 0.0
    for name, f in fns.items():
        g = np.asarray(jax.grad(f)(w))
        assert np.abs(g).max() > 1e-3, name
        for k in range(6):
            u = rng.normal(size=w.shape)
            u /= np.linalg.norm(u)
            h = 1e-6
            fd = (float(f(w + h * u)) - float(f(w - h * u))) / (2 * h)
            an = float(np.sum(g * u))
            worst = max(worst, abs(fd - an) / max(1e-8, abs(an)))
    print("worst relative error", worst)
    assert worst < 1e-5, worst
""")


def test_gradients_match_finite_differences_in_float64():
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", GRADIENT_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "worst relative error" in out.stdout


def shipped_toy_classifier():
    """The trained toy classifier, whose weights ship in the package: a missing or broken
    checkpoint fails the test, never skips it."""
    return models.load("toy_classifier")


@pytest.mark.slow
def test_targeted_attacks_on_the_trained_toy_classifier():
    """Success rate and mean L2 on 8 scene images, each attacked towards another scene class."""
    from jaxdissect.dissect import sources

    model = shipped_toy_classifier()
    src = sources.ScenesSource(8, split="val")
    batch = src.load(np.arange(8))
    x = jnp.asarray(batch.inputs, jnp.float32) / 255
    forward = A.model_forward(model)
    pred = np.asarray(jnp.argmax(forward(model.variables, x), -1))
    targets = jnp.asarray((pred + 1 + np.arange(8) % 7) % 8)
    keys = jax.random.split(jax.random.key(0), 8)
    # The toy classifier needs L2 ~ 5-10 (per-pixel RMS ~ 0.02-0.05): a large PGD ball.
    for cfg in (A.CWConfig(binary_search_steps=2, steps=30, learning_rate=0.1, initial_const=10.0),
                A.PGDConfig(norm="l2", epsilon=12.0, steps=25, rel_stepsize=0.1)):
        r = jax.device_get(jax.jit(A.make_attack(forward, cfg))(model.variables, x, targets, keys))
        rate = float(r.success.mean())
        mean_l2 = float(r.l2[r.success].mean()) if r.success.any() else float("nan")
        print(f"{type(cfg).__name__}: targeted success {rate:.2f}, mean L2 {mean_l2:.3f}")
        assert rate >= 0.75, rate
        if isinstance(cfg, A.PGDConfig):
            assert (r.l2 <= 12.0 * (1 + 1e-5)).all()


def test_a_broken_shipped_checkpoint_fails_the_trained_model_test(monkeypatch):
    """A corrupt packaged checkpoint (read errors are ValueErrors) must fail, not skip."""
    from weight_conversion.errors import PthReadError

    def broken(name, weights=None):
        raise PthReadError(f"{name}: truncated checkpoint")

    monkeypatch.setattr(models, "load", broken)
    try:
        test_targeted_attacks_on_the_trained_toy_classifier()
    except pytest.skip.Exception:
        pytest.fail("a broken shipped checkpoint skipped the test instead of failing it")
    except PthReadError as e:
        assert "truncated" in str(e)
    else:
        pytest.fail("the test passed with a broken checkpoint")
