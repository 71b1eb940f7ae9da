"""The embedded toy networks of the scenes world, shipped with trained weights.

- `toy_classifier`: a small VGG-like CNN (features.conv1_1 ... features.conv4_2, post-ReLU,
  each with its inner conv named 'conv'; global average pool; classifier.fc6, classifier.fc7)
  over 128x128 images normalized with the ImageNet mean/std, predicting the scene class.
- `toy_classifier_shapes`: the same layers, narrower, trained also to tell which objects and
  parts are present in stylized twins of the scenes (scripts/train_toy_shapes.py), so that
  shapes, not only surfaces, drive its units: the shape-trained contrast to `toy_classifier`.
- `toy_segmenter`: a small encoder-decoder over images in [-1, 1] giving, per category
  (object, part, material, color), logits over that category's labels at half resolution.
- `toy_generator`: a Progressive-GAN-shaped generator z (N, z_dim) -> RGB in [-1, 1]
  (layer1 .. layer12, two blocks per resolution 4x4 .. 128x128, then `output_128x128`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.models import registry
from jaxdissect.models.layers import ConvReLU, DenseReLU, MaxPool, PixelNorm, WScale
from jaxdissect.models.proggan import layer_names, output_name, progressive_layers
from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS

# ---- classifier --------------------------------------------------------------------------
CLASSIFIER_STAGES = ((16,), (32,), (64, 64), (128, 128))  # conv widths per stage


def classifier_layer_names(stages: Sequence[Sequence[int]] = CLASSIFIER_STAGES) -> tuple[str, ...]:
    names = []
    for s, widths in enumerate(stages, 1):
        names += [f"features.conv{s}_{i}" for i in range(1, len(widths) + 1)]
        if s < len(stages):
            names.append(f"features.pool{s}")
    return tuple(names) + ("classifier.fc6", "classifier.fc7")


class ToyFeatures(nn.Module):
    """VGG-style conv stages with 2x2 max pooling between them (none after the last)."""

    stages: Sequence[Sequence[int]] = CLASSIFIER_STAGES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for s, widths in enumerate(self.stages, 1):
            for i, ch in enumerate(widths, 1):
                x = ConvReLU(ch, 3, padding=1, name=f"conv{s}_{i}")(x)
            if s < len(self.stages):
                x = MaxPool(2, 2, name=f"pool{s}")(x)
        return x


class ToyClassifierHead(nn.Module):
    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = DenseReLU(self.hidden, name="fc6")(x)
        return nn.Dense(self.num_classes, name="fc7")(x)


class ToyClassifier(nn.Module):
    """NHWC normalized images -> scene class logits."""

    num_classes: int = 8
    stages: Sequence[Sequence[int]] = CLASSIFIER_STAGES
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ToyFeatures(self.stages, name="features")(x)
        x = jnp.mean(x, axis=(1, 2))
        return ToyClassifierHead(self.hidden, self.num_classes, name="classifier")(x)


# ---- segmenter ---------------------------------------------------------------------------
class ToySegmenterNet(nn.Module):
    """Images in [-1, 1] (N, H, W, 3) -> per-category logits at (H/2, W/2): a tuple of arrays
    (N, H/2, W/2, n_c), one per category, where n_c counts that category's labels plus 'none'."""

    class_counts: Sequence[int]
    width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        w = self.width
        conv = lambda f, s, name: ConvReLU(f, 3, stride=s, padding=1, name=name)  # noqa: E731
        e1 = conv(w * 3 // 4, 2, "enc1")(x)  # H/2
        e2 = conv(w * 3 // 2, 2, "enc2")(e1)  # H/4
        e3 = conv(w * 2, 1, "enc3")(e2)
        e4 = conv(w * 3, 2, "enc4")(e3)  # H/8
        e5 = conv(w * 3, 1, "enc5")(e4)
        e6 = conv(w * 3, 1, "enc6")(e5)
        up = lambda t: jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2)  # noqa: E731
        d1 = nn.Conv(w * 2, (1, 1), name="skip3")(e3) + nn.Conv(w * 2, (1, 1), name="lat6")(up(e6))
        d1 = conv(w * 2, 1, "dec1")(nn.relu(d1))  # H/4
        d2 = jnp.concatenate([up(d1), e1], axis=-1)
        d2 = ConvReLU(w * 3 // 2, 1, name="dec2")(d2)  # H/2
        return tuple(nn.Conv(n, (1, 1), name=f"head{c}")(d2) for c, n in enumerate(self.class_counts))


# ---- generator ---------------------------------------------------------------------------
GENERATOR_CHANNELS = (128, 128, 64, 32, 16, 8)  # at 4, 8, 16, 32, 64, 128


class ToRGB(nn.Module):
    """Output block: pixel norm -> 1x1 conv to RGB -> wscale (gain 1) -> tanh, so values lie in [-1, 1]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        x = PixelNorm(name="norm")(x)
        x = nn.Conv(3, (1, 1), use_bias=False, kernel_init=nn.initializers.normal(1.0), name="conv")(x)
        return jnp.tanh(WScale(fan_in, 1.0, name="wscale")(x))


class ToyGenerator(nn.Module):
    """z (N, z_dim) -> NHWC RGB in [-1, 1] of side 4 * 2**(len(channels) - 1), ProGAN-layered."""

    z_dim: int = 64
    channels: Sequence[int] = GENERATOR_CHANNELS

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"ToyGenerator expects z of shape (N, {self.z_dim}), got {z.shape}")
        x = progressive_layers(z.reshape(z.shape[0], 1, 1, self.z_dim), self.channels)
        return ToRGB(name=output_name(self.channels))(x)


# ---- registration ------------------------------------------------------------------------
def _scene_classes():
    return SCENE_CLASSES


def segmenter_class_counts() -> tuple[int, ...]:
    """Labels per category of the scenes world, plus one for 'none' (index 0)."""
    return tuple(1 + sum(c == cat for c in SCENE_LABELS.categories) for cat in SCENE_LABELS.category_names)


def build_classifier(config: Mapping[str, Any]) -> ToyClassifier:
    stages = tuple(tuple(int(c) for c in s) for s in config.get("stages", CLASSIFIER_STAGES))
    return ToyClassifier(num_classes=int(config.get("num_classes", 8)), stages=stages,
                         hidden=int(config.get("hidden", 128)))


def build_segmenter(config: Mapping[str, Any]) -> ToySegmenterNet:
    counts = tuple(int(c) for c in config.get("class_counts") or segmenter_class_counts())
    return ToySegmenterNet(class_counts=counts, width=int(config.get("width", 32)))


def build_generator(config: Mapping[str, Any]) -> ToyGenerator:
    return ToyGenerator(z_dim=int(config.get("z_dim", 64)),
                        channels=tuple(int(c) for c in config.get("channels", GENERATOR_CHANNELS)))


CLASSIFIER_SPEC = registry.register(registry.ModelSpec(
    name="toy_classifier", kind="classifier", build=build_classifier,
    default_config={"num_classes": 8, "stages": [list(s) for s in CLASSIFIER_STAGES], "hidden": 128},
    input_size=(128, 128), normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="features.conv4_2", layer_names=classifier_layer_names(),
    labels=_scene_classes, packaged_weights="weights/toy_classifier"))

SHAPES_CLASSIFIER_STAGES = ((16,), (32,), (48, 48), (96, 96))  # 3/4 width at the top: the size budget

SHAPES_CLASSIFIER_SPEC = registry.register(registry.ModelSpec(
    name="toy_classifier_shapes", kind="classifier", build=build_classifier,
    default_config={"num_classes": 8, "stages": [list(s) for s in SHAPES_CLASSIFIER_STAGES], "hidden": 96},
    input_size=(128, 128), normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="features.conv4_2", layer_names=classifier_layer_names(SHAPES_CLASSIFIER_STAGES),
    labels=_scene_classes, packaged_weights="weights/toy_classifier_shapes"))

SEGMENTER_SPEC = registry.register(registry.ModelSpec(
    name="toy_segmenter", kind="segmenter", build=build_segmenter,
    default_config={"width": 32}, input_size=(128, 128), normalization={"range": (-1, 1)},
    default_layer="enc6", layer_names=("enc1", "enc2", "enc3", "enc4", "enc5", "enc6", "dec1", "dec2"),
    packaged_weights="weights/toy_segmenter"))

GENERATOR_SPEC = registry.register(registry.ModelSpec(
    name="toy_generator", kind="generator", build=build_generator,
    default_config={"z_dim": 64, "channels": list(GENERATOR_CHANNELS)}, input_size=None,
    normalization={"z": "standard_normal", "output_range": (-1, 1)},
    default_layer="layer6", layer_names=layer_names(GENERATOR_CHANNELS),
    packaged_weights="weights/toy_generator"))
