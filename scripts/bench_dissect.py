"""Benchmark: a whole dissection next to the bare forward passes it needs, in one run.

The dissection (passes 1 and 2, thumbnails, reports; data generation or loading included) is
timed end to end after a warm-up run that compiles everything. The bare reference runs the same
jitted forwards on the same images already in memory: the model twice per image (one forward
per pass), the segmenter once per image (none for exact labels), and the model once per
thumbnail image. Prints both and the ratio (goal: at most 1.15).

    python scripts/bench_dissect.py [--model toy_classifier] [--sample-size 1000]
    python scripts/bench_dissect.py --model vgg16_places --random-weights --seg random-netpq --sample-size 100

`--seg random-netpq` is the paper's segmenter configuration (UPP with parts and quadrants, the
published network sizes) with random weights, for measuring without the download.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from bench_common import random_model, random_upp_segmenter
from jaxdissect import cli

PROG = "bench_dissect.py"


def statistics_time(setup, batches, model_forward, result, repeats: int) -> float:
    """Median seconds of the jitted statistics updates of both passes over all batches, with the
    layer activations (and segmentations) already computed: what the passes add to the forwards."""
    import jax.numpy as jnp

    from jaxdissect import stats
    from jaxdissect.dissect import steps

    layer = setup.layers[0]
    up = setup.upsamplers[layer]
    thresholds = jnp.asarray(result.thresholds)
    inputs = []
    for b in batches:
        out, acts = model_forward(setup.model.variables, b.inputs)
        seg = (setup.ground_truth(b) if setup.segmenter is None
               else setup.segmenter.segment(setup.seg_images(b.inputs, out), setup.downsample))
        inputs.append((acts[layer], jnp.asarray(seg), jnp.asarray(b.indices), jnp.asarray(b.ok)))
    jax.block_until_ready(inputs)
    pass1 = jax.jit(lambda s, a, i, ok: steps.update_activation_stats(s, a, up, i, ok), donate_argnums=0)
    pass2 = jax.jit(lambda t, a, seg, ok: steps.update_iou(t, a, up, thresholds, seg, ok), donate_argnums=0)

    def run():
        s1 = steps.ActivationStats.create(setup.units[layer], setup.config.topk, setup.config.resolution)
        s2 = stats.IoUTally.create(setup.units[layer], len(setup.labels))
        for acts, seg, idx, ok in inputs:
            s1 = pass1(s1, acts, idx, ok)
            s2 = pass2(s2, acts, seg, ok)
        jax.block_until_ready((s1, s2))

    run()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier or generator")
    p.add_argument("--dataset", default="scenes", help="classifiers: 'scenes', 'places', a folder of images or "
                   "tfds:NAME[:SPLIT]")
    p.add_argument("--seg", default=None, help="scenes, toy, net[p][q][c], or random-netpq (the paper's UPP with "
                   "random weights); default: the dissection's")
    p.add_argument("--sample-size", type=cli.positive_int, default=1000, help="samples of each timed dissection")
    p.add_argument("--batch-size", type=cli.positive_int, default=10, help="samples per batch")
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed runs (median kept)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights from the model's spec (e.g. vgg16_places without its download)")
    args = p.parse_args(argv)
    args.model = cli.check_model(p, "--model", args.model, ("classifier", "generator")).name
    cli.check_dataset(p, "--dataset", args.dataset, ("scenes", "places"))
    if args.seg != "random-netpq":
        cli.check_seg(p, "--seg", args.seg, scenes=True)
    if args.seg == "scenes" and args.dataset != "scenes":
        p.fail("--seg", "scenes (the exact labels) needs --dataset scenes")
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    from jaxdissect.dissect import DissectConfig, dissect, pipeline, sources

    model = random_model(args.model) if args.random_weights else None
    segmenter = None
    if args.seg == "random-netpq":
        segmenter, args.seg = random_upp_segmenter(), "netpq"

    out = tempfile.mkdtemp(prefix="bench-dissect-")
    base = DissectConfig(model=args.model, dataset=args.dataset, seg=args.seg, batch_size=args.batch_size,
                         progress=False, outdir=out)
    try:
        import dataclasses

        dissect(dataclasses.replace(base, sample_size=2 * args.batch_size, outdir=os.path.join(out, "warm")), model=model,
                segmenter=segmenter)
        totals, thumbs = [], 0
        for r in range(args.repeats):
            cfg = dataclasses.replace(base, sample_size=args.sample_size, outdir=os.path.join(out, f"run{r}"))
            start = time.perf_counter()
            [result] = dissect(cfg, model=model, segmenter=segmenter)
            totals.append(time.perf_counter() - start)
            top = result.topk_indices[:, :cfg.strip_images]
            thumbs = len(np.unique(top[top >= 0]))

        setup = pipeline._Setup(dataclasses.replace(base, sample_size=args.sample_size, outdir=os.path.join(out, "x")),
                                model=model, segmenter=segmenter)
        batches = [setup.source.load(r) for r in sources.batch_ranges(len(setup.source), setup.batch_size)]
        batches = [sources.pad_batch(b, setup.batch_size) for b in batches]

        @jax.jit
        def model_forward(variables, inputs):
            out, acts = setup.forward(variables, setup.model_input(inputs))
            return out, acts

        @jax.jit
        def seg_forward(inputs, output):
            return setup.segmenter.segment(setup.seg_images(inputs, output), setup.downsample)

        def bare():
            for b in batches:  # pass 1 and pass 2 model forwards, the segmenter once
                jax.block_until_ready(model_forward(setup.model.variables, b.inputs))
                out, _ = model_forward(setup.model.variables, b.inputs)
                if setup.segmenter is not None:
                    jax.block_until_ready(seg_forward(b.inputs, out))
                jax.block_until_ready(out)
            for b in batches[: -(-thumbs // setup.batch_size)]:  # thumbnail images
                jax.block_until_ready(model_forward(setup.model.variables, b.inputs))

        bare()  # compile
        bare_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bare()
            bare_times.append(time.perf_counter() - start)
        stats_time = statistics_time(setup, batches, model_forward, result, args.repeats)
        total, ref = float(np.median(totals)), float(np.median(bare_times))
        n = len(setup.source)
        print(f"devices: {jax.devices()}")
        print(f"{args.model} on {n} samples ({args.dataset}, seg {setup.seg_name}), batch {setup.batch_size}, "
              f"median of {args.repeats}")
        print(f"  dissection end to end: {total:8.2f} s ({n / total:.1f} samples/s)")
        print(f"  bare forwards it needs: {ref:8.2f} s (2 model + {'1 segmenter' if setup.segmenter else 'no segmenter'}"
              f" per image, {thumbs} thumbnail images)")
        print(f"  ratio: {total / ref:.3f} (goal <= 1.15)")
        print(f"  of which the statistics steps alone (pass-1 sketch + top-k, pass-2 IoU, on activations "
              f"in memory): {stats_time:8.2f} s = {stats_time / ref:.3f} of the bare forwards")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
