"""Benchmark of the streaming statistics, side by side with the forward pass they accompany.

Measures, in one run on the same data: the jitted per-batch update of QuantileSketch and
IoUTally for a VGG16 conv5_3-shaped batch (--batch images, 10 by default: 512 units upsampled to 56x56 = 31,360
rows) and the jitted VGG16 forward of that batch (random weights). Prints medians and the
ratios (goal: each update <= 10% of the forward), then the sketch's accuracy on adversarial
streams and its state size.

    python scripts/bench_stats.py [--repeats 7] [--accuracy-n 2000000]
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import cli, stats
from jaxdissect.stats.accuracy import STREAM_NAMES, adversarial_streams, max_rank_errors
from jaxdissect.models.registry import get_spec


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


PROG = "bench_stats.py"


def vgg16_forward(batch: int = 10):
    """A jitted VGG16 (the registered vgg16_places module) with random weights."""
    spec = get_spec("vgg16_places")
    module = spec.build(spec.default_config)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 224, 224, 3)).astype(np.float32))
    variables = jax.jit(module.init)(jax.random.key(0), x)
    return jax.jit(module.apply), (variables, x)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--repeats", type=cli.positive_int, default=7, help="timed runs of each (median kept)")
    p.add_argument("--resolution", type=cli.power_of_two(1, 65536), default=128,
                   help="QuantileSketch bins per power of two")
    p.add_argument("--num-labels", type=cli.int_at_least(2), default=1200, help="segmentation labels for IoUTally")
    p.add_argument("--accuracy-n", type=cli.int_at_least(16), default=2_000_000,
                   help="values per unit for the accuracy check")
    p.add_argument("--batch", type=cli.positive_int, default=10,
                   help="images of the conv5_3-shaped batch (56 x 56 x 512 rows each) and of the forward")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    n = args.batch
    rows = jnp.asarray(np.maximum(rng.normal(size=(n * 56 * 56, 512)), 0).astype(np.float32))
    indicator = rows.reshape(n, 56, 56, 512) > 1.5
    labels = jnp.asarray(rng.integers(0, args.num_labels, size=(n, 6, 56, 56)).astype(np.int32))

    forward, forward_args = vgg16_forward(n)
    sketch_update = jax.jit(lambda s, x: s.update(x), donate_argnums=0)
    iou_update = jax.jit(lambda s, i, l: s.update(i, l), donate_argnums=0)

    def steady_state(update, state, *batch) -> float:
        """Median time of one update of a carried (donated) state, as inside a pass."""
        state = jax.block_until_ready(update(state, *batch))  # compile + warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state = jax.block_until_ready(update(state, *batch))
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    results = {"forward": median_time(forward, *forward_args, repeats=args.repeats),
               "sketch": steady_state(sketch_update, stats.QuantileSketch.create(512, args.resolution), rows),
               "iou": steady_state(iou_update, stats.IoUTally.create(512, args.num_labels), indicator, labels)}
    fwd, sketch, iou = results["forward"], results["sketch"], results["iou"]
    print(f"devices: {jax.devices()}")
    print(f"median of {args.repeats} runs, same process, same data")
    print(f"  vgg16 forward, batch {n} at 224: {fwd * 1e3:8.1f} ms")
    print(f"  QuantileSketch.update {n * 56 * 56:,} x 512 (resolution {args.resolution}): {sketch * 1e3:8.1f} ms "
          f"= {sketch / fwd:.1%} of the forward")
    print(f"  IoUTally.update {n}x56x56x512 vs 6 channels, {args.num_labels} labels: {iou * 1e3:8.1f} ms "
          f"= {iou / fwd:.1%} of the forward")

    data = adversarial_streams(args.accuracy_n)
    sketch_state = stats.QuantileSketch.create(data.shape[1], args.resolution)
    for chunk in np.array_split(data, 16):
        sketch_state = sketch_state.update(chunk)
    qs = (0.5, 0.99, 0.995)
    errors = max_rank_errors(np.sort(data, axis=0), np.asarray(sketch_state.quantiles(qs)), qs)
    print(f"accuracy: rank error (fraction of n) on {args.accuracy_n:,} values per stream")
    print("  " + " ".join(f"{'q=' + str(q):>10}" for q in qs) + "  stream")
    for name, row in zip(STREAM_NAMES, errors):
        print("  " + " ".join(f"{e:10.2e}" for e in row) + f"  {name}")
    print(f"  worst: {errors.max(0)}  (bounds 5e-4, 1e-4, 1e-4)")
    print(f"state size: {sketch_state.state_bytes_per_unit:,} bytes per unit (resolution {args.resolution})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
