"""Progressive GAN generators (Karras et al.), as the original's experiment/proggan.py.

z (N, z_dim) is viewed as a 1x1 map; `layer1` = pixel norm -> 4x4 conv with padding 3 (the
TF dense layer as a conv) -> wscale -> LeakyReLU(0.2), giving 4x4; `layer2` the same with a 3x3
conv, padding 1. Each further resolution adds an upscale block (pixel norm -> nearest 2x
upsample -> 3x3 conv -> wscale -> LeakyReLU) and a plain block. The output block
`output_RxR` is pixel norm -> 1x1 conv to RGB -> wscale with gain 1; no tanh, so the output is
unclamped (nominally [-1, 1]). Convs have no bias; wscale multiplies by gain/sqrt(in_channels)
(gain sqrt(2)/kernel_size in the blocks) and adds the bias `wscale.b`. Pixel norm eps 1e-8.

Config: {'z_dim': int, 'channels': [channels at 4x4, 8x8, ...]}; the resolution is
4 * 2**(len(channels) - 1): 7 widths give the 256x256 models (layers layer1..layer14), 9 the
1024x1024 celebhq model (layer1..layer18). Layer values are the block outputs (post-LeakyReLU);
inside a block, '.conv' (before scaling) and '.wscale' (before the LeakyReLU) can be captured.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from jaxdissect.models import registry
from jaxdissect.models.layers import PixelNorm, UpsampleNearest2x, WScale, torch_padding
from weight_conversion.keymaps import proggan as proggan_keymap

CHANNELS_256 = (512, 512, 512, 256, 128, 64, 32)
CHANNELS_1024 = (512, 512, 512, 512, 256, 128, 64, 32, 16)
NORMALIZATION = {"z": "standard_normal", "output_range": (-1, 1)}


def resolution(channels: Sequence[int]) -> int:
    """Output side length for the per-resolution channel list."""
    return 4 * 2 ** (len(channels) - 1)


def output_name(channels: Sequence[int]) -> str:
    """Name of the output block, e.g. 'output_256x256': the original checkpoint's key, which the
    key map owns (keymaps.proggan.output_key)."""
    return proggan_keymap.output_key(len(channels))


def layer_names(channels: Sequence[int]) -> tuple[str, ...]:
    """Dissectable layers in forward order: layer1 .. layer<2*len(channels)>, then the output block."""
    return tuple(f"layer{i}" for i in range(1, 2 * len(channels) + 1)) + (output_name(channels),)


def _conv(features: int, k: int, padding: int) -> nn.Conv:
    # Equalized learning rate: weights are N(0, 1); the scaling happens in WScale.
    return nn.Conv(features, (k, k), padding=torch_padding(padding), use_bias=False,
                   kernel_init=nn.initializers.normal(1.0), name="conv")


class NormConvBlock(nn.Module):
    """Pixel norm -> [nearest 2x upsample] -> conv -> wscale -> LeakyReLU(0.2)."""

    features: int
    kernel_size: int
    padding: int
    upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        x = PixelNorm(name="norm")(x)
        if self.upsample:
            x = UpsampleNearest2x(name="up")(x)
        x = _conv(self.features, self.kernel_size, self.padding)(x)
        x = WScale(fan_in, math.sqrt(2.0) / self.kernel_size, name="wscale")(x)
        return nn.leaky_relu(x, 0.2)


class OutputConvBlock(nn.Module):
    """Pixel norm -> 1x1 conv to RGB -> wscale (gain 1); no tanh."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        x = PixelNorm(name="norm")(x)
        x = _conv(3, 1, 0)(x)
        return WScale(fan_in, 1.0, name="wscale")(x)


class ProgressiveGenerator(nn.Module):
    """z (N, z_dim) -> NHWC RGB image of side 4 * 2**(len(channels) - 1)."""

    z_dim: int = 512
    channels: Sequence[int] = CHANNELS_256

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        if z.ndim not in (2, 4) or z.size != z.shape[0] * self.z_dim:
            raise ValueError(f"ProgressiveGenerator expects z of shape (N, {self.z_dim}), got {z.shape}")
        x = progressive_layers(z.reshape(z.shape[0], 1, 1, self.z_dim), self.channels)
        return OutputConvBlock(name=output_name(self.channels))(x)


def progressive_layers(x: jax.Array, channels: Sequence[int]) -> jax.Array:
    """The layer1 .. layer<2*len(channels)> stack, called inside a parent's compact __call__:
    a 4x4 conv on the 1x1 latent, then per resolution an upscaling block and a plain block."""
    x = NormConvBlock(channels[0], 4, 3, name="layer1")(x)
    x = NormConvBlock(channels[0], 3, 1, name="layer2")(x)
    for i, c in enumerate(channels[1:]):
        x = NormConvBlock(c, 3, 1, upsample=True, name=f"layer{2 * i + 3}")(x)
        x = NormConvBlock(c, 3, 1, name=f"layer{2 * i + 4}")(x)
    return x


def build(config: Mapping[str, Any]) -> ProgressiveGenerator:
    """The module for a config {'z_dim': int, 'channels': [int, ...]}."""
    channels = tuple(int(c) for c in config.get("channels", CHANNELS_256))
    if len(channels) < 1:
        raise ValueError("proggan config 'channels' must list at least the 4x4 width")
    return ProgressiveGenerator(z_dim=int(config.get("z_dim", 512)), channels=channels)


KEYMAP = proggan_keymap.KEYMAP


# Registered name suffix -> (checkpoint file stem, channels at 4x4, 8x8, ...).
DOMAINS = {
    "bedroom": ("proggan_bedroom-d8a89ff1", CHANNELS_256),
    "church": ("proggan_churchoutdoor-7e701dd5", CHANNELS_256),
    "conferenceroom": ("proggan_conferenceroom-21e85882", CHANNELS_256),
    "diningroom": ("proggan_diningroom-3aa0ab80", CHANNELS_256),
    "kitchen": ("proggan_kitchen-67f1e16c", CHANNELS_256),
    "livingroom": ("proggan_livingroom-5ef336dd", CHANNELS_256),
    "restaurant": ("proggan_restaurant-b8578299", CHANNELS_256),
    "celebhq": ("proggan_celebhq-620d161c", CHANNELS_1024),
}

SPECS = {
    domain: registry.register(registry.ModelSpec(
        name=f"proggan_{domain}",
        kind="generator",
        build=build,
        default_config={"z_dim": 512, "channels": list(channels)},
        input_size=None,
        normalization=NORMALIZATION,
        default_layer="layer4",
        layer_names=layer_names(channels),
        layer_names_for=lambda config: layer_names(config["channels"]),
        url=f"https://dissect.csail.mit.edu/models/{stem}.pth",
        sha256_prefix=stem.rsplit("-", 1)[1],
        config_from_torch=KEYMAP.config_from_torch,
        convert=KEYMAP.convert,
    ))
    for domain, (stem, channels) in DOMAINS.items()
}
