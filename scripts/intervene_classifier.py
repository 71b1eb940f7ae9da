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
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (toy_classifier, vgg16_places, "
                   "alexnet_places, resnet152_places) or the original's vgg16/alexnet/resnet152")
    p.add_argument("--dataset", default=None, help="'scenes' (default for toy models), 'places' (default otherwise; "
                   "downloaded once), tfds:NAME (its train and validation splits, e.g. tfds:places365_small), "
                   "or a folder with train/ and val/ class folders")
    p.add_argument("--layer", default=None, help="layer to ablate (default: the model's default layer)")
    p.add_argument("--train-size", type=int, default=None,
                   help="images used to rank units (default: 2000 scenes; for Places as many as val)")
    p.add_argument("--val-size", type=int, default=None,
                   help="images used to measure (default: 1000 scenes; all of Places365 val)")
    p.add_argument("--ns", type=int, nargs="+", default=None,
                   help="numbers of best units removed / kept per class (default: 1 2 3 4 5 20 64 128 256, "
                        "those below the unit count)")
    p.add_argument("--curve-classes", nargs="*", default=None,
                   help="classes (names or ids) for the full 1..units-1 curves (default: street lake for the "
                        "scenes, ski_resort computer_room hangar-indoor volleyball_court-outdoor for Places)")
    p.add_argument("--distribution-n", type=int, default=20, help="N of the all-classes figure (the paper's 20)")
    p.add_argument("--random-draws", type=int, default=5, help="random N-unit sets per N, the control")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--mask-chunk", type=int, default=32, help="masks evaluated at once per device (memory)")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--outdir", default="results", help="folder under which result folders are made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--seg", default=None, help="segmenter of the dissection when it has to be run")
    p.add_argument("--dissection-sample-size", type=int, default=None, help="samples of that dissection")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control sets")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from jaxdissect.parallel import add_distributed_flags

    add_distributed_flags(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from jaxdissect.dissect.config import MODEL_ALIASES
    from jaxdissect.experiments.classifier_ablation import DEFAULT_NS, InterventionConfig

    model = MODEL_ALIASES.get(args.model, args.model)
    dataset = args.dataset or ("scenes" if model.startswith("toy") else "places")
    return InterventionConfig(
        model=model, dataset=dataset, layer=args.layer, train_size=args.train_size, val_size=args.val_size,
        ns=tuple(args.ns) if args.ns else DEFAULT_NS,
        curve_classes=tuple(args.curve_classes) if args.curve_classes is not None else None,
        distribution_n=args.distribution_n, random_draws=args.random_draws, seed=args.seed,
        batch_size=args.batch_size, mask_chunk=args.mask_chunk, devices=args.devices, outdir=args.outdir,
        weights=args.weights, seg=args.seg, dissection_sample_size=args.dissection_sample_size,
        progress=not args.no_progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxdissect import parallel

    parallel.initialize_from_flags(args)
    import os

    from jaxdissect.dissect.runstate import RunLockedError
    from jaxdissect.experiments.classifier_ablation import run_experiment
    from jaxdissect.experiments.classifier_report import headline

    try:
        result = run_experiment(config_from_args(args))
    except RunLockedError as e:
        print(f"intervene_classifier.py: {e}", file=sys.stderr)
        return 3
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"intervene_classifier.py: error: {e}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
