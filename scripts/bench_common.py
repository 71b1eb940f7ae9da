"""Stand-ins with random weights for the benchmarks: registered models and the UPP segmenter at
the published sizes, so speed can be measured without any download."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxdissect.models import LoadedModel, get_spec
from jaxdissect.segment.upp import UnifiedParsingSegmenter, UPPConfig, UPPNet, num_part_logits


def random_model(name: str):
    """A LoadedModel with random weights, built from the registered spec."""
    spec = get_spec(name)
    module = spec.build(spec.default_config)
    example = jnp.zeros((1, int(spec.default_config["z_dim"])) if spec.kind == "generator"
                        else (1, *spec.input_size, 3))
    variables = jax.jit(module.init)(jax.random.key(0), example)
    return LoadedModel(spec.name, spec.kind, module, variables, dict(spec.default_config), spec.input_size,
                       spec.normalization, spec.default_layer, tuple(spec.layer_names), None)


def synthetic_upp_labels() -> dict:
    """Class counts of the size of the published UPP model's (objects, materials, scenes, parts)."""
    objects = ["-"] + [f"object{i}" for i in range(1, 336)]
    objects[1:4] = ["sky", "building", "person"]
    parts = {o: [f"{o}-part{k}" for k in range(6)] for o in objects[1:30]}
    return {"object": objects, "material": ["-"] + [f"material{i}" for i in range(25)],
            "scene": [f"scene{i}" for i in range(365)], "part": sorted({p for v in parts.values() for p in v}),
            "object_part": parts}


def random_upp_segmenter(segdiv: str | None = "quad", all_parts: bool = True, seed: int = 0):
    """The UPP segmenter (ResNet50 + UPerNet, the published sizes) with random weights: the
    first batch norm's running variance is set to 60^2, since UPP inputs are 0..255 less the mean."""
    labels = synthetic_upp_labels()
    config = UPPConfig(num_object=len(labels["object"]), num_part=num_part_logits(labels),
                       num_material=len(labels["material"]), num_scene=len(labels["scene"]))
    variables = jax.jit(UPPNet(config).init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
    variables = jax.tree.map(np.asarray, variables)
    variables["batch_stats"]["encoder"]["bn1"]["var"] = variables["batch_stats"]["encoder"]["bn1"]["var"] * 3600.0
    return UnifiedParsingSegmenter(variables, labels, config, segdiv=segdiv, all_parts=all_parts)
