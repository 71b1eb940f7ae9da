"""One process of a multi-process generator intervention run on the hand-built generator
(launched by tests/test_multiprocess.py).

usage: multiprocess_generator_worker.py PORT PROCESS_ID NUM_PROCESSES OUTDIR RESULT_NPZ
"""
import sys

import numpy as np


def main():
    port, pid, nproc, outdir, result_path = sys.argv[1:]
    from jaxdissect import parallel

    if int(nproc) > 1:
        parallel.initialize_distributed(f"127.0.0.1:{port}", int(nproc), int(pid))
    from jaxdissect.experiments import generator_intervention as gi
    from test_generator_intervention import HandSegmenter, hand_model

    cfg = gi.InterventionConfig(model="handgen", layer="layer2", seg="hand", remove_class="tree",
                                insert_class="door", sample_size=16, insert_sample_size=8, dissect_sample_size=32,
                                max_units=3, insert_units=1, batch_size=8, outdir=outdir, progress=False,
                                min_context_samples=1)
    res = gi.run_interventions(cfg, model=hand_model(), segmenter=HandSegmenter())
    np.savez(result_path, removal_units=res.removal.units, removed=res.removal.removed,
             removal_delta=res.removal.mean_delta, context_units=res.context.units, values=res.context.values,
             context_samples=res.context.samples, context_delta=res.context.mean_delta,
             single=res.single_unit_delta, baseline=res.baseline)


if __name__ == "__main__":
    main()
