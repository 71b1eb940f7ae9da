"""Single-unit class selectivity (the original's classifier unit plots) from the command line.

For a layer of a classifier, each image's peak activation per unit, averaged per class: which
classes a unit serves, and its class selectivity index. Plots are written for the units given
with --units and, when the classifier ablation of the same layer has run
(scripts/intervene_classifier.py), for each class's most important units. With no arguments:
the toy classifier's default layer on 1000 val scenes.

    python scripts/unit_selectivity.py --units 3 17 42
    python scripts/unit_selectivity.py --top-units 2
    python scripts/unit_selectivity.py --model vgg16 --dataset data/places/val --layer conv5_3 --units 19 150

Exit codes: 0 done, 2 bad flags or input (one-line message; --debug shows the traceback).
"""
from __future__ import annotations

import argparse
import sys

from jaxdissect import cli, config_flags
from jaxdissect.experiments.unit_selectivity import UnitSelectivityConfig, run_experiment

PROG = "unit_selectivity.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser.from_doc(PROG, __doc__)
    config_flags.add_config_flags(p, UnitSelectivityConfig)
    args = p.parse_config_args(argv, config_from_args)  # the config checks its own values
    spec = cli.check_model(p, "--model", args.model, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    cli.check_dataset(p, "--dataset", args.dataset, ("scenes",))
    cli.check_outdir(p, "--outdir", args.outdir)
    return args


def config_from_args(args: argparse.Namespace) -> UnitSelectivityConfig:
    """The config of the parsed flags."""
    return config_flags.config_from_args(UnitSelectivityConfig, args)


def run(args: argparse.Namespace) -> int:
    result = run_experiment(config_from_args(args))
    sel = result.selectivity
    for u in result.units:
        top = sel.class_names[sel.top_class[u]] if sel.top_class[u] >= 0 else "-"
        print(f"{result.model} {result.layer} unit {u}: selectivity {sel.index[u]:.3f}, best class {top}")
    if result.ranking_file:
        print(f"most important units per class from {result.ranking_file}")
    report = result.outputs.get("report")
    print(f"plots and selectivity.json: {result.directory}" + (f"; report: {report}" if report else ""))
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
