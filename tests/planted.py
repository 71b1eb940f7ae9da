"""A hand-built model whose unit i is on exactly where the scenes segmentation has label i.

Its input images encode the segmentation (red = object id, green = part id, blue = material id),
so the model can recover the labels from the pixels; its layer 'planted' samples the centre
pixel of every 2x2 cell, the same pixels the ground truth keeps at downsample 2.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxdissect.dissect import sources
from jaxdissect.models.registry import IMAGENET_NORMALIZATION, LoadedModel

NUM_LABELS = 55


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class Planted(nn.Module):
    num_labels: int = NUM_LABELS

    @nn.compact
    def __call__(self, x):
        mean = jnp.asarray(IMAGENET_NORMALIZATION["mean"])
        std = jnp.asarray(IMAGENET_NORMALIZATION["std"])
        ids = jnp.round((x * std + mean) * 255.0)[:, 1::2, 1::2, :]  # (N, H/2, W/2, 3)
        units = jnp.arange(self.num_labels, dtype=jnp.float32)
        on = (ids[..., :, None] == units).any(axis=-2).astype(jnp.float32)  # (N, h, w, labels)
        on = Identity(name="planted")(on)
        return on.mean(axis=(1, 2))


def planted_model() -> LoadedModel:
    return LoadedModel(name="planted", kind="classifier", module=Planted(), variables={}, config={},
                       input_size=(128, 128), normalization=IMAGENET_NORMALIZATION, default_layer="planted",
                       layer_names=("planted",), labels=None)


class EncodedScenes(sources.ScenesSource):
    """Scenes whose images are their own object/part/material label maps."""

    def load(self, indices):
        batch = super().load(indices)
        batch.inputs = np.moveaxis(batch.segmentation[:, :3], 1, -1).astype(np.uint8)
        return batch
