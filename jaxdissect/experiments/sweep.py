"""Fast unit-ablation sweeps: capture a layer once, then run only the rest of the network for
many unit masks at once.

`tail_function(model, layer)` runs the model from a layer's output onward: it replaces that
layer's output through an interceptor, so the layers before it only see a dummy input and XLA
removes them as dead code. `sweep_predictions` vmaps the tail over a batch of masks.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.capturing import valid_layer_names


def tail_function(model, layer: str) -> Callable:
    """(variables, acts) -> model output, computed from `layer`'s output `acts` onward."""
    if layer not in valid_layer_names(model):
        raise ValueError(f"unknown layer {layer!r} for {model.name}; dissectable layers: {', '.join(model.layer_names)}")

    def run(variables, acts):
        if model.kind == "generator":
            dummy = jnp.zeros((acts.shape[0], int(model.z_dim)), jnp.float32)
        else:
            dummy = jnp.zeros((acts.shape[0], *model.input_size, 3), jnp.float32)

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and ".".join(context.module.path) == layer:
                return acts
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return model.module.apply(variables, dummy)

    return run


def sweep_predictions(tail: Callable, variables, acts: jax.Array, masks: jax.Array, chunk: int = 8) -> jax.Array:
    """Predicted classes (num_masks, N) of the tail on acts * (1 - mask) for every mask (num_masks, C).

    Masks are processed `chunk` at a time (vmapped), bounding memory to chunk x the batch."""
    num = masks.shape[0]
    pad = (-num) % chunk
    padded = jnp.concatenate([masks, jnp.zeros((pad, masks.shape[1]), masks.dtype)]) if pad else masks

    def one(mask):
        return jnp.argmax(tail(variables, acts * (1 - mask.astype(acts.dtype))), axis=-1)

    preds = jax.lax.map(jax.vmap(one), padded.reshape(-1, chunk, masks.shape[1]))
    return preds.reshape(-1, acts.shape[0])[:num]
