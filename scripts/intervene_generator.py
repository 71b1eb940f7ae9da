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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_generator", help="toy_generator or proggan_<domain>")
    p.add_argument("--layer", default=None, help="default: the model's default layer (layer4 for Progressive GANs)")
    p.add_argument("--seg", default=None, help="segmenter (default: toy for toy models, netpqc otherwise)")
    p.add_argument("--remove-class", default=None, help="class whose units are zeroed (default: tree)")
    p.add_argument("--insert-class", default=None, help="class whose units are switched on (default: door; tree for the toy generator, which draws no doors)")
    p.add_argument("--sample-size", type=int, default=None, help="z for the ablations (default 200 toy / 10000)")
    p.add_argument("--insert-sample-size", type=int, default=None, help="z for the insertion (default 50 toy / 10000)")
    p.add_argument("--dissect-sample-size", type=int, default=None, help="z for the dissection (default 1000 toy / 10000)")
    p.add_argument("--max-units", type=int, default=30, help="ablate the best 0..N units")
    p.add_argument("--insert-units", type=int, default=20)
    p.add_argument("--no-single-units", action="store_true", help="skip ablating every unit singly")
    p.add_argument("--quantile", type=float, default=0.01, help="the dissection's top quantile")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--chunk", type=int, default=8, help="edited images regenerated together per sample")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--outdir", default="results")
    p.add_argument("--weights", default=None)
    p.add_argument("--min-context-samples", type=int, default=100, help="contexts shown in the bar chart")
    p.add_argument("--no-progress", action="store_true")
    from jaxdissect.parallel import add_distributed_flags

    add_distributed_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from jaxdissect import parallel

    parallel.initialize_from_flags(args)
    from jaxdissect.experiments.generator_intervention import InterventionConfig, run_interventions

    cfg = InterventionConfig(
        model=args.model, layer=args.layer, seg=args.seg, remove_class=args.remove_class,
        insert_class=args.insert_class, sample_size=args.sample_size, insert_sample_size=args.insert_sample_size,
        dissect_sample_size=args.dissect_sample_size, max_units=args.max_units, insert_units=args.insert_units,
        single_units=not args.no_single_units, quantile=args.quantile, batch_size=args.batch_size, chunk=args.chunk,
        devices=args.devices, outdir=args.outdir, weights=args.weights, min_context_samples=args.min_context_samples,
        progress=not args.no_progress)
    res = run_interventions(cfg)
    if not parallel.is_primary():  # one summary per run, from process 0
        return
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


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    main()
