"""One process of a multi-process dissection (launched by tests/test_multiprocess.py).

usage: multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES OUTDIR KILL_AT RESULT_NPZ

KILL_AT: a sample index (the run dies in pass 1 when it loads it), -1 (no kill), or iou:N (the run
dies in the IoU pass at the batch whose segmentation rows reach sample N). Both are tied to a
batch, not to the order of reads: the loader reads batches ahead in several threads, and an error
it meets is raised when the pass reaches that batch, after the checkpoints before it.
"""
import sys

import numpy as np


def main():
    port, pid, nproc, outdir, kill_at, result_path = sys.argv[1:]
    from jaxdissect import parallel

    if int(nproc) > 1:
        parallel.initialize_distributed(f"127.0.0.1:{port}", int(nproc), int(pid))
    from jaxdissect.dissect import DissectConfig, dissect
    from planted import EncodedScenes, planted_model

    sample_kill = -1 if kill_at.startswith("iou:") else int(kill_at)

    class KilledAt(EncodedScenes):
        """Every process dies at the batch that reaches sample `kill_at`, like a killed job."""

        def load(self, indices):
            if sample_kill >= 0 and max(int(i) for i in indices) >= sample_kill:
                raise SystemExit(17)
            return super().load(indices)

    if kill_at.startswith("iou:"):
        from jaxdissect.array_cache import ArrayCache

        original, iou_kill = ArrayCache.read, int(kill_at[4:])

        def read(self, indices):
            if "segmentations" in self.path and max(int(i) for i in indices) >= iou_kill:
                raise SystemExit(18)
            return original(self, indices)

        ArrayCache.read = read

    cfg = DissectConfig(outdir=outdir, quantile=0.5, batch_size=8, progress=False, checkpoint_every=2,
                        thumbsize=32, topk=10)
    [r] = dissect(cfg, model=planted_model(), source=KilledAt(size=40))
    np.savez(result_path, iou=r.iou, best=r.best_label, thr=r.thresholds, top=r.topk_indices)


if __name__ == "__main__":
    main()
