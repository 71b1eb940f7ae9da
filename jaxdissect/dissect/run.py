"""`DissectRun`: everything a dissection's stages share, resolved once from a `DissectConfig`.

The run knows the model and its layers, the samples and how to prepare them, the segmenter (or
the source's own exact labels), the mesh and batch size, the geometry of every layer (its shape,
its upsampling to the segmentation grid), the results folders, the caches and the fingerprints
that say what made each stored thing. It is frozen: the stages read it, never change it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import fingerprint as fp
from jaxdissect import parallel
from jaxdissect.array_cache import ArrayCache, cache_bytes
from jaxdissect.capturing import capture_views_fn, valid_layer_names
from jaxdissect.config_error import ConfigError, UserError
from jaxdissect.data.broden_source import BrodenSource, parse_broden_name
from jaxdissect.data.paired import STYLIZED_SCENES, StylizedScenesSource
from jaxdissect.data.places import ensure_places_val
from jaxdissect.data.tfds_images import parse_tfds_name
from jaxdissect.dissect import identity
from jaxdissect.data import sources
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.folder_names import dissection_folder
from jaxdissect.models import available, load
from jaxdissect.models import registry
from jaxdissect.models.registry import LoadedModel
from jaxdissect.models.views import SPEC_SEPARATOR, parse_spec
from jaxdissect.segment.merge import load_segmenter
from jaxdissect.segment.toy import ToySegmenter, subsample_labels
from jaxdissect.upsample import Upsampler, layer_geometry, upsampler
from weight_conversion.cache import cache_dir

MAX_SKETCH_VALUES = 2**31  # QuantileSketch counts are int32 (JAX's default integers)


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    """A dissected layer: its activation shape, its upsampling to the segmentation grid, and the
    module path of its pre-activation (checked for NaN, which a ReLU would hide), if any."""

    name: str
    shape: tuple[int, int, int]  # (h, w, units)
    upsample: Upsampler
    pre_activation: str | None

    @property
    def units(self) -> int:
        return self.shape[2]


@dataclasses.dataclass(frozen=True)
class DissectRun:
    """The resolved settings of one dissection (see the module docstring)."""

    config: DissectConfig
    model: LoadedModel
    dataset: str  # the resolved dataset name
    source: Any
    seg_name: str
    segmenter: Any  # None: the source's own exact segmentation
    labels: Any  # SegmentLabels
    layers: tuple[str, ...]
    geometry: Mapping[str, LayerGeometry]
    image_hw: tuple[int, int]
    downsample: int
    mesh: jax.sharding.Mesh
    batch_size: int
    dirs: Mapping[str, str]
    fingerprints: Mapping[str, Any]  # 'model', 'data', 'images', 'seg'
    seg_channels: int

    # ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: DissectConfig, model: LoadedModel | None = None, source: Any = None,
               segmenter: Any = None) -> "DissectRun":
        """Resolve a validated config (and optional objects replacing what it names) into a run."""
        config = config.validate()
        if model is None:
            try:
                model = load(config.model_name, config.weights, **config.model_options())
            except (ImportError, AttributeError, TypeError) as e:
                raise ConfigError("--model", str(e)) from None
        if model.kind not in ("classifier", "generator"):
            raise ConfigError("--model", f"{model.name} is a {model.kind}; the dissection takes a classifier or a "
                              "generator (segmenters are given with --seg)")
        dataset = resolve_dataset(config, model, source)
        layers = resolve_layers(model, config.layers)
        seg_name = default_seg(config, dataset, model, segmenter)
        if source is None:
            source = make_source(config, dataset, model)
        if len(source) == 0:
            raise UserError(f"the dataset {dataset!r} holds no samples")
        if segmenter is not None:
            labels = segmenter.labels
        else:
            segmenter, labels = make_segmenter(seg_name, source)
        mesh = parallel.make_mesh(config.devices)
        batch_size = parallel.padded_batch_size(config.batch_size, mesh)
        forward = capture_views_fn(model, layers)
        try:
            out, acts = jax.eval_shape(lambda v, x: forward(v, x, {}), model.variables, model.abstract_input())
        except ValueError as e:  # a layer with no spatial view
            raise ConfigError("--layers", str(e)) from None
        image_hw = tuple(out.shape[1:3]) if model.kind == "generator" else tuple(model.input_size)
        downsample = 4 if image_hw[0] >= 224 else 2
        seg_hw = (image_hw[0] // downsample, image_hw[1] // downsample)
        valid = set(valid_layer_names(model))
        geometry = {}
        for layer in layers:
            shape = acts[layer].shape
            if len(shape) != 4:
                raise ConfigError("--layers", f"layer {layer!r} of {model.name} has shape {tuple(shape)}, not "
                                  "(N, H, W, C): only spatial layers can be dissected")
            geo = layer_geometry(model.name, layer)
            up = upsampler(seg_hw, tuple(shape[1:3]), image_hw if geo else None, geo)
            base, units = parse_spec(layer)
            pre = f"{base}.conv" if units is None and f"{base}.conv" in valid else None
            geometry[layer] = LayerGeometry(layer, tuple(int(s) for s in shape[1:]), up, pre)
        values = len(source) * seg_hw[0] * seg_hw[1]
        if values >= MAX_SKETCH_VALUES:
            raise ConfigError("--sample-size", f"{len(source)} samples x {seg_hw[0]}x{seg_hw[1]} upsampled pixels = "
                              f"{values} values per unit, more than the quantile sketch counts "
                              f"({MAX_SKETCH_VALUES - 1}, int32); dissect a subset")
        dirs = {layer: result_dir(config, dataset, model.name, layer, seg_name) for layer in layers}
        model_id = identity.model_identity(model)
        data_id = identity.source_identity(source)
        images_id = None if data_id is None else (
            {"z": data_id, "generator": model_id} if model.kind == "generator" else data_id)
        seg_id = ({"ground_truth": images_id or "run"} if segmenter is None
                  else identity.segmenter_identity(segmenter, seg_name))
        seg_channels = _seg_channels(segmenter, source, image_hw)
        return cls(config=config, model=model, dataset=dataset, source=source, seg_name=seg_name,
                   segmenter=segmenter, labels=labels, layers=layers, geometry=geometry, image_hw=image_hw,
                   downsample=downsample, mesh=mesh, batch_size=batch_size, dirs=dirs,
                   fingerprints={"model": model_id, "data": data_id, "images": images_id, "seg": seg_id},
                   seg_channels=seg_channels)

    # ------------------------------------------------------------------------------------------
    @property
    def primary_dir(self) -> str:
        """The folder holding the run's pass checkpoints (the first layer's)."""
        return self.dirs[self.layers[0]]

    @property
    def seg_hw(self) -> tuple[int, int]:
        return self.image_hw[0] // self.downsample, self.image_hw[1] // self.downsample

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def ranges(self) -> list[np.ndarray]:
        return sources.batch_ranges(self.num_samples, self.batch_size)

    def model_input(self, inputs: jax.Array) -> jax.Array:
        """uint8 images -> normalized float NHWC; z passes through."""
        if self.model.kind == "generator":
            return inputs
        return registry.normalize_pixels(inputs.astype(jnp.float32) / 255.0, self.model.normalization)

    def seg_images(self, inputs: jax.Array, output: jax.Array) -> jax.Array:
        """The images the segmenter sees, NHWC in [-1, 1]: the generated ones, or the inputs."""
        if self.model.kind == "generator":
            return output
        return inputs.astype(jnp.float32) / 127.5 - 1.0

    def ground_truth(self, batch: sources.Batch) -> np.ndarray:
        """The source's exact segmentation of a batch at the segmentation grid."""
        if batch.segmentation is None:
            raise UserError(f"--seg {self.seg_name}: the source gives no segmentation of its own; choose a segmenter")
        return np.ascontiguousarray(subsample_labels(batch.segmentation, self.downsample))

    def forward_fn(self) -> Callable:
        """The jitted forward `(variables, inputs) -> (output, {layer: acts}, {layer: pre-activation
        non-finite flags (N, units)})`, the same compiled function in every pass, so a replay
        computes bit-identical activations. Activations are rounded to the cache dtype."""
        pre = {l: g.pre_activation for l, g in self.geometry.items() if g.pre_activation}
        capture = capture_views_fn(self.model, self.layers + tuple(pre.values()))
        dtype = jnp.dtype(self.config.cache_dtype) if self.config.activation_cache else jnp.float32

        def forward(variables, inputs):
            out, captured = capture(variables, self.model_input(inputs), {})
            acts = {l: captured[l].astype(dtype).astype(jnp.float32) for l in self.layers}
            flags = {l: ~jnp.isfinite(captured[p].reshape(inputs.shape[0], -1, captured[p].shape[-1])).all(1)
                     for l, p in pre.items()}
            return out, acts, flags

        return jax.jit(forward)

    # ------------------------------------------------------------------------------------------
    # Fingerprints of the stages (see pipeline.py)

    def activations_fingerprint(self, layer: str) -> dict:
        """What pass 1's statistics and the activation cache of `layer` depend on."""
        c = self.config
        return {"stage": "activations", "model": self.fingerprints["model"], "data": self.fingerprints["data"] or
                {"unfingerprinted_source": f"{type(self.source).__module__}.{type(self.source).__qualname__}",
                 "size": self.num_samples},
                "layer": layer, "shape": list(self.geometry[layer].shape), "seg_hw": list(self.seg_hw),
                "upsample": fp.array_digest(self.geometry[layer].upsample), "resolution": c.resolution,
                "topk": c.topk, "strip_images": c.strip_images,
                "values": c.cache_dtype if c.activation_cache else "float32"}

    def thresholds_fingerprint(self, layer: str) -> dict:
        return {"stage": "thresholds", "activations": fp.digest(self.activations_fingerprint(layer)),
                "quantile": self.config.quantile}

    def iou_fingerprint(self, layer: str) -> dict:
        return {"stage": "iou", "thresholds": fp.digest(self.thresholds_fingerprint(layer)),
                "seg": self.fingerprints["seg"], "labels": identity.labels_digest(self.labels),
                "downsample": self.downsample, "levels": self.config.label_levels}

    def formulas_fingerprint(self, layer: str) -> dict:
        c = self.config
        return {"stage": "formulas", "iou": fp.digest(self.iou_fingerprint(layer)), "length": c.formula_length,
                "beam": c.beam_width}

    def clip_fingerprint(self, layer: str) -> dict:
        c = self.config
        concepts = None
        if c.concepts is not None:
            with open(c.concepts, "rb") as f:
                concepts = hashlib.sha256(f.read()).hexdigest()
        return {"stage": "clip", "activations": fp.digest(self.activations_fingerprint(layer)),
                "model": self.clip_model, "method": c.clip_method, "summary": c.clip_summary, "concepts": concepts,
                "probe": c.clip_probe}

    @property
    def clip_model(self) -> str:
        c = self.config
        return c.clip_model or ("toy_clip" if self.dataset == "scenes" or self.dataset in STYLIZED_SCENES
                                else "clip_vit_b32")

    def result_fingerprint(self, layer: str) -> dict:
        """What the finished results folder of `layer` (reports, thumbnails) depends on."""
        c = self.config
        return {"stage": "result", "iou": fp.digest(self.iou_fingerprint(layer)), "miniou": c.miniou,
                "thumbsize": c.thumbsize, "strip_images": c.strip_images, "rule": c.label_rule,
                "formulas": fp.digest(self.formulas_fingerprint(layer)) if c.formula_length > 1 else None,
                "clip": fp.digest(self.clip_fingerprint(layer)) if c.label_source == "clip" else None,
                "summary": {"model": self.model.name, "layer": layer, "dataset": self.dataset, "seg": self.seg_name,
                            "samples": self.num_samples, "quantile": c.quantile, "weights":
                            self.fingerprints["model"]["weights"][:16]}}

    # ------------------------------------------------------------------------------------------
    # Caches

    def activation_cache(self, layer: str) -> ArrayCache:
        """The activation cache of `layer` (N, h, w, units) in its results folder."""
        return ArrayCache.open(os.path.join(self.dirs[layer], "cache", "activations"), self.num_samples,
                               self.geometry[layer].shape, self.config.cache_dtype,
                               self.activations_fingerprint(layer), replace_stale=True,
                               may_create=self._may_create(self.dirs[layer]))

    def peaks_cache(self, layer: str) -> ArrayCache:
        """Each image's peak activation of every unit of `layer` (N, units), in its results folder:
        small, always kept (open-vocabulary labels and class selectivity read it)."""
        return ArrayCache.open(os.path.join(self.dirs[layer], "cache", "peaks"), self.num_samples,
                               (self.geometry[layer].units,), "float32", self.activations_fingerprint(layer),
                               replace_stale=True, may_create=self._may_create(self.dirs[layer]))

    def seg_cache_dir(self) -> str:
        """Shared segmentations under $JAXDISSECT_HOME, keyed by the images and the segmenter; a
        source that cannot say what it holds keeps them in the run's folder instead."""
        if self.fingerprints["images"] is None:
            return os.path.join(self.primary_dir, "cache", "segmentation")
        return os.path.join(cache_dir(), "segmentations", fp.digest(self._seg_cache_fingerprint())[:24])

    def _seg_cache_fingerprint(self) -> dict:
        return {"images": self.fingerprints["images"] or fp.digest(self.activations_fingerprint(self.layers[0])),
                "seg": self.fingerprints["seg"], "labels": identity.labels_digest(self.labels),
                "downsample": self.downsample, "seg_hw": list(self.seg_hw)}

    def seg_cache(self) -> ArrayCache:
        dtype = "int16" if len(self.labels) < 2**15 else "int32"
        path = self.seg_cache_dir()
        return ArrayCache.open(path, self.num_samples, (self.seg_channels, *self.seg_hw), dtype,
                               self._seg_cache_fingerprint(), replace_stale=True, may_create=self._may_create(path))

    def image_cache(self) -> ArrayCache | None:
        """Generators: their output images at thumbnail size (the thumbnails' pictures), shared
        under $JAXDISSECT_HOME like the segmentations. None for image sources (read from the source)."""
        if self.model.kind != "generator":
            return None
        t = self.config.thumbsize
        key = {"images": self.fingerprints["images"] or fp.digest(self.activations_fingerprint(self.layers[0])),
               "thumbsize": t}
        root = (os.path.join(self.primary_dir, "cache", "images") if self.fingerprints["images"] is None
                else os.path.join(cache_dir(), "generated-images", fp.digest(key)[:24]))
        return ArrayCache.open(root, self.num_samples, (t, t, 3), "uint8", key, replace_stale=True,
                               may_create=self._may_create(root))

    def _may_create(self, cache_path: str) -> bool:
        """Whether this process may create or replace the cache: in the results folders under
        --outdir (which every process sees) only process 0 does, and the others open what it
        made; under $JAXDISSECT_HOME (maybe one per host) each process may."""
        outdir = os.path.abspath(self.config.outdir) + os.sep
        return parallel.is_primary() or not os.path.abspath(cache_path).startswith(outdir)

    def check_disk_space(self, layers_to_cache: list[str], seg_missing: int) -> None:
        """Refuse up front, with the numbers and the flags that help, when the caches would not fit."""
        need: dict[str, int] = {}

        def add(path: str, nbytes: int) -> None:
            probe = os.path.abspath(path)
            while not os.path.exists(probe):
                probe = os.path.dirname(probe)
            need[probe] = need.get(probe, 0) + nbytes

        for layer in layers_to_cache:
            add(self.dirs[layer], cache_bytes(self.num_samples, self.geometry[layer].shape, self.config.cache_dtype))
        if seg_missing:
            add(self.seg_cache_dir(), cache_bytes(seg_missing, (self.seg_channels, *self.seg_hw), "int16"))
        for probe, nbytes in need.items():
            free = shutil.disk_usage(probe).free
            if nbytes > free * 0.95:
                half = sum(cache_bytes(self.num_samples, self.geometry[l].shape, "bfloat16") for l in layers_to_cache)
                raise UserError(
                    f"the caches of this dissection need {_gb(nbytes)} on the filesystem of {probe} but only "
                    f"{_gb(free)} are free. Use --cache-dtype bfloat16 (activations in {_gb(half)}), or "
                    "--no-activation-cache (the network runs again for the later passes instead), or "
                    "fewer samples (--sample-size), or another --outdir / $JAXDISSECT_HOME")

    def cache_sizes(self) -> dict[str, int]:
        """Bytes of each layer's activation cache at the configured dtype."""
        return {l: cache_bytes(self.num_samples, self.geometry[l].shape, self.config.cache_dtype) for l in self.layers}


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _seg_channels(segmenter: Any, source: Any, image_hw: tuple[int, int]) -> int:
    if segmenter is None:
        batch = source.load(np.array([0]))
        if batch.segmentation is None:
            raise UserError("this source has no segmentation of its own; choose a segmenter with --seg")
        return int(batch.segmentation.shape[1])
    images = jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32)
    return int(jax.eval_shape(lambda x: segmenter.segment(x, 1), images).shape[1])


# ---------------------------------------------------------------------------------------------
# Resolving names


def resolve_dataset(config: DissectConfig, model: LoadedModel, source: Any = None) -> str:
    """The dataset the config names; for a source given as an object, its `name` (scenes for
    the scenes world); else the model's own: scenes for the embedded toys, the domain for a
    Progressive GAN, Places365 val otherwise."""
    if config.dataset is not None:
        return config.dataset
    if source is not None:
        return getattr(source, "name", None) or ("scenes" if isinstance(source, sources.ScenesSource)
                                                 else type(source).__name__.lower())
    if model.name not in available():  # a user's own model: the embedded world
        return "scenes"
    return default_dataset(model.name)


def default_dataset(model_name: str) -> str:
    """A model's own dataset: scenes for the embedded toys and for a user's model (a
    package.module:factory path: the embedded world needs no download), the domain of a
    Progressive GAN, Places365 val otherwise."""
    if model_name.startswith("toy_") or ":" in model_name:
        return "scenes"
    if model_name.startswith("proggan_"):
        return model_name[len("proggan_"):]
    return "places"


def resolve_layers(model: LoadedModel, requested) -> tuple[str, ...]:
    """Requested layer names (the original's short VGG names like 'conv5_3' accepted)."""
    if not requested:
        return (model.default_layer,)
    valid = set(valid_layer_names(model))
    out = []
    for spec in requested:
        try:
            name, units = parse_spec(spec)
        except ValueError as e:
            raise ConfigError("--layers", str(e)) from None
        if name not in valid and f"features.{name}" in valid:
            name = f"features.{name}"
        if name not in valid:
            raise ConfigError("--layers", f"unknown layer {name!r} for {model.name}; dissectable layers: "
                              f"{', '.join(model.layer_names)}")
        out.append(name if units is None else f"{name}{SPEC_SEPARATOR}{units}")
    return tuple(out)


def default_seg(config: DissectConfig, dataset: str, model: LoadedModel, segmenter: Any = None) -> str:
    """The segmenter's name: the config's, a given segmenter object's `name` (else its class
    name), or the default for the dataset and model."""
    if config.seg:
        return config.seg
    if segmenter is not None:
        return getattr(segmenter, "name", None) or type(segmenter).__name__.lower()
    if model.kind == "classifier" and (dataset == "scenes" or dataset in STYLIZED_SCENES):
        return "scenes"
    if parse_broden_name(dataset) is not None:
        return "broden"
    return "toy" if model.name.startswith("toy_") else "netpqc"


def make_source(config: DissectConfig, dataset: str, model: LoadedModel):
    """The samples: z for generators, the scenes world, an image folder / Places365 val, or a
    prepared tfds dataset ('tfds:places365_small')."""
    if model.kind == "generator":
        return sources.ZSource(config.sample_size or 10_000, int(model.z_dim))
    if dataset == "scenes":
        return sources.ScenesSource(size=config.sample_size or 1000, image_size=model.input_size[0])
    if dataset in STYLIZED_SCENES:
        return StylizedScenesSource(size=config.sample_size or 1000, image_size=model.input_size[0],
                                    style=STYLIZED_SCENES[dataset])
    broden = parse_broden_name(dataset)
    if broden is not None:
        if not os.path.isdir(broden):
            raise ConfigError("--dataset", f"broden:{broden}: no such folder")
        return BrodenSource(broden, image_size=tuple(model.input_size), size=config.sample_size)
    tfds_name = parse_tfds_name(dataset)
    if tfds_name is not None:
        return sources.TfdsSource(*tfds_name, crop=model.input_size[0], size=config.sample_size)
    root = ensure_places_val() if dataset == "places" else dataset
    if not os.path.isdir(root):
        raise ConfigError("--dataset", f"{dataset!r} is not a folder of images, 'scenes', 'places' or tfds:NAME")
    return sources.FolderSource(root, crop=model.input_size[0], size=config.sample_size)


def make_segmenter(seg: str, source):
    """(segmenter or None for the source's own exact labels, labels)."""
    if seg == "scenes":
        if not isinstance(source, sources.ScenesSource):
            raise ConfigError("--seg", "scenes (exact labels) needs --dataset scenes; use --seg toy or a segmenter")
        return None, source.labels
    if seg == "broden":
        if not isinstance(source, BrodenSource):
            raise ConfigError("--seg", "broden (a Broden folder's own masks) needs --dataset broden:PATH")
        return None, source.labels
    if seg == "toy":
        s = ToySegmenter()
        return s, s.labels
    s = load_segmenter(seg)
    return s, s.labels


def result_dir(config: DissectConfig, dataset: str, model_name: str, layer: str, seg: str) -> str:
    """The layer's results folder under config.outdir (jaxdissect.folder_names.dissection_folder)."""
    return dissection_folder(config.outdir, model_name, dataset, seg, layer, config.quantile, config.thumbsize)


__all__ = ["DissectRun", "LayerGeometry", "result_dir", "resolve_layers", "resolve_dataset"]
