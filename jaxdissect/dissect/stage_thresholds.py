"""Stage 2, exact thresholds: each unit's sketch bin narrowed over the cached activations (or a
replay of the network) until the threshold is the exact 1 - quantile quantile of its upsampled
activations. Resumable between and within refinement passes."""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import numpy as np

from jaxdissect import parallel
from jaxdissect import fingerprint as fp
from jaxdissect.atomic import atomic_write_text
from jaxdissect.dissect import steps
from jaxdissect.dissect.feeds import checkpoint_policy, replay, use_cache
from jaxdissect.dissect.run import DissectRun
from jaxdissect.dissect.stage_store import THRESHOLDS_FILE, read_json
from jaxdissect.passes import PassSpec, ResumablePass
from jaxdissect.stats import RefinementPlan, target_ranks
from jaxdissect.stats.refine import choose_subbins


def stage_thresholds(run: DissectRun, act: Mapping[str, steps.ActivationStats], ok_all: np.ndarray,
                     log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Per layer, the exact 1 - quantile quantile of the upsampled activations (stored per layer)."""
    q = 1.0 - run.config.quantile
    stored = {}
    for layer in run.layers:
        saved = read_json(os.path.join(run.dirs[layer], "stats", THRESHOLDS_FILE))
        if saved is None or saved.get("fingerprint") != fp.canonical(run.thresholds_fingerprint(layer)):
            break
        stored[layer] = np.asarray(saved["thresholds"], np.float32)
    else:
        return stored
    total_units = sum(g.units for g in run.geometry.values())
    subbins = choose_subbins(total_units)
    plans, fracs = {}, {}
    for layer in run.layers:
        sketch = act[layer].quantiles
        ranks, frac = target_ranks(np.asarray(sketch.unit_counts()), [q])
        plans[layer], fracs[layer] = RefinementPlan(sketch, ranks, subbins), frac[:, 0]
    plan_file = os.path.join(run.primary_dir, "checkpoints", "refinement.json")
    fingerprint = {l: fp.digest(run.thresholds_fingerprint(l)) for l in run.layers}
    _restore_plans(plans, plan_file, fingerprint)
    cached = use_cache(run)
    forward = run.forward_fn()
    while any(plan.pending for plan in plans.values()):
        number = max(plan.passes for plan in plans.values()) + 1
        empty = {l: plan.state() for l, plan in plans.items() if plan.pending}
        spec = PassSpec(f"refine{number}", run.primary_dir, {"thresholds": fingerprint, "pass": number,
                                                             "intervals": _plans_digest(plans)},
                        f"pass {number + 1}: exact thresholds ({sum(p.pending for p in plans.values())} values to "
                        f"refine{'' if cached else ', running the network again'})")
        p = ResumablePass(spec, empty, run.mesh, run.num_samples, run.batch_size, policy=checkpoint_policy(run.config),
                          progress=run.config.progress, log=log)

        def per_device(state, _, acts, ok):
            return {l: steps.update_refinement(state[l], acts[l], run.geometry[l].upsample, ok) for l in state}

        step = steps.sharded_pass(per_device, run.mesh, 2)
        for _, (item, _) in p.batches(replay(run, p.ranges, ok_all, cached, forward)):
            p.state = step(p.state, None, {l: item.acts[l] for l in empty}, item.ok)
        merged, _ = p.finish()
        for l, state in merged.items():
            plans[l].advance(state)
        if parallel.is_primary():
            _save_plans(plans, plan_file, fingerprint)
        parallel.barrier(f"refine{number}-saved")
        p.clear()
    out = {}
    for layer, plan in plans.items():
        v0, v1 = plan.values[:, 0].astype(np.float64), plan.values[:, 1].astype(np.float64)
        frac = fracs[layer]
        with np.errstate(invalid="ignore"):
            out[layer] = np.where(frac > 0, v0 + frac * (v1 - v0), v0).astype(np.float32)
        sketch_estimate = np.asarray(act[layer].quantiles.quantiles([q]))[:, 0]
        if parallel.is_primary():
            atomic_write_text(os.path.join(run.dirs[layer], "stats", THRESHOLDS_FILE), json.dumps({
                "fingerprint": fp.canonical(run.thresholds_fingerprint(layer)), "quantile": run.config.quantile,
                "level": q, "thresholds": [float(t) for t in out[layer]],
                "sketch_estimates": [float(t) for t in sketch_estimate],
                "refinement_passes": plan.passes}, allow_nan=True))
    parallel.barrier("thresholds-saved")
    if parallel.is_primary() and os.path.exists(plan_file):
        os.remove(plan_file)
    return out


def _plans_digest(plans: Mapping[str, RefinementPlan]) -> str:
    return fp.digest({l: [p.lo.tolist(), p.hi.tolist()] for l, p in plans.items()})


def _save_plans(plans, path: str, fingerprint: dict) -> None:
    data = {"fingerprint": fingerprint, "plans": {l: {"lo": p.lo.tolist(), "hi": p.hi.tolist(),
                                                      "values": [[None if np.isnan(v) else float(v) for v in row]
                                                                 for row in p.values], "passes": p.passes}
                                                  for l, p in plans.items()}}
    atomic_write_text(path, json.dumps(data))


def _restore_plans(plans, path: str, fingerprint: dict) -> None:
    """Continue the refinement where a killed run left it (same fingerprint only)."""
    data = read_json(path)
    if data is None or data.get("fingerprint") != fingerprint:
        return
    for l, saved in data["plans"].items():
        plan = plans[l]
        plan.lo = np.asarray(saved["lo"], np.int64)
        plan.hi = np.asarray(saved["hi"], np.int64)
        plan.values = np.asarray([[np.nan if v is None else v for v in row] for row in saved["values"]], np.float32)
        plan.passes = int(saved["passes"])
