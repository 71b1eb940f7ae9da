"""The pipeline's IoU equals a direct numpy transcription of the original's formulas."""
import numpy as np

from jaxdissect.dissect import steps
from jaxdissect.stats import IoUTally
from jaxdissect.upsample import upsampler


def original_iou(batches, thresholds, num_labels):
    """Transcription of the original: conditional means of the indicator per label (condition 0 =
    every pixel), accumulated over batches, then P(A and S) / (P(A) + P(S) - P(A and S))."""
    sums = np.zeros((num_labels, thresholds.shape[0]))
    counts = np.zeros(num_labels)
    for acts, seg in batches:  # acts (N, H, W, U), seg (N, L, H, W)
        ind = (acts > thresholds).reshape(-1, acts.shape[-1]).astype(np.float64)
        lab = np.moveaxis(seg, 1, -1).reshape(-1, seg.shape[1])
        sums[0] += ind.sum(0)
        counts[0] += len(ind)
        for k in np.unique(lab):
            if k == 0:
                continue
            rows = (lab == k).any(1)
            sums[k] += ind[rows].sum(0)
            counts[k] += rows.sum()
    mean = sums / np.maximum(counts, 1)[:, None]
    p_a = mean[0]
    p_s = counts / counts[0]
    p_as = mean * p_s[:, None]
    iou = p_as / (p_a + p_s[:, None] - p_as)
    iou[0] = 0  # the port never labels a unit with the unconditional entry
    return np.nan_to_num(iou)


def test_iou_matches_transcription_of_original():
    rng = np.random.default_rng(0)
    units, num_labels = 6, 9
    up = upsampler((8, 8), (8, 8))  # the identity: activations already at segmentation size
    thresholds = rng.normal(0.8, 0.1, units).astype(np.float32)
    state = IoUTally.create(units, num_labels)
    batches = []
    for _ in range(3):
        acts = rng.normal(size=(4, 8, 8, units)).astype(np.float32)
        seg = rng.integers(0, num_labels, size=(4, 3, 8, 8)).astype(np.int32)
        batches.append((acts, seg))
        state = steps.update_iou(state, acts, up, thresholds, seg, np.ones(4, bool))
    np.testing.assert_allclose(np.asarray(state.iou()), original_iou(batches, thresholds, num_labels), atol=1e-6)


def test_activation_stats_step_matches_numpy():
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.normal(size=(5, 3, 3, 4)), 0).astype(np.float32)
    up = upsampler((6, 6), (3, 3))
    state = steps.update_activation_stats(steps.ActivationStats.create(4, k=2), acts, up,
                                          np.array([10, 11, 12, 13, 14]), np.array([1, 1, 1, 0, 1], bool))
    rows = np.asarray(up(acts))[[0, 1, 2, 4]].reshape(-1, 4)
    np.testing.assert_array_equal(np.asarray(state.quantiles.max()), rows.max(0))
    assert int(state.quantiles.count) == len(rows)
    peaks = acts.reshape(5, -1, 4).max(1)[[0, 1, 2, 4]]
    ids = np.array([10, 11, 12, 14])
    _, idx = state.topk.result()
    want = np.stack([ids[np.lexsort((ids, -peaks[:, u]))][:2] for u in range(4)])
    np.testing.assert_array_equal(np.asarray(idx), want)
