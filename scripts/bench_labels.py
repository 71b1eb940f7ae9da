"""Benchmark and census of the labels beyond one threshold, on the default run's data.

1. Speed: one MultiThresholdTally.update (T = 16 thresholds per unit) against one
   IoUTally.update (one threshold), on a batch of the default run (toy classifier, layer
   conv4_2: 128 units at 16x16 upsampled to 64x64, batch 10, the scenes world's 4 label
   channels), side by side in one process; medians of several runs, wall time and CPU time
   (the CPU time is steadier on a shared machine). Also the whole per-batch step of the IoU
   pass (upsample, threshold, tally), and both passes over the whole run.
2. Census of the default run (1000 val scenes, quantile 0.01): how many units change label
   under each rule against the default 'iou', how many are dead, and how many get a formula
   (beam search, length 3, beam 5) that beats their single label by >= 0.05 IoU.

    python scripts/bench_labels.py [--repeats 7] [--size 1000] [--formula-length 3] [--skip-census]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import stats
from jaxdissect.capturing import capture_fn
from jaxdissect.dissect import labelling
from jaxdissect.dissect.formulas import FormulaTally, search_formulas
from jaxdissect.data.sources import ScenesSource
from jaxdissect.models import load
from jaxdissect.segment.toy import subsample_labels
from jaxdissect.upsample import upsampler

QUANTILE = 0.01  # the default run's --quantile


def timed(fn, state, *args, repeats: int) -> tuple[float, float]:
    """Median (wall, cpu) seconds of state = fn(state, *args), the state carried (and donated)."""
    state = jax.block_until_ready(fn(state, *args))  # compile + warm up
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        state = jax.block_until_ready(fn(state, *args))
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


class DefaultRun:
    """The default run's model, layer, data and upsampling; raw activations kept in memory."""

    def __init__(self, size: int, batch: int = 10):
        self.model = load("toy_classifier")
        self.layer = self.model.default_layer
        self.source = ScenesSource(size=size, image_size=self.model.input_size[0])
        run = capture_fn(self.model.module, (self.layer,))
        norm = self.model.normalization
        mean, std = jnp.asarray(norm["mean"], jnp.float32), jnp.asarray(norm["std"], jnp.float32)
        forward = jax.jit(lambda v, x: run(v, (x.astype(jnp.float32) / 255.0 - mean) / std, {})[1][self.layer])
        acts, segs = [], []
        for start in range(0, size, batch):
            b = self.source.load(range(start, min(size, start + batch)))
            acts.append(np.asarray(forward(self.model.variables, b.inputs)))
            segs.append(subsample_labels(b.segmentation, 2).astype(np.uint8))
        self.acts, self.segs = acts, segs
        self.units = acts[0].shape[-1]
        self.seg_hw = segs[0].shape[2:]
        self.upsample = upsampler(self.seg_hw, acts[0].shape[1:3])
        self.num_labels = len(self.source.labels)

    def batches(self):
        for a, s in zip(self.acts, self.segs):
            yield jnp.asarray(a), jnp.asarray(s.astype(np.int32))


def speed(run: DefaultRun, repeats: int) -> None:
    acts, seg = next(run.batches())
    up = run.upsample(acts)
    levels = stats.threshold_levels(include=QUANTILE)
    t_run = stats.level_index(levels, QUANTILE)
    thr = jnp.asarray(np.quantile(np.asarray(up).reshape(-1, run.units), levels, axis=0).T, jnp.float32)
    indicator = up > thr[:, t_run]
    u, n_lab, t = run.units, run.num_labels, len(levels)
    iou_update = jax.jit(lambda s, i, l: s.update(i, l), donate_argnums=0)
    multi_update = jax.jit(lambda s, a, th, l: s.update(a, th, l), donate_argnums=0)
    iou_step = jax.jit(lambda s, a, th, l: s.update(run.upsample(a) > th, l), donate_argnums=0)
    multi_step = jax.jit(lambda s, a, th, l: s.update(run.upsample(a), th, l), donate_argnums=0)
    rows = [("IoUTally.update (indicator given)", timed(iou_update, stats.IoUTally.create(u, n_lab), indicator, seg,
                                                         repeats=repeats)),
            (f"MultiThresholdTally.update, T={t}", timed(multi_update, stats.MultiThresholdTally.create(u, n_lab, t),
                                                         up, thr, seg, repeats=repeats)),
            ("IoU pass step: upsample + threshold + IoUTally", timed(iou_step, stats.IoUTally.create(u, n_lab), acts,
                                                                     thr[:, t_run], seg, repeats=repeats)),
            ("multi-threshold step: upsample + MultiThresholdTally", timed(
                multi_step, stats.MultiThresholdTally.create(u, n_lab, t), acts, thr, seg, repeats=repeats))]
    print(f"devices: {jax.devices()}")
    print(f"one batch of the default run: {acts.shape[0]} images, {u} units at {acts.shape[1]}x{acts.shape[2]} "
          f"upsampled to {run.seg_hw[0]}x{run.seg_hw[1]}, {n_lab} labels in {seg.shape[1]} channels; "
          f"median of {repeats} runs")
    for name, (wall, cpu) in rows:
        print(f"  {name:55s} wall {wall * 1e3:7.1f} ms   cpu {cpu * 1e3:7.1f} ms")
    for a, b in ((1, 0), (3, 2)):
        print(f"  ratio {rows[a][0].split(',')[0].split(':')[0]} / {rows[b][0].split(' (')[0].split(':')[0]}: "
              f"wall {rows[a][1][0] / rows[b][1][0]:.2f}x, cpu {rows[a][1][1] / rows[b][1][1]:.2f}x")


def census(run: DefaultRun, formula_length: int, beam_width: int) -> None:
    levels = stats.threshold_levels(include=QUANTILE)
    t_run = stats.level_index(levels, QUANTILE)
    u, n_lab = run.units, run.num_labels
    sketch = stats.QuantileSketch.create(u, 128)  # the pipeline's default resolution
    add = jax.jit(lambda q, a: q.update(run.upsample(a).reshape(-1, u)))
    for acts, _ in run.batches():
        sketch = add(sketch, acts)
    thr = jnp.asarray(sketch.quantiles(jnp.asarray(levels, jnp.float32)), jnp.float32)  # (units, T)
    thr = jax.lax.cummax(thr, axis=1)  # a sketch's quantiles can tie; never decrease
    multi_step = jax.jit(lambda s, a, l: s.update(run.upsample(a), thr, l), donate_argnums=0)
    iou_step = jax.jit(lambda s, a, l: s.update(run.upsample(a) > thr[:, t_run], l), donate_argnums=0)

    def full_pass(step, state):
        start_w, start_c = time.perf_counter(), time.process_time()
        for acts, seg in run.batches():
            state = step(state, acts, seg)
        jax.block_until_ready(state)
        return state, time.perf_counter() - start_w, time.process_time() - start_c

    iou_pass, _, _ = full_pass(iou_step, stats.IoUTally.create(u, n_lab))  # compile + warm up
    multi, _, _ = full_pass(multi_step, stats.MultiThresholdTally.create(u, n_lab, len(levels)))
    iou_pass, iou_wall, iou_cpu = full_pass(iou_step, stats.IoUTally.create(u, n_lab))
    multi, multi_wall, multi_cpu = full_pass(multi_step, stats.MultiThresholdTally.create(u, n_lab, len(levels)))
    print(f"\nthe default run: {len(run.source)} val scenes, toy_classifier {run.layer}, {u} units, quantile {QUANTILE}")
    print(f"  whole pass over the run (activations in memory): IoU pass wall {iou_wall:.2f} s cpu {iou_cpu:.2f} s; "
          f"multi-threshold pass wall {multi_wall:.2f} s cpu {multi_cpu:.2f} s "
          f"(ratio wall {multi_wall / iou_wall:.2f}x, cpu {multi_cpu / iou_cpu:.2f}x)")
    assert np.array_equal(np.asarray(multi.intersection[t_run]), np.asarray(iou_pass.intersection))
    names = run.source.labels.names
    rules = {r: labelling.label_units(multi, r, t_run) for r in labelling.RULES}
    base = rules["iou"]
    print(f"  threshold levels 1 - q, q = {', '.join(f'{1 - v:.4g}' for v in levels)}")
    for r, lab in rules.items():
        dead = int(lab.dead.sum())
        moved = labelling.changed(base, lab)
        alive = np.asarray(lab.iou)[~np.asarray(lab.dead)]
        print(f"  rule {r:8s}: {moved:3d} of {u} units change label against 'iou', {dead} dead, "
              f"mean IoU of the labelled {alive.mean() if alive.size else 0:.3f}")

    def count(beam):
        step = jax.jit(lambda s, a, l: s.update(run.upsample(a) > thr[:, t_run], l, beam), donate_argnums=0)
        state = FormulaTally.create(u, n_lab, beam.width)
        for acts, seg in run.batches():
            state = step(state, acts, seg)
        return state

    start = time.perf_counter()
    result = search_formulas(iou_pass, count, formula_length, beam_width)
    took = time.perf_counter() - start
    gain = result.iou - result.single_iou
    better = np.flatnonzero(gain >= 0.05)
    print(f"  formulas (length <= {formula_length}, beam {beam_width}, {formula_length - 1} passes, {took:.1f} s): "
          f"{len(better)} of {u} units get a formula beating their single label by >= 0.05 IoU "
          f"(mean gain {gain.mean():.3f})")
    for k in better[np.argsort(-gain[better])][:8]:
        print(f"    unit {k:3d}: {result.formulas[k].format(names)!s:45s} IoU {result.iou[k]:.3f}  "
              f"vs {names[result.single_label[k]]} {result.single_iou[k]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=1000, help="scenes in the run (the default run: 1000)")
    parser.add_argument("--formula-length", type=int, default=3)
    parser.add_argument("--beam-width", type=int, default=5)
    parser.add_argument("--skip-census", action="store_true", help="only the per-batch speed comparison")
    args = parser.parse_args()
    run = DefaultRun(args.size if not args.skip_census else 10)
    speed(run, args.repeats)
    if not args.skip_census:
        census(run, args.formula_length, args.beam_width)


if __name__ == "__main__":
    main()
