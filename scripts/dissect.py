"""Network dissection from the command line.

With no arguments it dissects the embedded toy classifier's last conv layer on 1,000 scenes of
the embedded world against their exact segmentation. `--model vgg16_places` dissects the
Places365 VGG16 (converted from the published checkpoint) on Places365 val with the unified-
parsing segmenter, as the paper did; `--model proggan_church` dissects a Progressive GAN.

    python scripts/dissect.py
    python scripts/dissect.py --model vgg16_places --layer conv5_3 --seg netpqc
    python scripts/dissect.py --model toy_classifier --layers features.conv3_1 features.conv4_2
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier",
                   help="registered model name (toy_classifier, toy_generator, vgg16_places, alexnet_places, "
                        "resnet152_places, proggan_<domain>) or the original's alexnet/vgg16/resnet152/progan")
    p.add_argument("--dataset", default=None,
                   help="'scenes' (the embedded world, default for classifiers), 'places' (Places365 val, "
                        "downloaded once), a folder of images, or tfds:NAME[:SPLIT] (a prepared tensorflow-datasets "
                        "dataset, e.g. tfds:places365_small); for progan, the domain (church, kitchen, ...)")
    p.add_argument("--seg", default=None,
                   help="segmenter: scenes (exact labels), toy, net, netp, netq, netpq, netpqc "
                        "(default: scenes for the scenes world, toy for toy_generator, netpqc otherwise)")
    p.add_argument("--layer", default=None, help="one layer to dissect (default: the model's default layer)")
    p.add_argument("--layers", nargs="+", default=None, help="several layers, dissected in one run")
    p.add_argument("--quantile", type=float, default=0.01, help="a unit is on in its top `quantile` of activations")
    p.add_argument("--miniou", type=float, default=0.04, help="IoU above which a unit counts as labelled")
    p.add_argument("--thumbsize", type=int, default=100, help="size of the unit thumbnails")
    p.add_argument("--outdir", default="results", help="folder under which result folders are made")
    p.add_argument("--sample-size", type=int, default=None,
                   help="samples to use (default: 1000 scenes, 10000 z, the whole image folder)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--topk", type=int, default=100, help="top images kept per unit")
    p.add_argument("--resolution", type=int, default=128, help="quantile sketch bins per power of two")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from jaxdissect.parallel import add_distributed_flags

    add_distributed_flags(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from jaxdissect.dissect import DissectConfig

    layers = tuple(args.layers or ([args.layer] if args.layer else []))
    dataset = args.dataset
    if dataset is None:
        dataset = "scenes" if args.model.startswith("toy") or args.model == "toy_classifier" else "places"
        if args.model.startswith("proggan_"):
            dataset = args.model[len("proggan_"):]
        if args.model == "progan":
            dataset = "church"
    return DissectConfig(model=args.model, dataset=dataset, seg=args.seg, layers=layers, quantile=args.quantile,
                         miniou=args.miniou, thumbsize=args.thumbsize, outdir=args.outdir,
                         sample_size=args.sample_size, batch_size=args.batch_size, devices=args.devices,
                         topk=args.topk, resolution=args.resolution, weights=args.weights,
                         progress=not args.no_progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxdissect import parallel

    parallel.initialize_from_flags(args)
    from jaxdissect.dissect import dissect
    from jaxdissect.dissect.runstate import RunLockedError

    try:
        dissect(config_from_args(args))
    except RunLockedError as e:
        print(f"dissect.py: {e}", file=sys.stderr)
        return 3
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"dissect.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
