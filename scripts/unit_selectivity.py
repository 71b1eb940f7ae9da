"""Single-unit class selectivity (the original's classifier unit plots) from the command line.

For a layer of a classifier, each image's peak activation per unit, averaged per class: which
classes a unit serves, and its class selectivity index. Plots are written for the units given
with --units and, when the classifier ablation of the same layer has run
(scripts/intervene_classifier.py), for each class's most important units. With no arguments:
the toy classifier's default layer on 1000 val scenes.

    python scripts/unit_selectivity.py --units 3 17 42
    python scripts/unit_selectivity.py --top-units 2
    python scripts/unit_selectivity.py --model vgg16 --dataset data/places/val --layer conv5_3 --units 19 150
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier or the original's vgg16/...")
    p.add_argument("--dataset", default="scenes", help="'scenes' (val split) or a folder of class folders")
    p.add_argument("--layer", default=None, help="layer (default: the model's default layer)")
    p.add_argument("--units", type=int, nargs="*", default=(), help="units to plot")
    p.add_argument("--top-units", type=int, default=4,
                   help="with a unit ranking: plot each class's N most important units (0: none)")
    p.add_argument("--ranking", default=None, help="class_units.npz of the classifier ablation (or its folder); "
                   "default: the ablation folder of this model and layer under --outdir, when it exists")
    p.add_argument("--sample-size", type=int, default=None, help="images (default: 1000 scenes / the whole folder)")
    p.add_argument("--max-classes", type=int, default=30, help="classes shown per plot (the best ones)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--outdir", default="results", help="folder under which the result folder is made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from jaxdissect.data import sources
    from jaxdissect.dissect.config import MODEL_ALIASES
    from jaxdissect.dissect.run import dataset_short_name, resolve_layers
    from jaxdissect.experiments import classifier_ablation, unit_selectivity
    from jaxdissect.models import load
    from jaxdissect.results import DissectionResults

    if args.top_units < 0 or args.max_classes < 1 or (args.sample_size is not None and args.sample_size < 1):
        raise ValueError("--top-units must be >= 0, --max-classes and --sample-size >= 1")
    model = load(MODEL_ALIASES.get(args.model, args.model), args.weights)
    if model.kind != "classifier":
        raise ValueError(f"{model.name} is a {model.kind}; class selectivity needs a classifier")
    [layer] = resolve_layers(model, (args.layer,) if args.layer else ())
    size = int(model.input_size[0])
    if args.dataset == "scenes":
        source = sources.ScenesSource(size=args.sample_size or 1000, image_size=size)
    else:
        source = sources.FolderSource(args.dataset, crop=size, size=args.sample_size)
    class_names = tuple(model.labels) if model.labels is not None else tuple(source.classes)
    if len(source.classes) != len(class_names):
        raise ValueError(f"the images have {len(source.classes)} classes, the model {len(class_names)}")
    ranking = None
    ranking_path = args.ranking
    if ranking_path is None and args.top_units:
        cfg = classifier_ablation.InterventionConfig(model=model.name, dataset=args.dataset, outdir=args.outdir)
        folder = classifier_ablation.experiment_dir(cfg, model.name, layer)
        candidate = os.path.join(folder, unit_selectivity.RANKING_FILE)
        ranking_path = candidate if os.path.exists(candidate) else None
    units_count = None
    if ranking_path is not None:
        from jaxdissect.capture import layer_shapes

        units_count = int(layer_shapes(model, layer)[layer][-1])
        ranking = unit_selectivity.load_ranking(ranking_path, units_count, class_names)
    if not args.units and ranking is None:
        raise ValueError("nothing to plot: give --units, or run scripts/intervene_classifier.py first for the "
                         "classes' most important units (or pass --ranking)")
    short = model.name[: -len("_places")] if model.name.endswith("_places") else model.name
    layer_short = layer[len("features."):] if layer.startswith("features.") else layer
    directory = os.path.join(args.outdir, f"{short}-{dataset_short_name(args.dataset)}-selectivity-{layer_short}")
    result = unit_selectivity.run_selectivity(model, layer, source, class_names, directory, args.units, ranking,
                                              args.top_units, args.batch_size, not args.no_progress)
    try:
        dissection = DissectionResults(args.outdir, model=model.name, layers=[layer])[layer].directory
    except (FileNotFoundError, KeyError, ValueError):
        dissection = None
    paths = unit_selectivity.write_outputs(result, args.max_classes, dissection)
    sel = result.selectivity
    for u in result.units:
        top = sel.class_names[sel.top_class[u]] if sel.top_class[u] >= 0 else "-"
        print(f"{model.name} {layer} unit {u}: selectivity {sel.index[u]:.3f}, best class {top}")
    if ranking_path:
        print(f"most important units per class from {ranking_path}")
    print(f"plots and selectivity.json: {directory}" + (f"; report: {paths['report']}" if "report" in paths else ""))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"unit_selectivity.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
