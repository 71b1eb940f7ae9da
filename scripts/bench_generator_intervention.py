"""Benchmark: the insertion experiment (every location of the layer) next to the bare generator
and segmenter forward passes it needs, in one run.

Per image, the insertion needs one generator forward and one segmentation of the original,
then one regeneration and one segmentation per layer location. The experiment regenerates
from the layer onward only (the tail), vmapped over locations, sharded over devices, and
tallies conditional statistics. The bare reference runs the full jitted generator and the
segmenter on batches of the same size, (1 + locations) times per image, with nothing else.

    python scripts/bench_generator_intervention.py [--model toy_generator] [--samples 16]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import cli
from jaxdissect import parallel
from jaxdissect.data import sources
from jaxdissect.dissect.run import make_segmenter
from jaxdissect.experiments import generator_intervention as gi
from jaxdissect.models import load

PROG = "bench_generator_intervention.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_generator", help="registered generator")
    p.add_argument("--layer", default=None, help="default: the toy model's default layer, layer4 otherwise")
    p.add_argument("--seg", default=None, help="toy or net[p][q][c] (default: toy for toy models, netpqc otherwise)")
    p.add_argument("--samples", type=cli.positive_int, default=16, help="images in the timed insertion run")
    p.add_argument("--batch-size", type=cli.positive_int, default=8, help="z per batch (all devices)")
    p.add_argument("--chunk", type=cli.positive_int, default=8, help="edited images regenerated together")
    p.add_argument("--units", type=cli.positive_int, default=20, help="units switched on together")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    args = p.parse_args(argv)
    spec = cli.check_model(p, "--model", args.model, ("generator",))
    cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None)
    cli.check_seg(p, "--seg", args.seg)
    args.model = spec.name
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    cli.check_devices(args.devices)

    model = load(args.model)
    layer = args.layer or (model.default_layer if model.name.startswith("toy_") else "layer4")
    segmenter, _ = make_segmenter(args.seg or ("toy" if model.name.startswith("toy_") else "netpqc"), None)
    fns = gi.GeneratorFns(model, layer, segmenter)
    mesh = parallel.make_mesh(args.devices)
    batch = parallel.padded_batch_size(args.batch_size, mesh)
    units = np.arange(min(args.units, fns.num_units))
    stack = gi.insertion_stack(units, np.full(len(units), 3.0, np.float32), fns.num_units, fns.layer_hw)
    locations = fns.layer_hw[0] * fns.layer_hw[1]
    L = fns.num_labels
    empty = {"baseline": gi.Moments.create(L), "context": gi.Moments.create(L * L)}
    out = tempfile.mkdtemp(prefix="bench-gi-")
    try:
        def experiment(n, name):
            runner = gi.PassRunner(out, mesh, batch, checkpoint_every=10 ** 9, progress=False)
            start = time.perf_counter()
            runner.run(name, gi.insertion_step(fns, args.chunk), empty, (model.variables, stack),
                       sources.ZSource(n, int(model.z_dim)), {})
            return time.perf_counter() - start

        experiment(batch, "warm")  # compile
        t_exp = experiment(args.samples, "timed")

        gen = jax.jit(lambda v, z: model.module.apply(v, z))
        seg = jax.jit(fns.segment)
        z = jnp.asarray(sources.ZSource(batch, int(model.z_dim)).z)
        jax.block_until_ready(seg(gen(model.variables, z)))  # compile
        n_batches = -(-args.samples // batch)
        start = time.perf_counter()
        for _ in range(n_batches * (1 + locations)):
            jax.block_until_ready(seg(gen(model.variables, z)))
        t_bare = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = args.samples
    print(f"devices: {jax.devices()}")
    print(f"{model.name} {layer} ({fns.layer_hw[0]}x{fns.layer_hw[1]} = {locations} locations, {fns.num_units} units), "
          f"images {fns.image_hw}, segmentation {fns.seg_hw}, {n} samples, batch {batch}, chunk {args.chunk}")
    print(f"  insertion experiment: {t_exp:8.2f} s  {n / t_exp:8.3f} images/s  "
          f"({n * locations / t_exp:.1f} regenerated+segmented images/s)")
    print(f"  bare forwards needed: {t_bare:8.2f} s  {n / t_bare:8.3f} images/s  "
          f"({n_batches * batch * (1 + locations)} full generator + segmenter passes)")
    print(f"  ratio experiment / bare: {t_exp / t_bare:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
