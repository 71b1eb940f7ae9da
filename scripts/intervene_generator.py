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

from jaxdissect import cli, parallel
from jaxdissect.models.flags import add_model_flags
from jaxdissect.experiments.generator_intervention import InterventionConfig, run_interventions

PROG = "intervene_generator.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_generator", help="toy_generator or proggan_<domain>")
    p.add_argument("--layer", default=None, help="default: the model's default layer (layer4 for Progressive GANs)")
    p.add_argument("--seg", default=None, help="segmenter: toy or net[p][q][c] (default: toy for toy models, "
                   "netpqc otherwise)")
    p.add_argument("--remove-class", default=None, help="segmenter class whose units are zeroed (default: tree)")
    p.add_argument("--insert-class", default=None, help="segmenter class whose units are switched on (default: door; "
                   "tree for the toy generator, which draws no doors)")
    p.add_argument("--sample-size", type=cli.positive_int, default=None,
                   help="z for the ablations (default 200 toy / 10000)")
    p.add_argument("--insert-sample-size", type=cli.positive_int, default=None,
                   help="z for the insertion (default 50 toy / 10000)")
    p.add_argument("--dissect-sample-size", type=cli.positive_int, default=None,
                   help="z for the dissection (default 1000 toy / 10000)")
    p.add_argument("--max-units", type=cli.positive_int, default=30,
                   help="ablate the best 0..N units (at most the layer's units)")
    p.add_argument("--insert-units", type=cli.positive_int, default=20,
                   help="units switched on together (at most the layer's units)")
    p.add_argument("--no-single-units", action="store_true", help="skip ablating every unit singly")
    p.add_argument("--quantile", type=cli.open_unit_float, default=0.01, help="the dissection's top quantile")
    p.add_argument("--batch-size", type=cli.positive_int, default=10, help="z per batch (all devices)")
    p.add_argument("--chunk", type=cli.positive_int, default=8, help="edited images regenerated together per sample")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--outdir", default="results", help="folder under which result folders are made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--min-context-samples", type=cli.nonnegative_int, default=100,
                   help="contexts seen fewer times are left out of the bar chart")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_args(argv)
    spec, args.loaded_model = cli.check_model_or_factory(p, "--model", args, ("generator",))
    cli.check_existing(p, "--weights", args.weights)
    if spec is not None:
        cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    cli.check_seg(p, "--seg", args.seg)
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> InterventionConfig:
    return InterventionConfig(
        model=args.model, layer=args.layer, seg=args.seg, remove_class=args.remove_class,
        insert_class=args.insert_class, sample_size=args.sample_size, insert_sample_size=args.insert_sample_size,
        dissect_sample_size=args.dissect_sample_size, max_units=args.max_units, insert_units=args.insert_units,
        single_units=not args.no_single_units, quantile=args.quantile, batch_size=args.batch_size, chunk=args.chunk,
        devices=args.devices, outdir=args.outdir, weights=args.weights, min_context_samples=args.min_context_samples,
        progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    parallel.initialize_from_flags(args)
    cli.check_devices(args.devices)
    cfg = config_from_args(args)
    res = run_interventions(cfg, model=args.loaded_model)
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
