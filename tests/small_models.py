"""Small Linen models for tests of capture, edits and sweeps (named like the real ports)."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel

TRACES = {"count": 0}


class ConvReLU(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3), name="conv")(x))


class Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        TRACES["count"] += 1  # counts traces, not executions
        x = ConvReLU(8, name="conv1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = ConvReLU(16, name="conv2")(x)
        return ConvReLU(12, name="conv3")(x)


class TinyNet(nn.Module):
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = Features(name="features")(x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def numpy_init(module, example, seed=0, scale=0.3):
    """Random variables of the module's shapes from numpy (no jax RNG kernels to compile)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), example)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, scale, s.shape).astype(s.dtype)), shapes)


def tiny_classifier(seed=0, size=16) -> LoadedModel:
    module = TinyNet()
    variables = numpy_init(module, jnp.zeros((1, size, size, 3)), seed)
    return LoadedModel("tiny", "classifier", module, variables, {}, (size, size), IMAGENET_NORMALIZATION,
                       "features.conv3", ("features.conv1", "features.conv2", "features.conv3"), None)
