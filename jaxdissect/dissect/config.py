"""What to dissect and how: `DissectConfig`, its validation, and the command-line flags it makes."""
from __future__ import annotations

import dataclasses
import math
import os

from jaxdissect.array_cache import DTYPES
from jaxdissect.config_error import ConfigError
from jaxdissect.config_flags import flag_name, option
from jaxdissect.dissect.clip_labels import PROBES
from jaxdissect.dissect.clip_scores import SCORE_FUNCTIONS
from jaxdissect.dissect.labelling import RULES

# The settings that only --label-source clip reads.
CLIP_SETTINGS = ("concepts", "clip_model", "clip_method", "clip_summary", "clip_probe")

MODEL_ALIASES = {"alexnet": "alexnet_places", "vgg16": "vgg16_places", "resnet152": "resnet152_places"}
CACHE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    """What to dissect and how; the defaults dissect the embedded toy classifier."""

    model: str = option("toy_classifier", "registered model name (toy_classifier, toy_generator, vgg16_places, "
                        "alexnet_places, resnet152_places, proggan_<domain>) or the original's alexnet/vgg16/resnet152/"
                        "progan")
    dataset: str | None = option(None, "'scenes' (the embedded world), 'places' (Places365 val, downloaded once), a "
                                 "folder of images, or tfds:NAME[:SPLIT] (a prepared tensorflow-datasets dataset); for "
                                 "progan, the domain (church, kitchen, ...) (default: scenes for the toy models, the "
                                 "domain for a Progressive GAN, places otherwise)")
    seg: str | None = option(None, "segmenter: scenes (exact labels of the scenes world), toy, net, netp, netq, netpq, "
                             "netpqc (default: scenes for the scenes world, toy for toy models, netpqc otherwise)")
    layers: tuple[str, ...] = option((), "layers to dissect, in one run (default: the model's default layer); "
                                     "VGG's short names like conv5_3 are accepted", flags=("--layers", "--layer"),
                                     metavar="LAYER")
    quantile: float = option(0.01, "a unit is 'on' where its upsampled activation is in its top QUANTILE over the "
                             "dataset (threshold = the 1 - QUANTILE quantile); results folders are suffixed "
                             "-<1000 * QUANTILE> unless it is 0.005")
    miniou: float = option(0.04, "a unit counts as labelled when its best IoU exceeds this")
    thumbsize: int = option(100, "size in pixels of each unit's thumbnail images")
    outdir: str = option("results", "folder under which the results folders are made")
    sample_size: int | None = option(None, "number of samples (default: 1000 scenes, 10000 z for generators, the whole "
                                     "image folder)")
    batch_size: int = option(10, "images per batch (rounded up to a multiple of the device count)")
    devices: int | None = option(None, "use the first N devices (default: all devices of all processes)")
    topk: int = option(100, "top images kept per unit (by peak activation)")
    strip_images: int = option(5, "top images shown per unit in the report")
    resolution: int = option(128, "quantile sketch bins per power of two (a power of two); thresholds are refined "
                             "to the exact quantile afterwards")
    weights: str | None = option(None, "weights folder or .pth file (default: packaged, or downloaded and converted); "
                                 "for --model package.module:factory also an orbax folder or a .msgpack")
    input_size: str | None = option(None, "your own model (--model package.module:factory): the image size it takes, "
                                    "128 or 128x96 (default 224)")
    normalization: str | None = option(None, "your own model: imagenet (default), [-1,1], none (pixels in [0, 1]), "
                                       "MEAN,STD or M1,M2,M3,S1,S2,S3")
    key_map: str | None = option(None, "your own model with --weights FILE.pth: package.module:name of a function "
                                 "(state dict -> variables) or of a mapping {torch key: dotted variable path}")
    prefix_tokens: int | None = option(None, "your own model's token layers: leading class/register tokens "
                                       "(default: 0 or 1, from a square grid)")
    activation_cache: bool = option(True, "do not cache the dissected layers' activations (the later passes run "
                                    "the network again instead; same results)", flags=("--no-activation-cache",))
    cache_dtype: str = option("float32", "storage type of the activation cache; bfloat16 or float16 halve it (the "
                              "dissection then measures the rounded activations)", choices=CACHE_DTYPES)
    overwrite: bool = option(False, "replace finished results in the results folder that were made with other "
                             "settings (stages whose settings did not change are kept)")
    label_rule: str = option("iou", "how a unit's label is chosen: iou (best IoU at the run's threshold, the "
                             "original's rule), iou-best (each label at its own best threshold), iqr (information "
                             "quality ratio), mi (mutual information); the last three pick each label's best of the "
                             "--label-levels thresholds", choices=RULES)
    label_levels: int = option(16, "threshold levels tallied per unit for the labelling rules and the report's "
                               "IoU-versus-threshold curves (top fractions from 0.5 down to 0.0005, the run's "
                               "--quantile among them)")
    formula_length: int = option(1, "also label each unit with the best formula of up to N concepts joined by AND, OR, "
                                 "AND NOT (compositional explanations; 1 = off)")
    beam_width: int = option(5, "formulas kept per unit at each step of the formula search")
    label_source: str = option("segmentation", "'clip' also names each unit with a phrase (CLIP-Dissect): the "
                               "phrase whose CLIP image-text similarity over the images best matches the unit's "
                               "activations", choices=("segmentation", "clip"))
    concepts: str | None = option(None, "with --label-source clip: a file of candidate phrases, one a line "
                                  "(default: the scenes world's concept list)")
    clip_model: str | None = option(None, "with --label-source clip: toy_clip or clip_vit_b32 (default: toy_clip for "
                                    "the scenes world, clip_vit_b32 otherwise)", choices=("toy_clip", "clip_vit_b32"))
    clip_method: str = option("wpmi", "with --label-source clip: how a unit's activations are matched to a "
                              "phrase's similarities (CLIP-Dissect's soft_wpmi and wpmi at their published settings, "
                              "or a simpler score; wpmi agrees best with IoU labels on the toy: docs/clip.md)",
                              choices=tuple(SCORE_FUNCTIONS))
    clip_summary: str = option("max", "with --label-source clip: a unit's number per image or window, its peak or "
                               "its spatial mean (CLIP-Dissect's)", choices=("mean", "max"))
    clip_probe: str = option("windows", "with --label-source clip: what CLIP and the units are compared on: whole "
                             "'images' (CLIP-Dissect's) or 'windows' (3x3 windows of half the image's side per image, "
                             "each unit summarized over the cells a window covers; more local, see docs/clip.md)",
                             choices=PROBES)
    checkpoint_seconds: float = option(120.0, "seconds between checkpoints of a pass")
    checkpoint_every: int | None = option(None, "checkpoint every N batches instead (overrides --checkpoint-seconds)")
    progress: bool = option(True, "no progress bars (the summary is still printed)", flags=("--no-progress",))

    def model_options(self) -> dict:
        """The options of a user's model (--model package.module:factory) that were given."""
        return {k: getattr(self, k) for k in ("input_size", "normalization", "key_map", "prefix_tokens")
                if getattr(self, k) is not None}

    def validate(self) -> "DissectConfig":
        """Check every setting; raise ConfigError naming the flag. Returns self."""
        if self.model_options() and ":" not in self.model:
            given = ", ".join("--" + k.replace("_", "-") for k in self.model_options())
            raise ConfigError(given.split(", ")[0], f"{given} apply to --model package.module:factory (your own "
                              f"model), not to the registered model {self.model!r}")
        if self.prefix_tokens is not None and (not isinstance(self.prefix_tokens, int) or self.prefix_tokens < 0):
            raise ConfigError("--prefix-tokens", f"must be a whole number >= 0, got {self.prefix_tokens!r}")
        q = self.quantile
        if not (isinstance(q, (int, float)) and math.isfinite(q) and 0.0 < q < 1.0):
            raise ConfigError("--quantile", f"must be a number strictly between 0 and 1, got {q!r}")
        if not (math.isfinite(self.miniou) and 0.0 <= self.miniou <= 1.0):
            raise ConfigError("--miniou", f"must lie in [0, 1], got {self.miniou!r}")
        _positive("--thumbsize", self.thumbsize, high=2048)
        _positive("--batch-size", self.batch_size)
        _positive("--topk", self.topk)
        _positive("--strip-images", self.strip_images)
        if self.sample_size is not None:
            _positive("--sample-size", self.sample_size)
        if self.devices is not None:
            _positive("--devices", self.devices)
        if self.checkpoint_every is not None:
            _positive("--checkpoint-every", self.checkpoint_every)
        if not (math.isfinite(self.checkpoint_seconds) and self.checkpoint_seconds > 0):
            raise ConfigError("--checkpoint-seconds", f"must be positive, got {self.checkpoint_seconds!r}")
        r = self.resolution
        if not (isinstance(r, int) and 1 <= r <= 2 ** 16 and r & (r - 1) == 0):
            raise ConfigError("--resolution", f"must be a power of two in [1, 65536], got {r!r}")
        if self.cache_dtype not in CACHE_DTYPES or self.cache_dtype not in DTYPES:
            raise ConfigError("--cache-dtype", f"must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        _positive("--label-levels", self.label_levels, high=64)
        _positive("--formula-length", self.formula_length, high=10)
        _positive("--beam-width", self.beam_width, high=100)
        if self.label_rule not in RULES:
            raise ConfigError("--label-rule", f"must be one of {', '.join(RULES)}, got {self.label_rule!r}")
        if self.label_source not in ("segmentation", "clip"):
            raise ConfigError("--label-source", f"must be segmentation or clip, got {self.label_source!r}")
        if self.label_source != "clip":  # a CLIP setting would be ignored: refuse it by name
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in CLIP_SETTINGS:
                if getattr(self, name) != defaults[name]:
                    raise ConfigError(flag_name(name), "needs --label-source clip")
        if self.clip_probe not in PROBES:
            raise ConfigError("--clip-probe", f"must be one of {', '.join(PROBES)}, got {self.clip_probe!r}")
        if self.concepts is not None and not os.path.isfile(self.concepts):
            raise ConfigError("--concepts", f"no such file: {self.concepts!r}")
        if self.clip_method not in SCORE_FUNCTIONS:
            raise ConfigError("--clip-method", f"must be one of {', '.join(SCORE_FUNCTIONS)}, got {self.clip_method!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("--layers", f"a layer is named twice: {list(self.layers)}")
        _check_outdir(self.outdir)
        if self.weights is not None and not os.path.exists(self.weights):
            raise ConfigError("--weights", f"no such file or folder: {self.weights!r}")
        return self

    @property
    def model_name(self) -> str:
        """The registered model name (the original's short names resolved)."""
        name = MODEL_ALIASES.get(self.model, self.model)
        return f"proggan_{self.dataset or 'church'}" if name == "progan" else name


def _positive(flag: str, value, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (high is not None and value > high):
        limit = f" and at most {high}" if high is not None else ""
        raise ConfigError(flag, f"must be a whole number of at least 1{limit}, got {value!r}")


def _check_outdir(outdir: str) -> None:
    """The results root must be a folder we can write (or creatable under one)."""
    path = os.path.abspath(outdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("--outdir", f"{outdir!r} exists and is not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError("--outdir", f"cannot write under {probe!r} (permission denied)")


def field_flag(name: str) -> str:
    """The command-line flag of a DissectConfig field."""
    for f in dataclasses.fields(DissectConfig):
        if f.name == name:
            return (f.metadata.get("flags") or (flag_name(name),))[0]
    raise KeyError(name)
