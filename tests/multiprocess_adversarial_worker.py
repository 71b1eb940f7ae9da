"""One process of a multi-process adversarial experiment on the planted classifier
(launched by tests/test_multiprocess.py).

usage: multiprocess_adversarial_worker.py PORT PROCESS_ID NUM_PROCESSES OUTDIR RESULT_NPZ
"""
import sys

import numpy as np


def main():
    port, pid, nproc, outdir, result_path = sys.argv[1:]
    from jaxdissect import parallel

    if int(nproc) > 1:
        parallel.initialize_distributed(f"127.0.0.1:{port}", int(nproc), int(pid))
    from test_adversarial import run_planted

    result = run_planted(outdir)
    arrays = {"ranking": result.ranking}
    for name, rec in result.records.items():
        for field in ("indices", "success", "predicted", "l2", "peak_adv"):
            arrays[f"{name}.{field}"] = getattr(rec, field)
    np.savez(result_path, **arrays)


if __name__ == "__main__":
    main()
