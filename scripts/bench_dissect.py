"""Benchmark: a whole dissection against ONE bare forward pass over the same images, in one run.

The reference is the physical minimum: the model's jitted forward (and the segmenter's, where a
segmenter runs) once over every image, images already in memory. Measured side by side, after a
warm-up that compiles everything (JAX's persistent compilation cache, as the scripts use it):
  - the dissection end to end (data loading, every pass, thumbnails, reports), with a fresh
    results folder and a fresh segmentation cache: the ratio to one forward pass (goal <= 1.3);
  - a second dissection of another layer on the same images with the same segmenter (its
    segmentations cached): the ratio to the first (goal <= 0.25);
  - the original's time on the same work, measured on this machine (VGG16 conv5_3, 100 images):
    4.28 of its own forward passes; jaxdissect's ratio over that (goal <= 0.4);
  - the input pipeline alone (images/s, decoding or rendering on its threads) next to the forward's.
Prints medians of --repeats runs.

    python scripts/bench_dissect.py                                   # the toy classifier, 1000 scenes
    python scripts/bench_dissect.py --model vgg16_places --random-weights --seg scenes --sample-size 200
    python scripts/bench_dissect.py --model vgg16_places --random-weights --seg random-netpq --sample-size 100
    python scripts/bench_dissect.py --cache-table vgg16_places        # activation cache sizes per layer
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from bench_common import random_model, random_upp_segmenter
from jaxdissect import cli, parallel
from jaxdissect.array_cache import cache_bytes
from jaxdissect.capturing import layer_shapes
from jaxdissect.compilation_cache import enable_compilation_cache
from jaxdissect.dissect import DissectConfig, dissect
from jaxdissect.data import sources
from jaxdissect.dissect.run import DissectRun, make_source
from jaxdissect.models import get_spec

ORIGINAL_FORWARD_PASSES = 4.28  # the original's dissection / its own forward pass, this machine, VGG16 conv5_3


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def one_forward_pass(run: DissectRun, batches, repeats: int) -> tuple[float, float]:
    """(model seconds, segmenter seconds) of one jitted pass over images already in memory."""
    forward = run.forward_fn()
    variables = parallel.replicate(run.mesh, run.model.variables)
    put = lambda a: jax.device_put(a, jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec("data")))  # noqa: E731
    inputs = [put(b.inputs) for b in batches]
    outs = []

    def model():
        outs.clear()
        for x in inputs:
            outs.append(forward(variables, x)[0])
        jax.block_until_ready(outs)

    model()
    model_s = median_time(model, repeats)
    if run.segmenter is None:
        return model_s, 0.0
    segment = jax.jit(lambda x, out: run.segmenter.segment(run.seg_images(x, out), run.downsample))

    def seg():
        jax.block_until_ready([segment(x, o) for x, o in zip(inputs, outs)])

    seg()
    return model_s, median_time(seg, repeats)


def loader_rate(run: DissectRun, repeats: int) -> float:
    """Images per second of the input pipeline alone (this process's rows, its loader threads),
    each time from a fresh source (no images kept in memory from an earlier read)."""
    positions = np.concatenate([r for _, r in parallel.local_rows(run.mesh, run.batch_size)])

    def load():
        source = make_source(run.config, run.dataset, run.model)
        for _ in sources.prefetch(source, run.ranges(), positions):
            pass

    return run.num_samples / median_time(load, repeats)


def cache_table(name: str, samples: int = 10_000) -> None:
    """Activation cache size of every dissectable layer for `samples` images."""
    model = random_model(name)
    shapes = layer_shapes(model)
    print(f"activation cache of {name} for {samples:,} images (layer resolution, NHWC):")
    print(f"  {'layer':24s} {'shape':>16s} {'float32':>10s} {'bfloat16':>10s}")
    for layer, shape in shapes.items():
        if len(shape) != 4:
            continue
        f32, bf16 = (cache_bytes(samples, shape[1:], d) / 1e9 for d in ("float32", "bfloat16"))
        print(f"  {layer:24s} {str(tuple(shape[1:])):>16s} {f32:8.2f} GB {bf16:8.2f} GB")


PROG = "bench_dissect.py"


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier or generator to dissect")
    p.add_argument("--dataset", default=None, help="classifiers: 'scenes', 'places', a folder of images or "
                   "tfds:NAME[:SPLIT] (default: the model's)")
    p.add_argument("--seg", default=None, help="scenes, toy, net[p][q][c], or random-netpq (the paper's UPP with "
                   "random weights); default: the dissection's")
    p.add_argument("--layer", default=None, help="layer to dissect (default: the model's default layer)")
    p.add_argument("--second-layer", default=None, help="layer of the second dissection (default: the one before)")
    p.add_argument("--sample-size", type=cli.positive_int, default=1000, help="images of each timed dissection")
    p.add_argument("--batch-size", type=cli.positive_int, default=10, help="images per batch")
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed runs per measurement (medians printed)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights from the model's spec (e.g. vgg16_places without its download)")
    p.add_argument("--cache-table", default=None, metavar="MODEL", help="only print MODEL's activation cache sizes")
    args = p.parse_args(argv)
    if args.cache_table:
        cli.check_model(p, "--cache-table", args.cache_table, ("classifier", "generator"))
        return args
    spec = cli.check_model(p, "--model", args.model, ("classifier", "generator"))
    args.model = spec.name
    if args.dataset is not None:
        cli.check_dataset(p, "--dataset", args.dataset, ("scenes", "places"))
    if args.seg != "random-netpq":
        cli.check_seg(p, "--seg", args.seg, scenes=True)
    if args.seg == "scenes" and args.dataset not in (None, "scenes"):
        p.fail("--seg", "scenes (the exact labels) needs --dataset scenes")
    if args.seg == "scenes":
        args.dataset = "scenes"  # the exact labels come with the scenes images, whatever the model's default
    for flag in ("--layer", "--second-layer"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            cli.check_layers(p, flag, spec, [value])
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    if args.cache_table:
        cache_table(args.cache_table)
        return 0
    work = tempfile.mkdtemp(prefix="bench-dissect-")
    os.environ["JAXDISSECT_HOME"] = os.path.join(work, "home")
    enable_compilation_cache(os.path.join(work, "compilation-cache"))
    model = random_model(args.model) if args.random_weights else None
    segmenter, seg = None, args.seg
    if seg == "random-netpq":
        segmenter, seg = random_upp_segmenter(), "netpq"
    spec = get_spec(args.model)
    layer = args.layer or spec.default_layer
    names = [n for n in spec.layer_names if n != layer]
    second = args.second_layer or names[max(0, list(spec.layer_names).index(layer) - 1)]
    base = DissectConfig(model=args.model, dataset=args.dataset, seg=seg, layers=(layer,), batch_size=args.batch_size,
                         sample_size=args.sample_size, progress=False)

    def fresh(tag: str, layers=(layer,), keep_home=False):
        if not keep_home:
            os.environ["JAXDISSECT_HOME"] = os.path.join(work, f"home-{tag}")
        cfg = dataclasses.replace(base, layers=layers, outdir=os.path.join(work, tag))
        start = time.perf_counter()
        [r] = dissect(cfg, model=model, segmenter=segmenter, log=lambda _: None)
        return time.perf_counter() - start, r

    try:
        warm = dataclasses.replace(base, sample_size=2 * args.batch_size, outdir=os.path.join(work, "warm"))
        dissect(warm, model=model, segmenter=segmenter, log=lambda _: None)
        dissect(dataclasses.replace(warm, layers=(second,)), model=model, segmenter=segmenter, log=lambda _: None)
        firsts, seconds, stages = [], [], []
        for r in range(args.repeats):
            t1, res = fresh(f"run{r}")
            t2, _ = fresh(f"run{r}", layers=(second,), keep_home=True)
            firsts.append(t1)
            seconds.append(t2)
            stages.append(res.timings)
        run = DissectRun.create(dataclasses.replace(base, outdir=os.path.join(work, "x")), model, None, segmenter)
        batches = [sources.pad_batch(run.source.load(r), run.batch_size) for r in run.ranges()]
        model_s, seg_s = one_forward_pass(run, batches, args.repeats)
        rate = loader_rate(run, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    one = model_s + seg_s
    first, second_t = float(np.median(firsts)), float(np.median(seconds))
    n = run.num_samples
    ratio = first / one
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; python {sys.version.split()[0]}")
    print(f"{run.model.name}{' (random weights)' if args.random_weights else ''} {layer} on {n} samples "
          f"({run.dataset}, seg {run.seg_name}), batch {run.batch_size}, median of {args.repeats}")
    print(f"  one bare forward pass: {one:8.2f} s  (model {model_s:.2f} s = {n / model_s:.1f} img/s"
          + (f", segmenter {seg_s:.2f} s)" if seg_s else ", no segmenter: exact labels)"))
    print(f"  input pipeline alone: {rate:8.1f} img/s ({sources.LOADER_THREADS} loader threads)")
    print(f"  dissection end to end: {first:8.2f} s = {ratio:.3f} forward passes (goal <= 1.3)")
    keys = ("setup", "activations", "thresholds", "iou", "outputs")
    med = {k: float(np.median([s.get(k, 0.0) for s in stages])) for k in keys}
    print("    stages: " + ", ".join(f"{k} {med[k]:.2f} s ({med[k] / one:.2f})" for k in keys))
    print(f"  second dissection ({second}, segmentations cached): {second_t:8.2f} s = {second_t / first:.3f} of the "
          f"first (goal <= 0.25)")
    print(f"  vs the original (4.28 of its forward passes on this machine): {ratio / ORIGINAL_FORWARD_PASSES:.3f} "
          f"(goal <= 0.4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
