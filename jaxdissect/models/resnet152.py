"""ResNet152 trained on Places365, in the original's Torch7-converted layout (oldresnet152).

Top-level modules are named '0'..'10' like the original's nn.Sequential, so dotted Flax paths equal
its layer names: '0' conv 7x7/2 (no bias; its value is pre-BN), '1' BN, '2' ReLU, '3' max pool
3/2/1, '4'..'7' the stages (3, 8, 36, 3 bottleneck blocks; values post-ReLU), '8' avg pool 7/1,
'9' flatten, '10' ('10.0' identity, '10.1' Linear). A block 'S.B' is '0' (a pair: main branch
'S.B.0.0' = conv1x1 '0', BN '1', ReLU '2', conv3x3 '3' (stride 2 in the first block of stages
'5'-'7'), BN '4', ReLU '5', conv1x1 '6', BN '7'; shortcut 'S.B.0.1' = conv1x1 '0' + BN '1' in a
stage's first block, else the identity), '1' the sum, '2' ReLU. BatchNorm uses running
statistics (eps 1e-5). Input: 224x224 NHWC, ImageNet-normalized. `width` and `blocks` are
configurable only so that tests can build smaller models of the same structure.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from jaxdissect.models import registry
from jaxdissect.models.layers import AvgPool, Identity, MaxPool, ReLU, torch_flatten, torch_padding
from weight_conversion.keymaps import resnet152 as resnet152_keymap

DEFAULT_BLOCKS = (3, 8, 36, 3)
STAGE_NAMES = ("4", "5", "6", "7")
LAYER_NAMES = ("0",) + STAGE_NAMES


def _conv(features: int, k: int, stride: int, name: str) -> nn.Conv:
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=torch_padding(k // 2),
                   use_bias=False, name=name)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name=name)


class MainBranch(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN, children '0'..'7'."""

    mid: int
    out: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.mid, 1, 1, "0")(x)
        x = ReLU(name="2")(_bn("1")(x))
        x = _conv(self.mid, 3, self.stride, "3")(x)
        x = ReLU(name="5")(_bn("4")(x))
        x = _conv(self.out, 1, 1, "6")(x)
        return _bn("7")(x)


class Shortcut(nn.Module):
    """Projection shortcut: conv1x1 '0' (strided) + BN '1'."""

    out: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _bn("1")(_conv(self.out, 1, self.stride, "0")(x))


class BranchPair(nn.Module):
    """The original's ConcatTable: (main branch '0', shortcut '1') of the same input."""

    mid: int
    out: int
    stride: int
    project: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        main = MainBranch(self.mid, self.out, self.stride, name="0")(x)
        short = (Shortcut(self.out, self.stride, name="1") if self.project else Identity(name="1"))(x)
        return main, short


class Sum(nn.Module):
    """The original's CAddTable: the sum of a pair."""

    @nn.compact
    def __call__(self, pair: tuple[jax.Array, jax.Array]) -> jax.Array:
        return pair[0] + pair[1]


class Bottleneck(nn.Module):
    """Residual block: pair '0', sum '1', ReLU '2'."""

    mid: int
    out: int
    stride: int
    project: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pair = BranchPair(self.mid, self.out, self.stride, self.project, name="0")(x)
        return ReLU(name="2")(Sum(name="1")(pair))


class Stage(nn.Module):
    """`n` bottleneck blocks named '0'..; the first one strides and projects."""

    mid: int
    n: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for b in range(self.n):
            x = Bottleneck(self.mid, 4 * self.mid, self.stride if b == 0 else 1, b == 0, name=str(b))(x)
        return x


class Flatten(nn.Module):
    """The original's view(N, -1), in PyTorch's (C, H, W) order."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return torch_flatten(x)


class LinearHead(nn.Module):
    """'10': identity '0' (the original's view of 1-D inputs) then Linear '1'."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="1")(Identity(name="0")(x))


class ResNet152(nn.Module):
    """Torch7-layout ResNet152: NHWC images -> class logits."""

    num_classes: int = 365
    width: int = 64
    blocks: Sequence[int] = DEFAULT_BLOCKS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.width, (7, 7), strides=(2, 2), padding=torch_padding(3), use_bias=False, name="0")(x)
        x = ReLU(name="2")(_bn("1")(x))
        x = MaxPool(3, 2, 1, name="3")(x)
        for s, (name, n) in enumerate(zip(STAGE_NAMES, self.blocks)):
            x = Stage(self.width * 2 ** s, n, 1 if s == 0 else 2, name=name)(x)
        x = AvgPool(7, 1, name="8")(x)
        x = Flatten(name="9")(x)
        return LinearHead(self.num_classes, name="10")(x)


def build(config: Mapping[str, Any]) -> ResNet152:
    """The module for a config {'num_classes', 'width', 'blocks'} (defaults: 365, 64, (3, 8, 36, 3))."""
    blocks = tuple(int(b) for b in config.get("blocks", DEFAULT_BLOCKS))
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"resnet152 config 'blocks' must be 4 positive counts, got {blocks}")
    return ResNet152(num_classes=int(config.get("num_classes", 365)),
                     width=int(config.get("width", 64)), blocks=blocks)


KEYMAP = resnet152_keymap.keymap(STAGE_NAMES, DEFAULT_BLOCKS)

SPEC = registry.register(registry.ModelSpec(
    name="resnet152_places",
    kind="classifier",
    build=build,
    default_config={"num_classes": 365, "width": 64, "blocks": list(DEFAULT_BLOCKS)},
    input_size=(224, 224),
    normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="7",
    layer_names=LAYER_NAMES,
    labels=registry.places365_labels,
    url="https://dissect.csail.mit.edu/models/resnet152_places365-f928166e5c.pth",
    sha256_prefix="f928166e5c",
    config_from_torch=KEYMAP.config_from_torch,
    convert=KEYMAP.convert,
))
