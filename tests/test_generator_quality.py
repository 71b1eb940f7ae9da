"""The toy FID and the other generator-quality figures, against independent numpy computations."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxdissect.experiments import generator_quality as gq


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1) * np.eye(d)


def numpy_frechet(mu1, c1, mu2, c2):
    """FID the usual way, in float64: Tr sqrt(c1 c2) from the eigenvalues of the (non-symmetric)
    product c1 @ c2, which are real and non-negative for covariances."""
    ev = np.linalg.eigvals(c1.astype(np.float64) @ c2.astype(np.float64))
    tr = np.sum(np.sqrt(np.clip(ev.real, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr)


@pytest.mark.parametrize("d,rank", [(3, None), (16, None), (40, 12)])
def test_frechet_distance_matches_numpy_eigenvalues(d, rank):
    rng = np.random.default_rng(d)
    c1, c2 = random_cov(rng, d, rank), random_cov(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = float(gq.frechet_distance(mu1, c1, mu2, c2))
    want = numpy_frechet(mu1, c1, mu2, c2)
    # from a covariance of rank < D, float32 noise in its zero eigenvalues enters as sqrt(noise)
    tol = 1e-4 * abs(want) if rank is None else d * np.sqrt(1e-7 * np.abs(c1).max())
    assert abs(got - want) <= tol, (got, want, tol)


@pytest.mark.parametrize("n1,n2,d,dead", [(200, 300, 8, 0), (500, 400, 64, 20), (30, 50, 40, 0)])
def test_features_frechet_distance_matches_numpy_to_rounding(n1, n2, d, dead):
    """From features (with `dead` always-zero units, as post-ReLU units can be, and with fewer
    samples than dimensions) the distance is accurate to float32 rounding."""
    rng = np.random.default_rng(n1)
    mix = rng.normal(size=(d, d))
    x = np.maximum(rng.normal(size=(n1, d)) @ mix, 0)
    y = np.maximum(rng.normal(0.3, 1.2, size=(n2, d)) @ mix, 0)
    x[:, :dead] = 0
    y[:, :dead] = 0
    want = numpy_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    got = float(gq.features_frechet_distance(x, y))
    assert got == pytest.approx(want, rel=2e-5), (got, want)


def test_frechet_distance_closed_forms():
    # diagonal covariances: sum (sqrt a - sqrt b)^2 plus the squared mean difference
    a, b = np.asarray([1.0, 4.0, 9.0, 0.25]), np.asarray([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.asarray([0.0, 1.0, 2.0, 3.0]), np.asarray([1.0, 1.0, 0.0, 3.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5 + 1 + 1 + 0 + 0.25
    assert float(gq.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))) == pytest.approx(want, rel=1e-6)
    # a Gaussian against itself, and one distribution scaled: N(0, c) vs N(0, 4c) is Tr c
    c = random_cov(np.random.default_rng(5), 10)
    assert abs(float(gq.frechet_distance(mu1[:1].repeat(10), c, mu1[:1].repeat(10), c))) < 1e-3
    assert float(gq.frechet_distance(np.zeros(10), c, np.zeros(10), 4 * c)) == pytest.approx(np.trace(c), rel=1e-4)


def test_sqrtm_and_statistics_match_numpy():
    rng = np.random.default_rng(7)
    c = random_cov(rng, 12, 5)  # singular: rank 5
    s = np.asarray(gq.sqrtm_psd(c), np.float64)
    np.testing.assert_allclose(s @ s, c, atol=1e-5)
    np.testing.assert_allclose(s, s.T, atol=1e-6)
    assert np.linalg.eigvalsh(s).min() > -1e-5
    x = rng.normal(3.0, 2.0, size=(50, 6))
    mu, cov = gq.feature_statistics(x)
    np.testing.assert_allclose(np.asarray(mu), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(cov), np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)
    y = rng.normal(size=(70, 6))
    assert float(gq.features_frechet_distance(x, y)) == pytest.approx(
        numpy_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)), rel=1e-4)
    assert float(jax.jit(gq.features_frechet_distance)(x, y)) == pytest.approx(
        float(gq.features_frechet_distance(x, y)), rel=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="N >= 2"):
        gq.feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="do not describe two Gaussians"):
        gq.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NHWC RGB"):
        gq.to_network_size(np.zeros((2, 8, 8)))


def test_label_pixel_counts_match_numpy():
    rng = np.random.default_rng(3)
    seg = rng.integers(-1, 9, size=(4, 3, 5, 6)).astype(np.int32)
    got = np.asarray(gq.label_pixel_counts(seg, 7))
    v = seg[:, :2].ravel()
    np.testing.assert_array_equal(got, np.bincount(v[(v >= 0) & (v < 7)], minlength=7))


def test_classifier_outputs_are_the_classifier_on_normalized_images():
    import flax.linen as nn

    from jaxdissect.models import load

    clf = load("toy_classifier")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 128, 128, 3)).astype(np.float32)
    feats, probs = gq.classifier_outputs(clf, x)
    mean, std = np.asarray(clf.normalization["mean"]), np.asarray(clf.normalization["std"])
    xn = ((x + 1) / 2 - mean) / std
    logits, st = clf.module.apply(clf.variables, jnp.asarray(xn, jnp.float32), mutable=["intermediates"],
                                  capture_intermediates=lambda m, n: n == "__call__" and ".".join(m.path) == gq.FEATURE_LAYER)
    acts = st["intermediates"]["features"]["conv4_2"]["__call__"][0]
    np.testing.assert_allclose(np.asarray(feats), np.asarray(acts).mean((1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(nn.softmax(logits)), rtol=1e-4, atol=1e-6)
    # a 64 px image is judged enlarged to 128 px (bilinear)
    small = x[:, ::2, ::2]
    f64, _ = gq.classifier_outputs(clf, small)
    f_up, _ = gq.classifier_outputs(clf, jax.image.resize(jnp.asarray(small), (3, 128, 128, 3), "bilinear"))
    np.testing.assert_allclose(np.asarray(f64), np.asarray(f_up), rtol=1e-5, atol=1e-6)
