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

from jaxdissect import cli, parallel
from jaxdissect.models.flags import add_model_flags
from jaxdissect.experiments.classifier_ablation import DEFAULT_NS, InterventionConfig, run_experiment
from jaxdissect.experiments.classifier_report import headline

PROG = "intervene_classifier.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (toy_classifier, vgg16_places, "
                   "alexnet_places, resnet152_places) or the original's vgg16/alexnet/resnet152")
    p.add_argument("--dataset", default=None, help="'scenes' (default for toy models), 'places' (default otherwise; "
                   "downloaded once), tfds:NAME (its train and validation splits, e.g. tfds:places365_small), "
                   "or a folder with train/ and val/ class folders")
    p.add_argument("--layer", default=None, help="layer to ablate (default: the model's default layer)")
    p.add_argument("--train-size", type=cli.positive_int, default=None,
                   help="images used to rank units (default: 2000 scenes; for Places as many as val)")
    p.add_argument("--val-size", type=cli.positive_int, default=None,
                   help="images used to measure (default: 1000 scenes; all of Places365 val)")
    p.add_argument("--ns", type=cli.positive_int, nargs="+", default=None,
                   help="numbers of best units removed / kept per class, each below the layer's unit count "
                        f"(default: {' '.join(map(str, DEFAULT_NS))}, those below the unit count)")
    p.add_argument("--curve-classes", nargs="*", default=None,
                   help="classes (names or ids) for the full 1..units-1 curves (default: street lake for the "
                        "scenes, ski_resort computer_room hangar-indoor volleyball_court-outdoor for Places)")
    p.add_argument("--distribution-n", type=cli.positive_int, default=20,
                   help="N of the all-classes figure (the paper's 20; at most the layer's units - 1)")
    p.add_argument("--random-draws", type=cli.positive_int, default=5, help="random N-unit sets per N, the control")
    p.add_argument("--batch-size", type=cli.positive_int, default=50, help="images per batch (all devices)")
    p.add_argument("--mask-chunk", type=cli.positive_int, default=32, help="masks evaluated at once per device (memory)")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--outdir", default="results", help="folder under which result folders are made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--seg", default=None, help="segmenter of the dissection when it has to be run (default: scenes "
                   "for the scenes world, netpqc otherwise)")
    p.add_argument("--dissection-sample-size", type=cli.positive_int, default=None,
                   help="samples of that dissection (default: the dissection's)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed of the random control sets")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_args(argv)
    spec, args.loaded_model = cli.check_model_or_factory(p, "--model", args, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    if spec is not None:
        cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    if spec is not None and args.ns and args.weights is None:  # the packaged/published weights have the spec's shapes
        layer = args.layer or spec.default_layer
        layer = layer if layer in cli.spec_layer_names(spec) else f"features.{layer}"
        units = cli.spec_layer_units(spec, layer)
        bad = [n for n in args.ns if n >= units]
        if bad:
            p.fail("--ns", f"each N must be from 1 to {units - 1} ({layer} has {units} units), got "
                           f"{', '.join(map(str, bad))}")
    cli.check_dataset(p, "--dataset", args.dataset, ("scenes", "places"), splits=("train", "val"))
    cli.check_seg(p, "--seg", args.seg, scenes=True)
    if args.seg == "scenes" and (args.dataset or ("scenes" if spec is None or spec.name.startswith("toy") else "places")) != "scenes":
        p.fail("--seg", "scenes (the exact labels) needs --dataset scenes; use toy or net[p][q][c]")
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> InterventionConfig:
    model = cli.MODEL_ALIASES.get(args.model, args.model)
    dataset = args.dataset or ("scenes" if model.startswith("toy") or ":" in model else "places")
    return InterventionConfig(
        model=model, dataset=dataset, layer=args.layer, train_size=args.train_size, val_size=args.val_size,
        ns=tuple(args.ns) if args.ns else DEFAULT_NS,
        curve_classes=tuple(args.curve_classes) if args.curve_classes is not None else None,
        distribution_n=args.distribution_n, random_draws=args.random_draws, seed=args.seed,
        batch_size=args.batch_size, mask_chunk=args.mask_chunk, devices=args.devices, outdir=args.outdir,
        weights=args.weights, seg=args.seg, dissection_sample_size=args.dissection_sample_size,
        progress=not args.no_progress)


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
