"""Benchmark: attacked images per second for CW-L2 and PGD (L2, L-inf) with fixed step counts.

Runs on whatever devices JAX sees (CPU here), with the batch split over all of them. CW runs
without early abort so every image takes exactly binary_search_steps x steps gradient steps;
the numbers do not depend on the weights, so a random-weight model stands in when the packaged
weights are missing.

    python scripts/bench_attacks.py
    python scripts/bench_attacks.py --model vgg16_places --batch 16 --cw-steps 10 --pgd-steps 10
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from jaxdissect import cli
from jaxdissect.models import load
from jaxdissect.models.loading import get_spec
from jaxdissect.models.registry import LoadedModel
from jaxdissect import parallel
from jaxdissect.experiments import attacks

PROG = "bench_attacks.py"


def load_model(name: str):
    import jax
    import jax.numpy as jnp


    try:
        return load(name), "trained"
    except (FileNotFoundError, ValueError):
        spec = get_spec(name)
        module = spec.build(spec.default_config)
        variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, *spec.input_size, 3)))
        labels = tuple(spec.labels()) if spec.labels else None
        return LoadedModel(spec.name, spec.kind, module, variables, dict(spec.default_config), spec.input_size,
                           spec.normalization, spec.default_layer, tuple(spec.layer_names), labels), "random"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (random weights without its "
                   "weights)")
    p.add_argument("--batch", type=cli.positive_int, default=8, help="images attacked at once (all devices)")
    p.add_argument("--cw-steps", type=cli.positive_int, default=20, help="Adam steps per binary-search round")
    p.add_argument("--binary-steps", type=cli.positive_int, default=1, help="CW binary-search rounds")
    p.add_argument("--pgd-steps", type=cli.positive_int, default=20, help="PGD iterations")
    p.add_argument("--repeats", type=cli.positive_int, default=2, help="timed runs after the first (best kept)")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    args = p.parse_args(argv)
    args.model = cli.check_model(p, "--model", args.model, ("classifier",)).name
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    cli.check_devices(args.devices)
    import jax
    import numpy as np


    model, weights = load_model(args.model)
    mesh = parallel.make_mesh(args.devices)
    batch = parallel.padded_batch_size(args.batch, mesh)
    P = jax.sharding.PartitionSpec
    forward = attacks.model_forward(model)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, *model.input_size, 3)).astype(np.float32)
    classes = int(jax.eval_shape(forward, model.variables, images[:1]).shape[-1])
    targets = (np.arange(batch) % classes).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), batch)
    variables = parallel.replicate(mesh, model.variables)
    x, t, k = parallel.shard_batch(mesh, images, targets, keys)
    configs = {
        "cw_l2": (attacks.CWConfig(binary_search_steps=args.binary_steps, steps=args.cw_steps, abort_early=False),
                  args.binary_steps * args.cw_steps),
        "pgd_l2": (attacks.PGDConfig(norm="l2", steps=args.pgd_steps), args.pgd_steps),
        "pgd_linf": (attacks.PGDConfig(norm="linf", steps=args.pgd_steps), args.pgd_steps),
    }
    print(f"{model.name} ({weights} weights), {model.input_size[0]}x{model.input_size[1]}, batch {batch} on "
          f"{mesh.size} {jax.devices()[0].platform} device(s)")
    results = {}
    for name, (cfg, steps) in configs.items():
        fn = jax.jit(jax.shard_map(attacks.make_attack(forward, cfg), mesh=mesh,
                                   in_specs=(P(), P("data"), P("data"), P("data")), out_specs=P("data"),
                                   check_vma=False))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(variables, x, t, k))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = jax.block_until_ready(fn(variables, x, t, k))
            times.append(time.perf_counter() - t0)
        best = min(times)
        results[name] = {"steps_per_image": steps, "images_per_s": batch / best,
                         "gradient_steps_per_s": batch * steps / best, "first_call_s": compile_s,
                         "success_rate": float(np.mean(np.asarray(r.success)))}
        print(f"{name:>8}: {steps} steps/image, {batch / best:.3f} images/s, {batch * steps / best:.1f} "
              f"gradient steps/s (first call incl. compile {compile_s:.1f} s)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
