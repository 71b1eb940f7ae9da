"""Benchmark: the full single-unit ablation sweep of a layer next to (units x one forward pass).

Both run in this process on the same images, already on the devices, through the same sharded
step machinery: the forward is the whole network once per batch (plus the per-class counts),
the sweep captures the layer once per batch and runs only the network's tail for every unit's
mask (units + 1 masks: the baseline too). The sweep through `evaluate_masks` (host batches,
prefetch) is timed as well. Prints the times and the ratio sweep / (units x forward).

    python scripts/bench_ablation.py [--model toy_classifier] [--sample-size 200]
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import cli
from jaxdissect.models import get_spec, load
from jaxdissect.models.registry import LoadedModel
from jaxdissect import parallel
from jaxdissect.dissect import steps
from jaxdissect.data import sources
from jaxdissect.dissect.run import resolve_layers
from jaxdissect.experiments import classifier_ablation as ca
from jaxdissect.experiments.class_metrics import ClassCounts
from jaxdissect.experiments.sweep import tail_function

PROG = "bench_ablation.py"


def _model(name: str, weights: str | None):
    """The model; a toy model whose trained weights are not there yet gets random weights."""
    try:
        return load(name, weights), "trained"
    except (FileNotFoundError, ValueError) as e:
        if not name.startswith("toy_"):
            raise
        spec = get_spec(name)
        module = spec.build(spec.default_config)
        variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, *spec.input_size, 3)))
        print(f"note: {name} weights unavailable ({e}); timing random weights")
        return LoadedModel(spec.name, spec.kind, module, variables, dict(spec.default_config), spec.input_size,
                           spec.normalization, spec.default_layer, spec.layer_names,
                           tuple(spec.labels()) if spec.labels else None), "random"


def _time(fn, repeats: int) -> float:
    fn()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked before any work (a bad one exits 2 with a one-line message)."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_classifier", help="registered classifier")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (default: packaged/cached; a toy "
                   "model without its weights gets random ones)")
    p.add_argument("--layer", default=None, help="layer whose units are ablated (default: the model's default)")
    p.add_argument("--sample-size", type=cli.positive_int, default=200, help="val scenes")
    p.add_argument("--batch-size", type=cli.positive_int, default=50, help="images per batch (all devices)")
    p.add_argument("--mask-chunk", type=cli.positive_int, default=32, help="masks evaluated at once per device")
    p.add_argument("--devices", type=cli.positive_int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed runs after the warm-up (best kept)")
    args = p.parse_args(argv)
    spec = cli.check_model(p, "--model", args.model, ("classifier",))
    cli.check_existing(p, "--weights", args.weights)
    cli.check_layers(p, "--layer", spec, [args.layer] if args.layer else None, args.weights)
    args.model = spec.name
    return args


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    cli.check_devices(args.devices)

    model, kind = _model(args.model, args.weights)
    [layer] = resolve_layers(model, (args.layer,) if args.layer else ())
    mesh = parallel.make_mesh(args.devices)
    batch_size = parallel.padded_batch_size(args.batch_size, mesh)
    source = sources.ScenesSource(args.sample_size, split="val", image_size=model.input_size[0])
    ranges = sources.batch_ranges(len(source), batch_size)
    rows = parallel.local_rows(mesh, batch_size)
    positions = np.concatenate([r for _, r in rows])
    host = list(sources.prefetch(source, ranges, positions))
    batches = [[parallel.assemble(mesh, rows, a, batch_size) for a in (b.inputs, b.labels.astype(np.int32), b.ok)]
               for b in host]
    example = model.abstract_input()
    units = int(jax.eval_shape(ca.layer_forward(model, layer), model.variables, example).shape[-1])
    classes = int(jax.eval_shape(model.module.apply, model.variables, example).shape[-1])
    masks = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
    model_input = ca.model_input_function(model)

    def forward_step(counts, variables, inputs, labels, ok):
        return counts.update(jnp.argmax(model.module.apply(variables, model_input(inputs)), -1), labels, ok)

    fwd = steps.sharded_pass(forward_step, mesh, 3)
    sweep = steps.sharded_pass(ca.mask_counts_step(ca.layer_forward(model, layer), tail_function(model, layer),
                                                   model_input, args.mask_chunk), mesh, 3)
    variables = parallel.replicate(mesh, model.variables)
    replicated = parallel.replicate(mesh, (model.variables, jnp.asarray(masks)))

    def run(step, empty, rep):
        state = steps.place_first(empty, empty, mesh)
        for b in batches:
            state = step(state, rep, *b)
        jax.block_until_ready(state)
        return state

    t_fwd = _time(lambda: run(fwd, ClassCounts.create(classes), variables), args.repeats)
    t_sweep = _time(lambda: run(sweep, ca.MaskTally.create(len(masks), classes), replicated), args.repeats)
    t_eval = _time(lambda: ca.evaluate_masks(model, layer, source, masks, classes, mesh=mesh, batch_size=batch_size,
                                             chunk=args.mask_chunk), 1)
    print(f"{model.name} ({kind} weights) {layer}: {units} units, {len(source)} images, batch {batch_size}, "
          f"{mesh.size} {jax.devices()[0].platform} device(s)")
    print(f"one forward pass over the images:         {t_fwd:8.3f} s")
    print(f"units x forward (the naive sweep):        {units * t_fwd:8.3f} s")
    print(f"single-unit sweep ({len(masks)} masks, on device): {t_sweep:8.3f} s  "
          f"= {t_sweep / t_fwd:.1f} forward passes")
    print(f"same through evaluate_masks (host data):  {t_eval:8.3f} s")
    print(f"ratio sweep / (units x forward):          {t_sweep / (units * t_fwd):8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
