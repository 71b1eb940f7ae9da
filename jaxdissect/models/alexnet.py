"""AlexNet trained on Places365 (the original's oldalexnet, a Caffe-style AlexNet).

Layers (dotted Flax paths = the original's names): conv1, pool1, lrn1, conv2, pool2, lrn2, conv3,
conv4, conv5, pool5, fc6, fc7, fc8. conv1..conv5, fc6 and fc7 are POST-ReLU, as the original's
hooked outputs were (in-place ReLUs); the pre-ReLU values are `convN.conv` and `fc6.fc` /
`fc7.fc` (listed in `PRE_RELU_LAYERS`). conv2, conv4 and conv5 are grouped (2 groups). LRN is
x / (1 + 1e-4 * mean5ch(x^2))^0.75 with zero padding counted in the mean. Dropout is omitted
(inference only). Input: 227x227 NHWC, ImageNet-normalized. The flatten before fc6 runs in
PyTorch's (C, H, W) order.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from jaxdissect.models import registry
from jaxdissect.models.layers import ConvReLU, DenseReLU, LocalResponseNorm, MaxPool, torch_flatten
from weight_conversion.keymaps import alexnet as alexnet_keymap

# name: (out channels, kernel, stride, padding, groups); in channels follow from the order.
CONVS = {
    "conv1": (96, 11, 4, 0, 1),
    "conv2": (256, 5, 1, 2, 2),
    "conv3": (384, 3, 1, 1, 1),
    "conv4": (384, 3, 1, 1, 2),
    "conv5": (256, 3, 1, 1, 2),
}
LAYER_NAMES = tuple(CONVS) + ("fc6", "fc7", "fc8")
PRE_RELU_LAYERS = {**{c: f"{c}.conv" for c in CONVS}, "fc6": "fc6.fc", "fc7": "fc7.fc"}


class AlexNet(nn.Module):
    """Places365 AlexNet: NHWC 227x227 images -> class logits."""

    num_classes: int = 365

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(name: str, x: jax.Array) -> jax.Array:
            ch, k, s, p, g = CONVS[name]
            return ConvReLU(ch, k, stride=s, padding=p, groups=g, name=name)(x)

        x = conv("conv1", x)
        x = MaxPool(3, 2, name="pool1")(x)
        x = LocalResponseNorm(5, 1e-4, 0.75, name="lrn1")(x)
        x = conv("conv2", x)
        x = MaxPool(3, 2, name="pool2")(x)
        x = LocalResponseNorm(5, 1e-4, 0.75, name="lrn2")(x)
        x = conv("conv3", x)
        x = conv("conv4", x)
        x = conv("conv5", x)
        x = MaxPool(3, 2, name="pool5")(x)
        x = torch_flatten(x)
        x = DenseReLU(4096, name="fc6")(x)
        x = DenseReLU(4096, name="fc7")(x)
        return nn.Dense(self.num_classes, name="fc8")(x)


def build(config: Mapping[str, Any]) -> AlexNet:
    """The module for a config {'num_classes': int}."""
    return AlexNet(num_classes=int(config.get("num_classes", 365)))


KEYMAP = alexnet_keymap.keymap(CONVS)

SPEC = registry.register(registry.ModelSpec(
    name="alexnet_places",
    kind="classifier",
    build=build,
    default_config={"num_classes": 365},
    input_size=(227, 227),
    normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="conv5",
    layer_names=LAYER_NAMES,
    labels=registry.places365_labels,
    url="https://dissect.csail.mit.edu/models/alexnet_places365-92864cf6.pth",
    sha256_prefix="92864cf6",
    config_from_torch=KEYMAP.config_from_torch,
    convert=KEYMAP.convert,
))
