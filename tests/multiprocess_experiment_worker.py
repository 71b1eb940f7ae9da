"""One process of a multi-process experiment run (launched by tests/test_multiprocess.py):
'adversarial' on the planted classifier, 'generator' interventions on the hand-built generator, or
'shape_bias' on the toy classifier (stylized scenes and their restyled twins).

usage: multiprocess_experiment_worker.py PORT PROCESS_ID NUM_PROCESSES OUTDIR EXPERIMENT RESULT_NPZ
"""
import sys

import numpy as np


def adversarial(outdir: str) -> dict:
    from test_adversarial import run_planted

    result = run_planted(outdir)
    arrays = {"ranking": result.ranking}
    for name, rec in result.records.items():
        for field in ("indices", "success", "predicted", "l2", "peak_adv"):
            arrays[f"{name}.{field}"] = getattr(rec, field)
    return arrays


def generator(outdir: str) -> dict:
    from jaxdissect.experiments import generator_intervention as gi
    from test_generator_intervention import HandSegmenter, hand_model

    cfg = gi.GeneratorInterventionConfig(model="handgen", layer="layer2", seg="hand", remove_class="tree",
                                         insert_class="door", sample_size=16, insert_sample_size=8,
                                         dissect_sample_size=32, max_units=3, insert_units=1, batch_size=8,
                                         outdir=outdir, progress=False, min_context_samples=1)
    res = gi.run_experiment(cfg, model=hand_model(), segmenter=HandSegmenter())
    return dict(removal_units=res.removal.units, removed=res.removal.removed, removal_delta=res.removal.mean_delta,
                context_units=res.context.units, values=res.context.values, context_samples=res.context.samples,
                context_delta=res.context.mean_delta, single=res.single_unit_delta, baseline=res.baseline)


def shape_bias(outdir: str) -> dict:
    from jaxdissect.experiments.shape_bias import ShapeBiasConfig, run_experiment

    cfg = ShapeBiasConfig(dataset="scenes-stylized", layers=("features.conv3_1", "features.conv4_2"), sample_size=24,
                          batch_size=8, topk=3, strip_images=2, thumbsize=32, outdir=outdir, progress=False)
    res = run_experiment(cfg)
    arrays = {"share": res.confinement.share}
    for lb in res.layers:
        for field in ("agreement", "chance", "both_fraction", "topk_indices"):
            arrays[f"{lb.layer}.{field}"] = getattr(lb, field)
        for side in (0, 1):
            arrays[f"{lb.layer}.labels{side}"], arrays[f"{lb.layer}.ious{side}"] = lb.labels[side], lb.ious[side]
            arrays[f"{lb.layer}.thresholds{side}"] = lb.thresholds[side]
    return arrays


def main():
    port, pid, nproc, outdir, experiment, result_path = sys.argv[1:]
    from jaxdissect import parallel

    if int(nproc) > 1:
        parallel.initialize_distributed(f"127.0.0.1:{port}", int(nproc), int(pid))
    np.savez(result_path, **{"adversarial": adversarial, "generator": generator, "shape_bias": shape_bias}[experiment](outdir))


if __name__ == "__main__":
    main()
