"""Shape versus texture (the original's shapebias experiment) from the command line.

Each layer is dissected on images and on stylized versions of the same images (same shapes and
layout, other textures and colours): per unit, thresholds and labels on each set and the IoU of
its masks on the paired images. With no arguments: the embedded toy classifier, every conv
layer, 1000 scenes paired with their stylized twins (exact labels on both). A stylized world as
--dataset is paired with another stylization of each scene (scenes-restyled), so that no surface
label is tied to one kind of thing where units are labelled. Passes are cached and resumable;
figures, thumbnails, shape_bias.json and a report per layer are written.

    python scripts/shape_bias.py
    python scripts/shape_bias.py --paired-dataset scenes-stylized-materials --layers conv4_2
    python scripts/shape_bias.py --model toy_classifier_shapes --dataset scenes-stylized  # vs restyled twins
    python scripts/shape_bias.py --model vgg16 --dataset data/places/val \\
        --paired-dataset data/stylized-places/val --pattern '^(.*Places365_\\w+_\\d+)'

Exit codes: 0 done, 2 bad flags or input (one-line message; --debug shows the traceback),
3 another run is writing the same results folder.
"""
from __future__ import annotations

import argparse
import sys

from jaxdissect import cli, config_flags, parallel
from jaxdissect.experiments.shape_bias import ShapeBiasConfig, paired_name, run_experiment

PROG = "shape_bias.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser.from_doc(PROG, __doc__)
    config_flags.add_config_flags(p, ShapeBiasConfig)
    parallel.add_distributed_flags(p)
    args = p.parse_config_args(argv, lambda a: paired_name(config_from_args(a)))  # the datasets must pair too
    spec = cli.check_model(p, "--model", args.model, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    cli.check_layers(p, "--layers", spec, args.layers, args.weights)
    cli.check_seg(p, "--seg", args.seg, scenes=True)
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> ShapeBiasConfig:
    """The config of the parsed flags."""
    return config_flags.config_from_args(ShapeBiasConfig, args)


def run(args: argparse.Namespace) -> int:
    parallel.initialize_from_flags(args)
    cli.check_devices(args.devices)
    run_experiment(config_from_args(args))
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
