"""Classifier unit ablation (the paper's classifier interventions) from the command line.

With no arguments it ablates the embedded toy classifier's last conv layer: units are ranked per
class on scenes of the train split (single-unit ablation of every unit) and everything is
measured on the val split; the dissection of the same layer (run if its folder is missing)
gives each unit's IoU. `--model vgg16_places --dataset places` reproduces the paper on Places365
(train split for ranking, val for measuring). Every stage is cached; a killed run continues.

    python scripts/intervene_classifier.py
    python scripts/intervene_classifier.py --val-size 2000 --curve-classes street forest
    python scripts/intervene_classifier.py --model vgg16_places --dataset places --layer conv5_3
"""
from __future__ import annotations

import argparse
import os
import sys

from jaxdissect import cli, config_flags, parallel
from jaxdissect.models.flags import add_model_flags
from jaxdissect.experiments.classifier_ablation import DEFAULT_NS, ClassifierAblationConfig, run_experiment
from jaxdissect.experiments.classifier_report import headline

PROG = "intervene_classifier.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser.from_doc(PROG, __doc__)
    config_flags.add_config_flags(p, ClassifierAblationConfig)
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_config_args(argv, config_from_args)  # the config checks its own values
    spec, args.loaded_model = cli.check_model_or_factory(p, "--model", args, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    if spec is not None:
        cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    # the packaged/published weights have the spec's shapes; the defaults are clipped to the layer quietly
    if spec is not None and tuple(args.ns) != DEFAULT_NS and args.weights is None:
        layer = args.layer or spec.default_layer
        layer = layer if layer in cli.spec_layer_names(spec) else f"features.{layer}"
        units = cli.spec_layer_units(spec, layer)
        bad = [n for n in args.ns if n >= units]
        if bad:
            p.fail("--ns", f"each N must be from 1 to {units - 1} ({layer} has {units} units), got "
                           f"{', '.join(map(str, bad))}")
    cli.check_dataset(p, "--dataset", args.dataset, ("scenes", "places"), splits=("train", "val"))
    cli.check_seg(p, "--seg", args.seg, scenes=True)
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> ClassifierAblationConfig:
    """The config of the parsed flags (the original's model names resolved, the model's default dataset)."""
    return config_flags.config_from_args(ClassifierAblationConfig, args)


def run(args: argparse.Namespace) -> int:
    parallel.initialize_from_flags(args)
    cli.check_devices(args.devices)
    result = run_experiment(config_from_args(args), model=args.loaded_model)
    if not parallel.is_primary():  # one summary per run, from process 0
        return 0
    n = min(result.ns, key=lambda m: abs(m - args.distribution_n))
    h = headline(result, n)
    print(f"{result.model} {result.layer}: mean balanced accuracy over {h['classes']} classes (val): baseline "
          f"{h['baseline_ba']:.3f}; best {n} units removed {h['best_removed_ba']:.3f}; {n} random units removed "
          f"{h['random_removed_ba']:.3f}; only best {n} kept {h['others_removed_ba']:.3f}")
    print(f"tables and plots: {result.directory}")
    if result.dissection_dir:
        print(f"report: {os.path.join(result.dissection_dir, 'report.html')}")
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
