"""Benchmark: dissection pass-1 throughput on 1, 2, 4 ... devices of the same kind, and the
share of step time spent merging per-device statistics with collectives.

The per-batch step (forward + quantile sketch + top-k) never communicates; the merge is one
collective at each checkpoint and at the end. On simulated CPU devices (the default when no
accelerator is present: `--simulate 4`) this shows overhead only, since the devices share the
same cores; run it unchanged on a GPU or TPU machine for real scaling.

    python scripts/bench_scaling.py [--model toy_classifier] [--batch-per-device 8] [--steps 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from jaxdissect import cli  # imports jax, but no backend starts before XLA_FLAGS is set below

PROG = "bench_scaling.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier (random weights are used)")
    p.add_argument("--batch-per-device", type=cli.positive_int, default=8, help="images per device per step")
    p.add_argument("--steps", type=cli.positive_int, default=10, help="timed steps per device count (median kept)")
    p.add_argument("--simulate", type=cli.positive_int, default=4,
                   help="simulated CPU devices when there is no accelerator (and XLA_FLAGS does not set them)")
    args = p.parse_args(argv)
    args.model = cli.check_model(p, "--model", args.model, ("classifier",)).name
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.simulate}").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdissect import parallel
    from jaxdissect.capturing import capture_fn
    from jaxdissect.dissect import steps
    from jaxdissect.models.registry import get_spec
    from jaxdissect.upsample import upsampler

    spec = get_spec(args.model)
    module = spec.build(spec.default_config)
    h, w = spec.input_size
    x0 = jnp.zeros((1, h, w, 3))
    variables = jax.jit(module.init)(jax.random.key(0), x0)
    layer = spec.default_layer
    forward = capture_fn(module, (layer,))
    _, acts = jax.eval_shape(forward, variables, x0, {})
    units, data_hw = acts[layer].shape[-1], acts[layer].shape[1:3]
    up = upsampler((h // 4, w // 4), data_hw)

    def per_device(state, variables, images, indices, ok):
        _, a = forward(variables, images, {})
        return {layer: steps.update_activation_stats(state[layer], a[layer], up, indices, ok)}

    counts = [n for n in (1, 2, 4, 8, 16) if n <= jax.device_count()]
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; model {args.model} ({layer}: {units} units), "
          f"{args.batch_per_device} images per device per step, {args.steps} steps, median step time")
    base = None
    for n in counts:
        mesh = parallel.make_mesh(n)
        batch = args.batch_per_device * n
        rows = parallel.local_rows(mesh, batch)
        rng = np.random.default_rng(0)
        images = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
        arrays = [parallel.assemble(mesh, rows, a, batch)
                  for a in (images, np.arange(batch, dtype=np.int32), np.ones(batch, bool))]
        empty = {layer: steps.ActivationStats.create(units, k=100)}
        state = {layer: steps.place_first(empty[layer], empty[layer], mesh)}
        step = steps.sharded_pass(per_device, mesh, 3)
        rep = parallel.replicate(mesh, variables)
        state = jax.block_until_ready(step(state, rep, *arrays))  # compile
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            state = jax.block_until_ready(step(state, rep, *arrays))
            times.append(time.perf_counter() - t)
        jax.block_until_ready(steps.merge_over_mesh(state, mesh))  # compile
        merge_times = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(steps.merge_over_mesh(state, mesh))
            merge_times.append(time.perf_counter() - t)
        step_t, merge_t = float(np.median(times)), float(np.median(merge_times))
        rate = batch / step_t
        base = base or rate
        share = merge_t / (merge_t + 25 * step_t)  # one merge per 25-batch checkpoint, as the pipeline does
        print(f"  {n} device(s): {rate:8.1f} img/s  (x{rate / base:.2f} of 1 device)  step {step_t * 1e3:7.1f} ms  "
              f"merge {merge_t * 1e3:7.1f} ms = {share:.1%} of a checkpoint interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
