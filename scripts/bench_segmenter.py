"""Images/s of the UPP segmenter at 256x256 (--size) on CPU: the jitted JAX port next to the PyTorch
reference (tests/torch_segmenters.py) on the same random weights, in one run.

Two numbers per side: the network forward alone (preprocessed 256x256 input -> head logits) and
the whole segment() (preprocessing, probabilities, label maps, quad division) at downsample 4.
The reference's precise RoI pooling and connected components are plain Python loops, so its
segment() figure includes that overhead; the forward figure compares the networks only.

    python scripts/bench_segmenter.py --batch 4 --iters 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402  (benchmark only: compares against the PyTorch reference)
import torch_segmenters as ref  # noqa: E402

from bench_common import synthetic_upp_labels  # noqa: E402
from jaxdissect import cli  # noqa: E402
from jaxdissect.segment.upp import UnifiedParsingSegmenter  # noqa: E402

PROG = "bench_segmenter.py"


def timed(fn, iters: int) -> float:
    fn()  # warm up (compiles the JAX side)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--batch", type=cli.positive_int, default=4, help="images per call")
    p.add_argument("--iters", type=cli.positive_int, default=3, help="timed calls after one warm-up (mean kept)")
    p.add_argument("--threads", type=cli.positive_int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--size", type=cli.int_multiple_of(32, 32), default=256,
                   help="image side (the paper's 256; smaller for a quick check)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    labels = synthetic_upp_labels()
    model = ref.build_upp(labels, seed=0)
    enc, dec = ref.state_dicts(model)
    size = args.size
    seg = UnifiedParsingSegmenter.from_state_dicts(enc, dec, labels, segdiv="quad", all_parts=True, segsizes=(size,))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32)
    x = rng.normal(0, 60, (args.batch, size, size, 3)).astype(np.float32)
    xj, ij = jnp.asarray(x), jnp.asarray(images)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def jax_forward():
        jax.block_until_ready(seg.logits(seg.variables, xj))

    def torch_forward():
        with torch.no_grad():
            model(xt)

    def jax_segment():
        jax.block_until_ready(seg.segment(ij, 4))

    def torch_segment():
        ref.upp_reference(model, labels, images, 4, (size,), True, True)

    n = args.batch
    print(f"UPP segmenter, {n} images of {size}x{size}, CPU ({jax.devices()[0].device_kind}), "
          f"torch threads {args.threads}, {args.iters} timed iterations after one warm-up")
    for name, fn in [("forward  jax (jit)", jax_forward), ("forward  torch", torch_forward),
                     ("segment  jax (jit)", jax_segment), ("segment  torch reference", torch_segment)]:
        s = timed(fn, args.iters)
        print(f"{name:28s} {n / s:7.2f} images/s   ({s:.2f} s per batch)")
    agree = np.mean(np.asarray(seg.segment(ij, 4)) == ref.upp_reference(model, labels, images, 4, (size,), True,
                                                                         True)[3])
    print(f"label maps agree on {100 * agree:.3f}% of entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
