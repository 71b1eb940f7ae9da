"""Adversarial attacks seen through units (the paper's adversarial experiment) from the command line.

With no arguments it attacks the embedded toy classifier on the scenes world, towards each scene
class in turn: images whose true and predicted class are not the target are attacked with a
targeted Carlini-Wagner L2 attack, and the change of every unit's peak activation at the dissected
layer is compared for the target's 4 most important units, the source class's 4, and the rest
(importance = single-unit ablation on the train split, shared with intervene_classifier.py).
`--model vgg16_places --dataset places` reproduces the paper (targets bedroom, computer_room,
hangar-indoor, ski_resort, volleyball_court-outdoor; 1000 images each). The attacks are
checkpointed as they go and each target's are kept when finished; a killed run continues.

    python scripts/adversarial.py
    python scripts/adversarial.py --attack pgd_linf --epsilon 0.01 --images-per-target 50
    python scripts/adversarial.py --model vgg16_places --dataset places --layer conv5_3
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jaxdissect import cli, config_flags, parallel
from jaxdissect.compilation_cache import enable_compilation_cache
from jaxdissect.experiments.adversarial import FAST_CW, AdversarialConfig, run_experiment
from jaxdissect.experiments.attacks import attack_config
from jaxdissect.models.flags import add_model_flags

PROG = "adversarial.py"
CW_FLAGS = ("binary_search_steps", "learning_rate", "initial_const", "confidence", "no_abort_early")
PGD_FLAGS = ("epsilon", "rel_stepsize", "no_random_start")


def add_attack_flags(p: argparse.ArgumentParser) -> None:
    """--attack and the attacks' own settings (CWConfig / PGDConfig), flags of this script."""
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


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message). The
    experiment's flags, their defaults and help come from AdversarialConfig, which checks its own
    values; the attack's are this script's."""
    p = cli.ArgumentParser.from_doc(PROG, __doc__)
    config_flags.add_config_flags(p, AdversarialConfig)
    add_attack_flags(p)
    add_model_flags(p)
    parallel.add_distributed_flags(p)
    args = p.parse_config_args(argv, config_from_args)  # the config checks its own values
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


def attack_from_args(args: argparse.Namespace, dataset: str):
    """The attack's config: the flags given over the defaults (FAST_CW's for the scenes world)."""
    if args.attack == "cw":
        base = dataclasses.asdict(FAST_CW) if dataset == "scenes" else {}
        given = dict(binary_search_steps=args.binary_search_steps, steps=args.steps, learning_rate=args.learning_rate,
                     initial_const=args.initial_const, confidence=args.confidence,
                     abort_early=False if args.no_abort_early else None)
        return attack_config("cw", **{**base, **{k: v for k, v in given.items() if v is not None}})
    return attack_config(args.attack, epsilon=args.epsilon, steps=args.steps, rel_stepsize=args.rel_stepsize,
                         random_start=False if args.no_random_start else None)


def config_from_args(args: argparse.Namespace) -> AdversarialConfig:
    """The config of the parsed flags (the original's model names resolved, the model's default dataset)."""
    config = config_flags.config_from_args(AdversarialConfig, args, attack=AdversarialConfig().attack)
    return dataclasses.replace(config, attack=attack_from_args(args, config.dataset))


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
    enable_compilation_cache()
    sys.exit(main())
