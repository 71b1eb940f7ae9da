"""Shape versus texture (the original's shapebias experiment) from the command line.

Each layer is dissected on images and on stylized versions of the same images (same shapes and
layout, other textures and colours): per unit, thresholds and labels on each set and the IoU of
its masks on the paired images. With no arguments: the embedded toy classifier, every conv
layer, 1000 scenes paired with their stylized twins (exact labels on both). Passes are cached
and resumable; figures, thumbnails, shape_bias.json and a report per layer are written.

    python scripts/shape_bias.py
    python scripts/shape_bias.py --paired-dataset scenes-stylized-materials --layers conv4_2
    python scripts/shape_bias.py --model vgg16 --dataset data/places/val \\
        --paired-dataset data/stylized-places/val --pattern '^(.*Places365_\\w+_\\d+)'
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (toy_classifier, vgg16_places, "
                   "...) or the original's vgg16/alexnet/resnet152")
    p.add_argument("--dataset", default="scenes", help="'scenes' (default) or a folder of images")
    p.add_argument("--paired-dataset", default=None,
                   help="the other versions: scenes-stylized (default for scenes; materials and colours changed), "
                        "scenes-stylized-materials, scenes-stylized-colors, or a folder paired by file name")
    p.add_argument("--pattern", default=None, help="regular expression giving a file's pairing key (its first group); "
                   "default: the relative path without extension and without a '-stylized-...' suffix")
    p.add_argument("--layers", nargs="+", default=None, help="layers to compare (default: every conv layer)")
    p.add_argument("--seg", default=None, help="segmenter for folders (default netpqc); the scenes use exact labels")
    p.add_argument("--quantile", type=float, default=0.01, help="a unit is on in its top `quantile` of activations")
    p.add_argument("--miniou", type=float, default=0.04, help="IoU above which a unit counts as labelled")
    p.add_argument("--sample-size", type=int, default=None, help="pairs used (default: 1000 scenes, every pair)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--topk", type=int, default=20, help="top stylized pairs kept per unit")
    p.add_argument("--thumbsize", type=int, default=100, help="size of the unit thumbnails")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--outdir", default="results", help="folder under which the result folder is made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from jaxdissect.parallel import add_distributed_flags

    add_distributed_flags(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from jaxdissect.dissect.config import MODEL_ALIASES
    from jaxdissect.experiments.shape_bias import ShapeBiasConfig

    if not 0 < args.quantile < 1:
        raise ValueError(f"--quantile must lie in (0, 1), got {args.quantile}")
    if args.sample_size is not None and args.sample_size < 1:
        raise ValueError(f"--sample-size must be >= 1, got {args.sample_size}")
    return ShapeBiasConfig(
        model=MODEL_ALIASES.get(args.model, args.model), dataset=args.dataset, paired_dataset=args.paired_dataset,
        pattern=args.pattern, layers=tuple(args.layers or ()), seg=args.seg, quantile=args.quantile,
        miniou=args.miniou, sample_size=args.sample_size, batch_size=args.batch_size, topk=args.topk,
        thumbsize=args.thumbsize, devices=args.devices, outdir=args.outdir, weights=args.weights,
        progress=not args.no_progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxdissect import parallel

    parallel.initialize_from_flags(args)
    from jaxdissect.dissect.runstate import RunLockedError
    from jaxdissect.experiments.shape_bias import run_experiment

    try:
        config = config_from_args(args)
        run_experiment(config)
    except RunLockedError as e:
        print(f"shape_bias.py: {e}", file=sys.stderr)
        return 3
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"shape_bias.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
