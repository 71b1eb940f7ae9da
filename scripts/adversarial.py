"""Adversarial attacks seen through units (the paper's adversarial experiment) from the command line.

With no arguments it attacks the embedded toy classifier on the scenes world, towards each scene
class in turn: images whose true and predicted class are not the target are attacked with a
targeted Carlini-Wagner L2 attack, and the change of every unit's peak activation at the dissected
layer is compared for the target's 4 most important units, the source class's 4, and the rest
(importance = single-unit ablation on the train split, shared with intervene_classifier.py).
`--model vgg16_places --dataset places` reproduces the paper (targets bedroom, computer_room,
hangar-indoor, ski_resort, volleyball_court-outdoor; 1000 images each). Batches of attacks are
saved as they finish; a killed run continues.

    python scripts/adversarial.py
    python scripts/adversarial.py --attack pgd_linf --epsilon 0.01 --images-per-target 50
    python scripts/adversarial.py --model vgg16_places --dataset places --layer conv5_3
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jaxdissect import cli, parallel
from jaxdissect.models.flags import add_model_flags
from jaxdissect.experiments.adversarial import FAST_CW, AdversarialConfig, run_experiment
from jaxdissect.experiments.attacks import attack_config

PROG = "adversarial.py"
CW_FLAGS = ("binary_search_steps", "learning_rate", "initial_const", "confidence", "no_abort_early")
PGD_FLAGS = ("epsilon", "rel_stepsize", "no_random_start")


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (toy_classifier, vgg16_places, "
                   "alexnet_places, resnet152_places) or the original's vgg16/alexnet/resnet152")
    p.add_argument("--dataset", default=None, help="'scenes' (default for toy models), 'places' (default otherwise), "
                   "tfds:NAME, or a folder with train/ and val/ class folders")
    p.add_argument("--layer", default=None, help="layer whose units are measured (default: the model's default)")
    p.add_argument("--targets", nargs="+", default=None,
                   help="target classes (names or ids; default: every scene class / the paper's five for Places)")
    p.add_argument("--images-per-target", type=cli.positive_int, default=None,
                   help="images attacked per target (default: 10 scenes / 1000 for Places)")
    p.add_argument("--attack", default="cw", choices=("cw", "pgd_l2", "pgd_linf"), help="the attack")
    g = p.add_argument_group("Carlini-Wagner L2 (--attack cw; defaults: foolbox 2's, as the original used; for the "
                             "scenes world a CPU-sized schedule: 4 rounds of 100 steps, lr 0.01, initial const 0.1)")
    g.add_argument("--binary-search-steps", type=cli.positive_int, default=None, help="rounds (default 5)")
    g.add_argument("--steps", type=cli.positive_int, default=None, help="Adam steps per binary-search round (CW, "
                   "default 1000) or PGD iterations (default 50 for l2, 40 for linf)")
    g.add_argument("--learning-rate", type=cli.positive_float, default=None, help="Adam's step (default 5e-3)")
    g.add_argument("--initial-const", type=cli.positive_float, default=None, help="c of round one (default 1e-2)")
    g.add_argument("--confidence", type=cli.nonnegative_float, default=None,
                   help="logit margin the target must win by (default 0)")
    g.add_argument("--no-abort-early", action="store_true", help="always run every Adam step")
    g = p.add_argument_group("PGD (--attack pgd_l2 / pgd_linf; defaults: foolbox 3's)")
    g.add_argument("--epsilon", type=cli.positive_float, default=None,
                   help="ball radius in [0, 1] pixels (default 8/255 linf, 1.0 l2)")
    g.add_argument("--rel-stepsize", type=cli.positive_float, default=None,
                   help="step / epsilon (default 0.025 l2, 0.01/0.3 linf)")
    g.add_argument("--no-random-start", action="store_true", help="start at the image, not a random point of the ball")
    p.add_argument("--ranking-file", default=None, help=".npz with 'ranking' (classes, units) or the original's "
                   "ttv_unit_ablation.npz ('single_unit_ablation_ba'); default: computed on the train split")
    p.add_argument("--train-size", type=cli.positive_int, default=None,
                   help="images ranking the units (default 2000 scenes)")
    p.add_argument("--val-size", type=cli.positive_int, default=None,
                   help="candidate images to attack (default: all of val)")
    p.add_argument("--examples", type=cli.nonnegative_int, default=2, help="example pictures per target")
    p.add_argument("--delta-threshold", type=cli.positive_float, default=None,
                   help="activation change outlined in the examples (default 0.1 x the mean peak activation)")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="images per batch (all devices)")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--outdir", default="results", help="folder under which result folders are made")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="image order and PGD random starts")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_args(argv)
    spec, args.loaded_model = cli.check_model_or_factory(p, "--model", args, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    cli.check_existing(p, "--ranking-file", args.ranking_file, "file")
    if spec is not None:
        cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    cli.check_dataset(p, "--dataset", args.dataset, ("scenes", "places"), splits=("train", "val"))
    other = PGD_FLAGS if args.attack == "cw" else CW_FLAGS
    for name in other:
        if getattr(args, name) not in (None, False):
            p.fail("--" + name.replace("_", "-"), f"does not apply to --attack {args.attack} (it belongs to "
                   f"{'PGD' if args.attack == 'cw' else 'cw'})")
    if args.attack == "pgd_linf" and args.epsilon is not None and args.epsilon > 1:
        p.fail("--epsilon", f"an L-inf radius is at most 1 (pixels are in [0, 1]), got {args.epsilon}")
    cli.check_outdir(p, "--outdir", args.outdir)
    cli.check_distributed(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> AdversarialConfig:
    model = cli.MODEL_ALIASES.get(args.model, args.model)
    dataset = args.dataset or ("scenes" if model.startswith("toy") or ":" in model else "places")
    if args.attack == "cw":
        base = dataclasses.asdict(FAST_CW) if dataset == "scenes" else {}
        given = dict(binary_search_steps=args.binary_search_steps, steps=args.steps, learning_rate=args.learning_rate,
                     initial_const=args.initial_const, confidence=args.confidence,
                     abort_early=False if args.no_abort_early else None)
        attack = attack_config("cw", **{**base, **{k: v for k, v in given.items() if v is not None}})
    else:
        attack = attack_config(args.attack, epsilon=args.epsilon, steps=args.steps, rel_stepsize=args.rel_stepsize,
                               random_start=False if args.no_random_start else None)
    return AdversarialConfig(
        model=model, dataset=dataset, layer=args.layer, targets=tuple(args.targets) if args.targets else None,
        images_per_target=args.images_per_target, attack=attack, ranking_file=args.ranking_file,
        train_size=args.train_size, val_size=args.val_size, seed=args.seed, batch_size=args.batch_size,
        devices=args.devices, outdir=args.outdir, weights=args.weights, examples=args.examples,
        delta_threshold=args.delta_threshold, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    parallel.initialize_from_flags(args)
    cli.check_devices(args.devices)
    result = run_experiment(config_from_args(args), model=args.loaded_model)
    if not parallel.is_primary():  # one summary per run, from process 0
        return 0
    s = result.summary["all"]
    print(f"{result.model} {result.layer}, {result.attack['name']}: {s['succeeded']}/{s['attacked']} targeted "
          f"attacks succeeded ({s['success_rate']:.1%}); mean L2 {s['mean_l2']:.4f}, mean Linf {s['mean_linf']:.4f}")
    print("mean |peak activation change| (99% interval):")
    for g in ("target", "source", "other"):
        v = s["groups"][g]
        print(f"  {g:>6} units: {v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}] over {v['n']} image-units")
    print(f"results in {result.directory}")
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
