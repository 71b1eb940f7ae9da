"""Small Linen blocks shared by the ported models (NHWC).

Each block is a module (not a bare function) wherever the PyTorch original had a module, so that
its dotted path is a layer name that can be captured or edited like the original's.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_padding(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch's symmetric integer padding as a Flax explicit padding."""
    return ((p, p), (p, p))


def torch_flatten(x: jax.Array) -> jax.Array:
    """Flatten an NHWC batch in PyTorch's (C, H, W) order, so a converted Linear's rows line up."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class ReLU(nn.Module):
    """A ReLU with a name, for layouts (Torch7 ResNet) where the ReLU is a layer of its own."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)


class Identity(nn.Module):
    """The identity, for the original's `Lambda(lambda x: x)` layers."""

    @nn.compact
    def __call__(self, x):
        return x


class MaxPool(nn.Module):
    """torch.nn.MaxPool2d (floor mode; padding counts as -inf, never as a maximum)."""

    window: int
    stride: int
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.max_pool(x, (self.window, self.window), (self.stride, self.stride),
                           padding=torch_padding(self.padding))


class AvgPool(nn.Module):
    """torch.nn.AvgPool2d without padding (floor mode)."""

    window: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.avg_pool(x, (self.window, self.window), (self.stride, self.stride), padding="VALID")


class AdaptiveAvgPool(nn.Module):
    """torch.nn.AdaptiveAvgPool2d: bin i covers [floor(i*H/n), ceil((i+1)*H/n)); the identity when H == n."""

    size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, (h, w) = self.size, x.shape[1:3]
        if (h, w) == (n, n):
            return x

        def bins(length: int) -> list[tuple[int, int]]:
            return [(i * length // n, -(-(i + 1) * length // n)) for i in range(n)]

        rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h)]
        x = jnp.stack(rows, axis=1)
        cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w)]
        return jnp.stack(cols, axis=2)


class ConvReLU(nn.Module):
    """A conv followed by ReLU, whose output is POST-ReLU (the original's ReLU was in place, so
    its hooked conv output was overwritten by the ReLU). The pre-ReLU value is the inner conv's
    output, captured under '<name>.conv'."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride),
                    padding=torch_padding(self.padding), feature_group_count=self.groups,
                    name="conv")(x)
        return nn.relu(x)


class DenseReLU(nn.Module):
    """A Linear followed by ReLU, post-ReLU like ConvReLU; the pre-ReLU value is '<name>.fc'."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.features, name="fc")(x))


class LocalResponseNorm(nn.Module):
    """Caffe-style across-channel LRN of the original AlexNet: x / (1 + alpha*avg(x^2))^beta,
    where avg is a `size`-channel window mean with zero padding counted in the divisor."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        half = (self.size - 1) // 2
        sq = jnp.pad(jnp.square(x), ((0, 0), (0, 0), (0, 0), (half, self.size - 1 - half)))
        c = x.shape[-1]
        window_sum = sum(sq[..., i:i + c] for i in range(self.size))
        return x / jnp.power(1.0 + self.alpha * (window_sum / self.size), self.beta)


class PixelNorm(nn.Module):
    """ProGAN pixel norm: each pixel's feature vector divided by its RMS (eps 1e-8 inside the sqrt)."""

    eps: float = 1e-8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)


class UpsampleNearest2x(nn.Module):
    """Nearest-neighbour 2x upsampling (torch interpolate(scale_factor=2, mode='nearest'))."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class WScale(nn.Module):
    """Equalized-learning-rate output scaling: x * gain/sqrt(fan_in) + b (the bias lives here,
    as parameter 'b', like the original's `wscale.b`)."""

    fan_in: int
    gain: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = self.param("b", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return x * (self.gain / math.sqrt(self.fan_in)) + b
