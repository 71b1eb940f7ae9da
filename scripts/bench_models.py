"""Benchmark: jitted JAX forward of vgg16_places next to the PyTorch CPU forward of the same weights.

Random weights go through the real conversion path (torch module -> torch.save -> convert ->
models.load), then both run batch after batch on the same input; medians of several repeats.

    python scripts/bench_models.py [--batch 16] [--repeats 5]

torch is needed here (it is a benchmark, not library code).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from jaxdissect import cli
import jaxdissect
from jaxdissect import models
from jaxdissect.models import convert_checkpoint

PROG = "bench_models.py"


def _torch_vgg16(num_classes: int = 365):
    """The original's VGG16 layout (torchvision vgg16 with research names), in plain torch.nn."""
    import collections

    import torch.nn as nn

    feats, in_ch = [], 3
    for stage, n, ch in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for i in range(1, n + 1):
            feats += [(f"conv{stage}_{i}", nn.Conv2d(in_ch, ch, 3, padding=1)), (f"relu{stage}_{i}", nn.ReLU(True))]
            in_ch = ch
        feats.append((f"pool{stage}", nn.MaxPool2d(2, 2)))
    classifier = [("fc6", nn.Linear(512 * 7 * 7, 4096)), ("relu6", nn.ReLU(True)), ("drop6", nn.Dropout()),
                  ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU(True)), ("drop7", nn.Dropout()),
                  ("fc8a", nn.Linear(4096, num_classes))]

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(collections.OrderedDict(feats))
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(collections.OrderedDict(classifier))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return VGG().eval()


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--batch", type=cli.positive_int, default=16, help="images per forward")
    p.add_argument("--repeats", type=cli.positive_int, default=5, help="timed forwards per side (median kept)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    import torch


    torch.manual_seed(0)
    net = _torch_vgg16()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        torch.save(net.state_dict(), f"{tmp}/vgg16_random.pth", _use_new_zipfile_serialization=False)
        folder = convert_checkpoint("vgg16_places", f"{tmp}/vgg16_random.pth", f"{tmp}/weights")
        model = models.load("vgg16_places", weights=folder)
        print(f"convert + load: {time.perf_counter() - t:.1f} s")

    h, w = model.input_size
    x = np.random.default_rng(0).normal(size=(args.batch, h, w, 3)).astype(np.float32)
    xj = jax.device_put(x)
    x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    net_cl = _torch_vgg16()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)

    t = time.perf_counter()
    y_jax = np.asarray(jaxdissect.capture(model, xj)[0])
    print(f"jit compile + first run: {time.perf_counter() - t:.1f} s")
    with torch.no_grad():
        y_torch = net(x_nchw).numpy()
    err = np.abs(y_jax - y_torch).max() / np.abs(y_torch).max()
    print(f"max |jax - torch| / max |torch| = {err:.2e}")

    def run_jax():
        jax.block_until_ready(jaxdissect.capture(model, xj)[0])

    def run_torch(module, inp):
        def f():
            with torch.no_grad():
                module(inp)
        return f

    results = {
        "jax jit (NHWC)": _median_seconds(run_jax, args.repeats),
        "torch (NCHW)": _median_seconds(run_torch(net, x_nchw), args.repeats),
        "torch (channels_last)": _median_seconds(run_torch(net_cl, x_cl), args.repeats),
    }
    print(f"\nvgg16_places forward, batch {args.batch}, {h}x{w}, median of {args.repeats} "
          f"(jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads)")
    jax_ips = args.batch / results["jax jit (NHWC)"]
    for name, sec in results.items():
        ips = args.batch / sec
        print(f"  {name:24s} {ips:7.2f} img/s   ({sec:.2f} s/batch)   jax/this = {jax_ips / ips:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
