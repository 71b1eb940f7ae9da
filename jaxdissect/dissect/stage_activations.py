"""Stage 1, the one forward pass: per layer a quantile sketch of the upsampled activations, the
top images with the first few's activation maps, NaN/inf counts; the layers' activations, their
per-image peaks and the segmentations go to the caches on the way."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect import fingerprint as fp
from jaxdissect.config_error import UserError
from jaxdissect.dissect import steps
from jaxdissect.data import sources
from jaxdissect.dissect.feeds import agreed, assemble, checkpoint_policy, local_parts, local_positions
from jaxdissect.dissect.run import DissectRun
from jaxdissect.dissect.stage_store import STAGE_ACTIVATIONS, load_stage, save_errors, save_stage
from jaxdissect.passes import PassSpec, ResumablePass
from jaxdissect.report.unit_images import thumbnail


def _nan_check(run: DissectRun) -> Callable[[dict], None]:
    def check(merged: dict) -> None:
        for layer in run.layers:
            state = merged[layer]
            counts = np.asarray(state.nonfinite.counts) + np.asarray(state.quantiles.nan_count)
            if counts.any():
                units = np.flatnonzero(counts)
                raise FloatingPointError(
                    f"layer {layer} of {run.model.name}: NaN or infinite activations (in the layer or before its "
                    f"activation function) in {len(units)} unit(s), e.g. units {units[:10].tolist()} "
                    f"({int(counts.max())} samples); the model or its weights are broken. Nothing of this pass "
                    "was saved as a result.")
    return check


def _activation_template(run: DissectRun) -> dict:
    c = run.config
    return {l: steps.ActivationStats.create(g.units, c.topk, c.resolution, map_shape=g.shape[:2], map_k=c.strip_images)
            for l, g in run.geometry.items()}


def _stage_states(stats: steps.ActivationStats) -> dict:
    return {"quantiles": stats.quantiles, "topk": stats.topk, "top_maps": stats.top_maps, "nonfinite": stats.nonfinite}


def _from_stage_states(states: Mapping[str, Any]) -> steps.ActivationStats:
    return steps.ActivationStats(states["quantiles"], states["topk"], states["top_maps"], states["nonfinite"])


def stage_activations(run: DissectRun, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Pass 1, or its stored result: ({layer: ActivationStats}, {sample: error message})."""
    template = _activation_template(run)
    stored = load_stage(run, STAGE_ACTIVATIONS, {l: _stage_states(t) for l, t in template.items()},
                         run.activations_fingerprint)
    caches_ok = all(run.peaks_cache(l).present().all() for l in run.layers) and (
        not run.config.activation_cache or all(run.activation_cache(l).present().all() for l in run.layers))
    if stored is not None and caches_ok:
        errors = {int(k): v for k, v in stored[run.layers[0]][1].get("errors", {}).items()}
        return {l: _from_stage_states(s) for l, (s, _) in stored.items()}, errors
    c = run.config
    seg_cache = run.seg_cache()
    seg_missing = ~agreed(seg_cache.present())
    images_cache = run.image_cache()
    images_missing = None if images_cache is None else ~agreed(images_cache.present())
    act_caches = {l: run.activation_cache(l) for l in run.layers} if c.activation_cache else {}
    peak_caches = {l: run.peaks_cache(l) for l in run.layers}
    if parallel.is_primary():
        run.check_disk_space(list(act_caches), int(seg_missing.sum()))
    fingerprint = {"layers": {l: fp.digest(run.activations_fingerprint(l)) for l in run.layers}}
    pending: list = []

    def flush():
        for f in pending:
            f.result()
        pending.clear()

    p = ResumablePass(PassSpec("activations", run.primary_dir, fingerprint, f"pass 1: activations of {len(run.layers)} "
                               f"layer(s){' and segmentations' if seg_missing.any() else ''}"),
                      template, run.mesh, run.num_samples, run.batch_size, policy=checkpoint_policy(c), progress=c.progress,
                      before_checkpoint=flush, check=_nan_check(run), log=log)
    rows, positions = local_positions(run)
    forward = run.forward_fn()
    variables = parallel.replicate(run.mesh, run.model.variables)
    segment = None if run.segmenter is None else jax.jit(lambda images: run.segmenter.segment(images, run.downsample))

    def per_device(state, _, acts, pre, indices, ok):
        return {l: steps.update_activation_stats(state[l], acts[l], g.upsample, indices, ok, pre.get(l))
                for l, g in run.geometry.items()}

    step = steps.sharded_pass(per_device, run.mesh, 4)
    for r, batch in p.batches(sources.prefetch(run.source, p.ranges, positions)):
        p.add_errors(batch.errors)
        valid = positions < len(r)
        inputs, ok, idx = (assemble(run, rows, a) for a in (batch.inputs, batch.ok, batch.indices))
        out, acts, pre = forward(variables, inputs)
        p.state = step(p.state, None, acts, pre, idx, ok)
        for layer in run.layers:
            for local, data in local_parts(acts[layer], positions):
                keep = valid[local]
                if not keep.any():
                    continue
                if layer in act_caches:
                    pending.append(act_caches[layer].write(batch.indices[local][keep], data[keep]))
                peaks = data[keep].reshape(int(keep.sum()), -1, data.shape[-1]).max(axis=1)
                pending.append(peak_caches[layer].write(batch.indices[local][keep], peaks))
        if seg_missing[r].any():
            if segment is None:
                parts = [(np.arange(len(positions)), run.ground_truth(batch))]
            else:
                parts = local_parts(segment(run.seg_images(inputs, out)), positions)
            for local, data in parts:
                keep = valid[local]  # unreadable images too: their rows are never used, but complete the cache
                pending.append(seg_cache.write(batch.indices[local][keep], data[keep]))
        if images_missing is not None and images_missing[r].any():
            for local, data in local_parts(_display(out), positions):
                keep = valid[local]
                if keep.any():
                    thumbs = np.stack([thumbnail(im, c.thumbsize) for im in data[keep]])
                    pending.append(images_cache.write(batch.indices[local][keep], thumbs))
    merged, errors = p.finish()
    readable = run.num_samples - len([i for i in errors if int(i) < run.num_samples])
    if readable == 0:
        first = next(iter(errors.values()), "")
        raise UserError(f"no readable samples in {run.dataset!r}: all {run.num_samples} failed to load "
                        f"(first: {first})")
    if parallel.is_primary():
        for l in run.layers:
            save_stage(run, STAGE_ACTIVATIONS, l, _stage_states(merged[l]), run.activations_fingerprint(l),
                        errors={str(k): v for k, v in sorted(errors.items())})
            save_errors(run.dirs[l], errors)
    parallel.barrier("activations-saved")
    p.clear()
    return merged, errors


def _display(output: jax.Array) -> jax.Array:
    """A generator's output in [-1, 1] as uint8 images."""
    return jnp.clip((output + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8)
