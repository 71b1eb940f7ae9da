"""Precise RoI pooling against a fine numerical integration of the bilinear interpolation, and
the adaptive-pooling / bilinear-resize matrices against torch."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.segment.prroi import adaptive_avg_pool2d, prroi_pool2d, prroi_pool_full, resize_bilinear


def bilinear_at(v: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of samples v[i, j] at integer points, zero outside the map."""
    h, w = v.shape
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    out = np.zeros(np.broadcast(y, x).shape)
    for dy in (0, 1):
        for dx in (0, 1):
            iy, ix = y0 + dy, x0 + dx
            wgt = (1 - np.abs(y - iy)) * (1 - np.abs(x - ix))
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            out += np.where(ok, v[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)], 0.0) * wgt
    return out


def numeric_bin_mean(v, y0, y1, x0, x1, n=600):
    """Midpoint-rule mean over [y0, y1] x [x0, x1] on an n x n grid (error ~1/n^2)."""
    ys = y0 + (np.arange(n) + 0.5) * (y1 - y0) / n
    xs = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
    return bilinear_at(v, ys[:, None], xs[None, :]).mean()


@pytest.mark.parametrize("box,out", [((0, 0, 5, 4), (3, 2)),          # full map, as UPerNet
                                     ((-1.3, 0.7, 3.9, 5.6), (2, 3)),  # partly outside the map
                                     ((1.25, 0.5, 2.75, 2.0), (2, 2))])  # inside, fractional
def test_prroi_equals_numerical_integral(box, out):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 5))
    got = np.asarray(prroi_pool2d(jnp.asarray(v[None, :, :, None], jnp.float32),
                                  jnp.asarray([box], jnp.float32), out))[0, :, :, 0]
    x0, y0, x1, y1 = box
    bh, bw = (y1 - y0) / out[0], (x1 - x0) / out[1]
    want = np.array([[numeric_bin_mean(v, y0 + p * bh, y0 + (p + 1) * bh, x0 + q * bw, x0 + (q + 1) * bw)
                      for q in range(out[1])] for p in range(out[0])])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_prroi_constant_map_and_empty_bins():
    # Inside the sample hull the interpolation of a constant is that constant; past the last
    # sample it falls linearly to 0 (zero outside), so the full-map box (0..W) loses a half cell.
    ones = jnp.ones((1, 3, 3, 2))
    full = np.asarray(prroi_pool_full(ones, (1, 1)))[0, 0, 0]
    np.testing.assert_allclose(full, (2.5 / 3) ** 2, rtol=1e-6)
    inner = np.asarray(prroi_pool2d(ones, jnp.asarray([[0.0, 0.0, 2.0, 2.0]]), (2, 2)))
    np.testing.assert_allclose(inner, 1.0, rtol=1e-6)
    empty = np.asarray(prroi_pool2d(ones, jnp.asarray([[1.0, 1.0, 1.0, 2.0]]), (2, 2)))
    np.testing.assert_array_equal(empty, 0.0)
    with pytest.raises(ValueError, match="boxes"):
        prroi_pool2d(ones, jnp.zeros((2, 4)), (1, 1))


def test_adaptive_pool_and_resize_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(1).normal(size=(2, 13, 10, 3)).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    for size in [(5, 4), (16, 24), (13, 7)]:
        want = F.adaptive_avg_pool2d(t, size).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(adaptive_avg_pool2d(jnp.asarray(x), size)), want, atol=1e-5)
        want = F.interpolate(t, size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), size)), want, atol=1e-5)
