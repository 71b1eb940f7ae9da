"""Users' own models for the tests of factory loading and NNX capture: a small CNN written in
Flax NNX and its Linen twin (same attribute paths, same parameter shapes), a tiny NNX vision
transformer with a class token, and factories that fail in the ways users' factories do."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# ---- the NNX CNN and its Linen twin -------------------------------------------------------
class NNXReLU(nnx.Module):
    def __call__(self, x):
        return nnx.relu(x)


class NNXFeatures(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.relu1 = NNXReLU()
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
        self.relu2 = NNXReLU()

    def __call__(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, num_classes: int = 5):
        self.features = NNXFeatures(rngs)
        self.fc = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.features(x).mean(axis=(1, 2)))


class LinenReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


class LinenFeatures(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = LinenReLU(name="relu1")(nn.Conv(8, (3, 3), name="conv1")(x))
        return LinenReLU(name="relu2")(nn.Conv(16, (3, 3), strides=2, name="conv2")(x))


class LinenCNN(nn.Module):
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes, name="fc")(LinenFeatures(name="features")(x).mean(axis=(1, 2)))


CNN_LAYERS = ("features.conv1", "features.relu1", "features.conv2", "features.relu2", "features")


def built(cls, seed, **kwargs):
    """cls(nnx.Rngs(seed, ...)) with its parameters drawn by numpy (seeded) instead of its
    initializers: eager NNX initialization compiles every initializer on its own (tens of seconds
    on a busy CPU); numpy compiles nothing. Keys get jax.random.key(seed), counters 0."""
    abstract = nnx.eval_shape(lambda: cls(nnx.Rngs(seed), **kwargs))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape).astype(leaf.dtype))

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def make_nnx_cnn():
    return built(NNXCNN, 0)


def make_linen_cnn():
    return LinenCNN()


def linen_params_of(nnx_model: NNXCNN) -> dict:
    """The Linen twin's variables holding the NNX model's parameters (same paths)."""
    return {"params": jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)))}


# ---- a tiny NNX vision transformer --------------------------------------------------------
class NNXBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(nnx.gelu(x))


class NNXViT(nnx.Module):
    """16x16 images, 4x4 patches (a 4x4 grid), a class token, `depth` blocks in an nnx.List."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 8, depth: int = 2, num_classes: int = 3):
        self.patch = nnx.Conv(3, dim, (4, 4), strides=4, padding="VALID", rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.1)
        self.blocks = nnx.List([NNXBlock(dim, 2, rngs) for _ in range(depth)])
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        n, h, w, d = x.shape
        x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (n, 1, d)), x.reshape(n, h * w, d)], axis=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


def make_nnx_vit():
    return built(NNXViT, 1)


# ---- factories that go wrong --------------------------------------------------------------
def failing_factory():
    raise RuntimeError("no GPU here")


def returns_a_string():
    return "not a model"


class Dense2D(nn.Module):
    """No spatial layer at all: (N, H, W, C) -> flatten -> Dense."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="fc")(x.reshape(x.shape[0], -1))


def make_dense():
    return Dense2D()


NOT_CALLABLE = 3


class NNXFlat(nnx.Module):
    """Runs at 16x16 only: the classifier reads the flattened 16x16 map."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(16 * 16 * 4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], -1))


def make_nnx_flat():
    return built(NNXFlat, 0)


class NNXBatchNormNet(nnx.Module):
    """Batch norm (running statistics are weights) and dropout (an RNG stream, not weights)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.drop(nnx.relu(self.bn(self.conv(x)))).mean(axis=(1, 2)))


def make_nnx_bn():
    return built(NNXBatchNormNet, 0)
