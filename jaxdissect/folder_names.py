"""How results folders are named, in one place: the dissection's (the original's naming,
<model>-<dataset>-<seg>-<layer>) and the experiments' (<model>-<dataset>-<kind>-...)."""
from __future__ import annotations

import os

from jaxdissect.data.tfds_images import parse_tfds_name
from jaxdissect.models.views import SPEC_SEPARATOR


def dataset_short_name(dataset: str) -> str:
    """The dataset's part of a results folder name: a folder's base name, a tfds dataset's name
    (with its split unless 'validation'), or the name given."""
    tfds_name = parse_tfds_name(dataset)
    if tfds_name is not None:
        name, split = tfds_name
        return name if split == "validation" else f"{name}-{split}"
    return os.path.basename(os.path.normpath(dataset)) if os.path.sep in dataset else dataset


def model_short_name(model_name: str) -> str:
    """A registered model's name in folder names: vgg16_places -> vgg16."""
    return model_name[: -len("_places")] if model_name.endswith("_places") else model_name


def layer_short_name(layer: str) -> str:
    """A layer's name in folder names: features.conv5_3 -> conv5_3."""
    return layer[len("features."):] if layer.startswith("features.") else layer


def experiment_folder(outdir: str, model_name: str, dataset: str, kind: str, *suffixes: str) -> str:
    """<outdir>/<model>-<dataset>-<kind>[-<suffix>...], named like the dissection's folders
    (e.g. results/vgg16-places-intervention-conv5_3)."""
    parts = [model_short_name(model_name), dataset, kind, *suffixes]
    return os.path.join(outdir, "-".join(p for p in parts if p))


def ablation_folder(outdir: str, model_name: str, dataset: str, layer: str) -> str:
    """The classifier ablation's folder, <outdir>/<model>-<dataset>-intervention-<layer>, where its
    unit ranking lies for the experiments that read it (unit selectivity)."""
    return experiment_folder(outdir, model_name, dataset_short_name(dataset), "intervention", layer_short_name(layer))


def dissection_folder(outdir: str, model_name: str, dataset: str, seg: str, layer: str, quantile: float = 0.005,
                      thumbsize: int = 100) -> str:
    """The original's naming: <model>-<dataset>-<seg>-<layer>[-<quantile*1000>][-t<thumbsize>]
    (a Progressive GAN's is progan-<its dataset>-...)."""
    short, dataset = model_short_name(model_name), dataset_short_name(dataset)
    if short.startswith("proggan_"):
        short, dataset = "progan", short[len("proggan_"):]
    name = f"{short}-{dataset}-{seg}-{layer_short_name(layer).replace(SPEC_SEPARATOR, '-')}"
    if quantile != 0.005:
        name += "-%g" % (quantile * 1000)
    if thumbsize != 100:
        name += f"-t{thumbsize}"
    return os.path.join(outdir, name)


__all__ = ["dataset_short_name", "model_short_name", "layer_short_name", "experiment_folder", "ablation_folder",
           "dissection_folder"]
