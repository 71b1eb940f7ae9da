"""VGG16 trained on Places365 (the original's oldvgg16: torchvision vgg16 with research layer names).

Layers (dotted Flax paths = the original's names): `features.conv1_1` ... `features.conv5_3`,
`features.pool1` ... `features.pool5`, `avgpool`, `classifier.fc6`, `classifier.fc7`,
`classifier.fc8a`. A conv layer's value is POST-ReLU, as the original's hooked conv output was
(its ReLUs were in place); so are fc6 and fc7. The pre-ReLU values are captured under
`features.convX_Y.conv` and `classifier.fc6.fc` / `classifier.fc7.fc` (listed in
`PRE_RELU_LAYERS`). Dropout is omitted (inference only). Input: 224x224 NHWC, ImageNet-normalized.
The flatten before fc6 runs in PyTorch's (C, H, W) order, so fc6's weight converts as a plain
transpose.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from jaxdissect.models import registry
from jaxdissect.models.layers import AdaptiveAvgPool, ConvReLU, DenseReLU, MaxPool, torch_flatten
from weight_conversion.keymaps import vgg as vgg_keymap

# (stage, number of convs, channels) of VGG16's five conv stages.
STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
CONV_NAMES = tuple(f"conv{s}_{i}" for s, n, _ in STAGES for i in range(1, n + 1))
LAYER_NAMES = tuple(f"features.{c}" for c in CONV_NAMES) + (
    "classifier.fc6", "classifier.fc7", "classifier.fc8a")
PRE_RELU_LAYERS = {**{f"features.{c}": f"features.{c}.conv" for c in CONV_NAMES},
                   "classifier.fc6": "classifier.fc6.fc", "classifier.fc7": "classifier.fc7.fc"}


class VGG16Features(nn.Module):
    """The 13 convs (3x3, pad 1, post-ReLU) and 5 max pools."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for stage, n, ch in STAGES:
            for i in range(1, n + 1):
                x = ConvReLU(ch, 3, padding=1, name=f"conv{stage}_{i}")(x)
            x = MaxPool(2, 2, name=f"pool{stage}")(x)
        return x


class VGG16Classifier(nn.Module):
    """fc6 and fc7 (post-ReLU) and the 365-way fc8a."""

    num_classes: int = 365

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = DenseReLU(4096, name="fc6")(x)
        x = DenseReLU(4096, name="fc7")(x)
        return nn.Dense(self.num_classes, name="fc8a")(x)


class VGG16(nn.Module):
    """VGG16 classifier: NHWC images -> class logits."""

    num_classes: int = 365

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = VGG16Features(name="features")(x)
        x = AdaptiveAvgPool(7, name="avgpool")(x)
        return VGG16Classifier(self.num_classes, name="classifier")(torch_flatten(x))


def build(config: Mapping[str, Any]) -> VGG16:
    """The module for a config {'num_classes': int}."""
    return VGG16(num_classes=int(config.get("num_classes", 365)))


KEYMAP = vgg_keymap.keymap(STAGES)

SPEC = registry.register(registry.ModelSpec(
    name="vgg16_places",
    kind="classifier",
    build=build,
    default_config={"num_classes": 365},
    input_size=(224, 224),
    normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="features.conv5_3",
    layer_names=LAYER_NAMES,
    labels=registry.places365_labels,
    url="https://dissect.csail.mit.edu/models/vgg16_places365-0bafbc55.pth",
    sha256_prefix="0bafbc55",
    config_from_torch=KEYMAP.config_from_torch,
    convert=KEYMAP.convert,
))
