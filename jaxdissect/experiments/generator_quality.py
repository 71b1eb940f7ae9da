"""How good a generator of the scenes world is, judged by the embedded toy networks.

- a "toy FID": the Frechet distance between Gaussians fitted to the toy classifier's pooled
  `features.conv4_2` units on generated and on real scenes (the FID recipe, with the toy
  classifier in place of Inception);
- the toy classifier's confidence (mean top softmax probability) and the classes it sees;
- the toy segmenter's per-label pixel frequencies (object and part channels).

The statistics are pure jit-able functions. `image_set_figures` runs the toy networks over a
set of images in [-1, 1] of any size (resized to the networks' 128x128 input first: a 64 px
generator is judged on its images enlarged, like real scenes shown at 64 px and enlarged).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.capturing import capture_fn

FEATURE_LAYER = "features.conv4_2"
NETWORK_SIZE = (128, 128)  # the toy classifier's and segmenter's input: the scenes world's size


# ---- the Frechet distance -------------------------------------------------------------------
# Tr sqrt(C1 C2) is the sum of square roots of the eigenvalues of C1 C2. From covariances that
# needs square roots of near-zero eigenvalues, whose float32 rounding noise e becomes sqrt(e);
# from features it needs none: with C = R^T R (R from a QR of the centred features), the
# eigenvalues of C1 C2 are the squared singular values of R1 R2^T, so the trace is the nuclear
# norm of R1 R2^T and the distance is accurate to float32 rounding of the largest terms.
def feature_statistics(features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean (D,), covariance (D, D) with the N - 1 denominator) of features (N, D), N >= 2."""
    mu, r = gaussian_factor(features)
    return mu, jnp.matmul(r.T, r, precision=jax.lax.Precision.HIGHEST)


def gaussian_factor(features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean (D,), R (min(N, D), D)) with R^T R the covariance (N - 1 denominator) of features (N, D)."""
    x = jnp.asarray(features, jnp.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"the Frechet distance needs features (N >= 2, D), got shape {x.shape}")
    mu = x.mean(0)
    r = jnp.linalg.qr((x - mu) / jnp.sqrt(x.shape[0] - 1.0), mode="r")
    return mu, r


def frechet_distance_factors(mu1: jax.Array, r1: jax.Array, mu2: jax.Array, r2: jax.Array) -> jax.Array:
    """The Frechet distance between N(mu1, r1^T r1) and N(mu2, r2^T r2):
    |mu1 - mu2|^2 + |r1|_F^2 + |r2|_F^2 - 2 |r1 r2^T|_* (nuclear norm)."""
    mu1, mu2 = jnp.asarray(mu1, jnp.float32), jnp.asarray(mu2, jnp.float32)
    r1, r2 = jnp.asarray(r1, jnp.float32), jnp.asarray(r2, jnp.float32)
    if mu1.ndim != 1 or mu1.shape != mu2.shape or r1.shape[-1:] != mu1.shape or r2.shape[-1:] != mu1.shape:
        raise ValueError(f"frechet_distance: means {mu1.shape}, {mu2.shape} and factors {r1.shape}, {r2.shape} "
                         "do not describe two Gaussians of one dimension")
    diff = mu1 - mu2
    cross = jnp.linalg.svd(jnp.matmul(r1, r2.T, precision=jax.lax.Precision.HIGHEST), compute_uv=False)
    return jnp.dot(diff, diff) + jnp.sum(r1 * r1) + jnp.sum(r2 * r2) - 2.0 * jnp.sum(cross)


def sqrtm_psd(a: jax.Array) -> jax.Array:
    """The symmetric square root of a symmetric positive semi-definite matrix, by its
    eigendecomposition (tiny negative eigenvalues from rounding count as zero)."""
    a = jnp.asarray(a, jnp.float32)
    w, v = jnp.linalg.eigh(0.5 * (a + a.T))
    return jnp.matmul(v * jnp.sqrt(jnp.clip(w, 0.0)), v.T, precision=jax.lax.Precision.HIGHEST)


def frechet_distance(mu1: jax.Array, cov1: jax.Array, mu2: jax.Array, cov2: jax.Array) -> jax.Array:
    """The Frechet distance (squared 2-Wasserstein) between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 sqrt(cov1 cov2)). From covariances of rank below D the
    float32 result is off by up to about D sqrt(1e-7 |cov|); `features_frechet_distance` is not."""
    cov1, cov2 = jnp.asarray(cov1, jnp.float32), jnp.asarray(cov2, jnp.float32)
    d = jnp.shape(mu1)[0] if jnp.ndim(mu1) == 1 else -1
    if cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"frechet_distance: means {jnp.shape(mu1)}, {jnp.shape(mu2)} and covariances {cov1.shape}, "
                         f"{cov2.shape} do not describe two Gaussians of one dimension")
    return frechet_distance_factors(mu1, sqrtm_psd(cov1), mu2, sqrtm_psd(cov2))


def features_frechet_distance(features1: jax.Array, features2: jax.Array) -> jax.Array:
    """The toy FID's formula: the Frechet distance between Gaussians fitted to two feature sets
    (N1, D) and (N2, D)."""
    return frechet_distance_factors(*gaussian_factor(features1), *gaussian_factor(features2))


# ---- the toy networks on images in [-1, 1] ---------------------------------------------------
def to_network_size(images_pm1: jax.Array) -> jax.Array:
    """Images in [-1, 1] (N, H, W, 3) bilinearly resized to the toy networks' 128x128."""
    images = jnp.asarray(images_pm1, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images in [-1, 1], got shape {images.shape}")
    if tuple(images.shape[1:3]) == NETWORK_SIZE:
        return images
    return jax.image.resize(images, (images.shape[0], *NETWORK_SIZE, 3), "bilinear")


def classifier_outputs(model, images_pm1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pooled FEATURE_LAYER units (N, D), class probabilities (N, classes)) of the toy
    classifier on images in [-1, 1]; traceable inside jit."""
    x = (to_network_size(images_pm1) + 1.0) * 0.5
    x = (x - jnp.asarray(model.normalization["mean"])) / jnp.asarray(model.normalization["std"])
    logits, acts = capture_fn(model.module, (FEATURE_LAYER,))(model.variables, x, {})
    return acts[FEATURE_LAYER].mean(axis=(1, 2)), jax.nn.softmax(logits, axis=-1)


def label_pixel_counts(seg: jax.Array, num_labels: int, channels: Sequence[int] = (0, 1)) -> jax.Array:
    """(num_labels,) pixel counts of each label over the given channels of segmentations
    (N, C, H, W) (object and part by default); out-of-range labels are not counted."""
    flat = jnp.asarray(seg)[:, jnp.asarray(channels)].reshape(-1)
    ok = (flat >= 0) & (flat < num_labels)
    return jnp.bincount(jnp.where(ok, flat, 0), weights=ok.astype(jnp.float32), length=num_labels)


@dataclasses.dataclass
class ImageSetFigures:
    """What the toy networks see in a set of images."""

    features: np.ndarray  # (N, D) pooled classifier units
    probabilities: np.ndarray  # (N, classes)
    label_pixels: np.ndarray  # (labels,) pixel counts over the object and part channels
    pixels_per_channel: int  # N * 128 * 128

    @property
    def confidence(self) -> float:
        """Mean top class probability."""
        return float(self.probabilities.max(-1).mean())

    def pixel_frequency(self) -> np.ndarray:
        """(labels,) fraction of all image pixels carrying each label."""
        return self.label_pixels / float(self.pixels_per_channel)


def image_set_figures(batches: Iterable[jax.Array], classifier, segmenter) -> ImageSetFigures:
    """Run the toy classifier and segmenter over batches of images in [-1, 1]."""
    num_labels = len(segmenter.labels)
    clf = jax.jit(lambda x: classifier_outputs(classifier, x))
    feats, probs, counts, n = [], [], np.zeros(num_labels), 0
    for x in batches:
        x = to_network_size(x)
        f, p = clf(x)
        feats.append(np.asarray(f))
        probs.append(np.asarray(p))
        counts += np.asarray(label_pixel_counts(segmenter.segment(x), num_labels))
        n += x.shape[0]
    if n < 2:
        raise ValueError("image_set_figures needs at least 2 images")
    return ImageSetFigures(np.concatenate(feats), np.concatenate(probs), counts, n * NETWORK_SIZE[0] * NETWORK_SIZE[1])


def compare(generated: ImageSetFigures, real: ImageSetFigures, label_names: Sequence[str],
            class_names: Sequence[str]) -> dict:
    """The figures of a generated set against a real one: toy FID, classifier confidence and
    predicted classes of both, and per-label pixel frequencies of both."""
    def classes(f):
        pred = f.probabilities.argmax(-1)
        return {c: float(np.mean(pred == i)) for i, c in enumerate(class_names)}

    gen_freq, real_freq = generated.pixel_frequency(), real.pixel_frequency()
    return {
        "toy_fid": float(features_frechet_distance(generated.features, real.features)),
        "images": [len(generated.features), len(real.features)],
        "classifier_confidence": {"generated": generated.confidence, "real": real.confidence},
        "predicted_classes": {"generated": classes(generated), "real": classes(real)},
        "pixel_frequency": {n: {"generated": float(g), "real": float(r)}
                            for n, g, r in zip(label_names, gen_freq, real_freq) if n != "-"},
    }
