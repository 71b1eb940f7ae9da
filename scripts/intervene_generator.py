"""Generator interventions: remove a class by zeroing its units, insert one by switching them on.

Dissects the layer first (or reuses its results folder), then: class statistics with the best
0..N units of --remove-class zeroed (and every unit singly), and the best --insert-units units of
--insert-class set to their 99.5th-percentile value at every location of the layer in turn,
tallied by the original label there. Writes tables (npz/json), plots, image strips and a section
of the dissection's report.html into <results folder>/generator_intervention. Resumable: run the
same command again after an interruption.

    python scripts/intervene_generator.py                          (embedded toy_generator)
    python scripts/intervene_generator.py --model proggan_church   (the paper's: layer4, tree, door)
"""
from __future__ import annotations

import argparse
import sys

from jaxdissect import cli, config_flags, parallel
from jaxdissect.models.flags import add_model_flags
from jaxdissect.experiments.generator_intervention import GeneratorInterventionConfig, run_experiment

PROG = "intervene_generator.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser.from_doc(PROG, __doc__)
    config_flags.add_config_flags(p, GeneratorInterventionConfig)
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_config_args(argv, config_from_args)  # the config checks its own values
    spec, args.loaded_model = cli.check_model_or_factory(p, "--model", args, ("generator",))
    cli.check_existing(p, "--weights", args.weights)
    if spec is not None:
        cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    cli.check_seg(p, "--seg", args.seg)
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> GeneratorInterventionConfig:
    """The config of the parsed flags."""
    return config_flags.config_from_args(GeneratorInterventionConfig, args)


def run(args: argparse.Namespace) -> int:
    parallel.initialize_from_flags(args)
    cli.check_devices(args.devices)
    cfg = config_from_args(args)
    res = run_experiment(cfg, model=args.loaded_model)
    if not parallel.is_primary():  # one summary per run, from process 0
        return 0
    r, c = res.removal, res.context
    print(f"{res.layer}: zeroing the best {int(r.counts[-1])} {r.label} units removes {r.removed[-1]:.1%} of "
          f"{r.label} pixels (99% interval {r.lo99[-1]:.1%} .. {r.hi99[-1]:.1%}; {r.samples} images)")
    for n in (1, 5, 10, 20):
        if n < len(r.removed):
            print(f"  best {n:2d} units: {r.removed[n]:6.1%}")
    print(f"inserting {len(c.units)} {c.label} units (added area relative to the mean {c.label} area "
          f"{c.baseline_count:.1f} px):")
    rows = c.rows(cfg.min_context_samples) or c.rows(1)
    for row in rows[:12]:
        print(f"  on {row['context']:12s} {row['added']:+.3f} +- {row['ci99']:.3f}  ({row['samples']} samples)")
    print(f"timings: {', '.join(f'{k} {v:.0f}' for k, v in res.timings.items())}")
    print(f"outputs: {res.directory}")
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
