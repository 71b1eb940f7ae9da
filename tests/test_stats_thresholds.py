"""MultiThresholdTally and the information measures against brute-force numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import IoUTally, MultiThresholdTally, level_index, load, save, threshold_levels
from jaxdissect.stats.thresholds import information_quality_ratio, joint_entropy, mutual_information
from stats_helpers import assert_trees_equal, merge_all, run_sharded


def random_case(seed, n=6, h=9, w=7, units=11, channels=3, num_labels=13, t=5):
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, h, w, units)).astype(np.float32)
    acts[0, 0, 0, 0] = np.nan  # never on
    thresholds = np.sort(rng.normal(size=(units, t)), axis=1).astype(np.float32)
    thresholds[0, 1] = thresholds[0, 2]  # a tie is allowed (non-decreasing)
    labels = rng.integers(0, num_labels, size=(n, channels, h, w)).astype(np.int32)
    if channels > 1:
        labels[:, 1] = np.where(rng.random((n, h, w)) < 0.3, labels[:, 0], labels[:, 1])  # repeats in a pixel
    labels[0, -1, 0, :3] = [num_labels, num_labels + 5, -1]  # out of range: ignored
    return acts, thresholds, labels


def brute_force(acts, thresholds, labels, num_labels, mask=None):
    """Direct transcription: unit on at level t where act > thresholds[u, t]; a pixel has label k
    when any channel equals k (0 < k < num_labels)."""
    if mask is not None:
        acts, labels = acts[mask], labels[mask]
    units, t = thresholds.shape
    a = acts.reshape(-1, units)
    lab = np.moveaxis(labels, 1, -1).reshape(-1, labels.shape[1])
    on = a[:, None, :] > thresholds.T[None]  # (P, T, units)
    inter = np.zeros((t, num_labels, units), np.int64)
    area = np.zeros(num_labels, np.int64)
    for k in range(1, num_labels):
        has = (lab == k).any(1)
        area[k] = has.sum()
        inter[:, k] = (on & has[:, None, None]).sum(0)
    return inter, on.sum(0), area, a.shape[0]


@pytest.mark.parametrize("method,max_sets", [("histogram", 512), ("histogram", 2), ("matmul", 512)])
def test_counts_match_brute_force_exactly(method, max_sets):
    acts, thr, labels = random_case(0)
    state = MultiThresholdTally.create(11, 13, 5)
    for i in range(0, 6, 2):
        state = state.update(acts[i:i + 2], thr, labels[i:i + 2], method=method, max_label_sets=max_sets)
    inter, unit_area, area, pixels = brute_force(acts, thr, labels, 13)
    np.testing.assert_array_equal(np.asarray(state.intersection), inter)
    np.testing.assert_array_equal(np.asarray(state.unit_area), unit_area)
    np.testing.assert_array_equal(np.asarray(state.label_area)[1:], area[1:])
    assert int(state.pixels) == pixels


@pytest.mark.parametrize("channels,num_labels", [(1, 13), (3, 2000)])
def test_single_channel_and_wide_labels_take_the_channel_path(channels, num_labels):
    # one channel, or label tuples too wide for an int32 key (2001 ** 3 > 2 ** 31): counted per channel
    acts, thr, labels = random_case(5, channels=channels, num_labels=num_labels)
    got = MultiThresholdTally.create(11, num_labels, 5).update(acts, thr, labels)
    inter, unit_area, _, _ = brute_force(acts, thr, labels, num_labels)
    np.testing.assert_array_equal(np.asarray(got.intersection), inter)
    np.testing.assert_array_equal(np.asarray(got.unit_area), unit_area)


def test_matmul_chunks_add_up_exactly():
    from jaxdissect.stats.counts import dedup_labels
    from jaxdissect.stats.thresholds import _counts_histogram, _counts_matmul, pixel_levels

    acts, thr, labels = random_case(7, n=2)  # 126 pixels: 13 chunks of 10, the last one padded
    level = pixel_levels(jnp.asarray(acts).reshape(-1, 11), jnp.asarray(thr))
    lab = dedup_labels(jnp.asarray(np.moveaxis(labels, 1, -1).reshape(-1, 3)), 13)
    by_matmul = _counts_matmul(level, lab, 13, 5, chunk=10)
    by_scatter = _counts_histogram(lambda: level, lab, 13, 5, 512)
    assert_trees_equal(by_matmul, by_scatter)
    inter, unit_area, _, _ = brute_force(acts, thr, labels, 13)
    np.testing.assert_array_equal(np.asarray(by_matmul[0]), inter)


def test_each_threshold_equals_iou_tally():
    acts, thr, labels = random_case(1)
    multi = MultiThresholdTally.create(11, 13, 5).update(acts, thr, labels)
    for t in range(5):
        single = IoUTally.create(11, 13).update(acts > thr[:, t], labels)
        assert_trees_equal(multi.at(t), single)
        np.testing.assert_array_equal(np.asarray(multi.intersection[t]), np.asarray(single.intersection))
        np.testing.assert_array_equal(np.asarray(multi.unit_area[t]), np.asarray(single.unit_area))
        np.testing.assert_array_equal(np.asarray(multi.label_area), np.asarray(single.label_area))
        np.testing.assert_array_equal(np.asarray(multi.iou()[t]), np.asarray(single.iou()))


def test_merge_devices_and_mask_exact():
    acts, thr, labels = random_case(2, n=8)
    whole = MultiThresholdTally.create(11, 13, 5).update(acts, thr, labels)
    states = [MultiThresholdTally.create(11, 13, 5).update(acts[c], thr, labels[c])
              for c in np.array_split(np.arange(8), 4)]
    assert_trees_equal(merge_all(states), whole)
    sharded = run_sharded(lambda a, l: MultiThresholdTally.create(11, 13, 5).update(a, thr, l).all_reduce("data"),
                          acts, labels)
    assert_trees_equal(sharded, whole)
    mask = np.array([True, False, True, True, False, True, True, True])
    masked = MultiThresholdTally.create(11, 13, 5).update(acts, thr, labels, mask)
    inter, unit_area, area, pixels = brute_force(acts, thr, labels, 13, mask)
    np.testing.assert_array_equal(np.asarray(masked.intersection), inter)
    np.testing.assert_array_equal(np.asarray(masked.unit_area), unit_area)
    np.testing.assert_array_equal(np.asarray(masked.label_area)[1:], area[1:])
    assert int(masked.pixels) == pixels


def test_save_and_load(tmp_path):
    acts, thr, labels = random_case(8)
    state = MultiThresholdTally.create(11, 13, 5).update(acts, thr, labels)
    save(tmp_path / "multi", state)
    assert_trees_equal(load(tmp_path / "multi"), state)


def test_update_under_jit_with_traced_thresholds():
    acts, thr, labels = random_case(3)
    step = jax.jit(lambda s, a, t, l: s.update(a, t, l))
    got = step(MultiThresholdTally.create(11, 13, 5), acts, thr, labels)
    assert_trees_equal(got, MultiThresholdTally.create(11, 13, 5).update(acts, thr, labels))


def test_errors_name_the_problem():
    acts, thr, labels = random_case(4)
    state = MultiThresholdTally.create(11, 13, 5)
    with pytest.raises(ValueError, match="must not decrease"):
        state.update(acts, thr[:, ::-1], labels)
    with pytest.raises(ValueError, match=r"thresholds must be \(units, T\)"):
        state.update(acts, thr[:, :4], labels)
    with pytest.raises(ValueError, match="activations"):
        state.update(acts[..., :3], thr, labels)
    with pytest.raises(ValueError, match="labels"):
        state.update(acts, thr, labels[:, :, :4])
    with pytest.raises(ValueError, match="method"):
        state.update(acts, thr, labels, method="fast")
    with pytest.raises(ValueError, match="too many bins"):
        huge = jax.eval_shape(lambda: MultiThresholdTally.create(2, 2 ** 20, 2 ** 10))  # shapes only
        huge.update(acts[..., :2], np.zeros((2, 2 ** 10)), labels)


def original_statistics(inter, unit_area, label_area, pixels):
    """numpy transcription of the original's intersection_from_conditional_quantile statistics,
    with the table built from counts: [[isect, pred - isect], [truth - isect, 1 - union]]."""
    isect = inter / pixels
    pred = unit_area[:, None, :] / pixels
    truth = np.broadcast_to(label_area[None, :, None] / pixels, isect.shape)
    union = pred + truth - isect
    arr = np.stack([isect, pred - isect, truth - isect, 1 - union]).reshape((2, 2) + isect.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = arr[0, 0] / (1 - arr[1, 1])
        mi = 0
        for j in range(2):
            for k in range(2):
                joint = arr[j, k]
                ind = arr[j, :].sum(0) * arr[:, k].sum(0)
                term = joint * np.log(joint / ind)
                term[np.isnan(term)] = 0
                mi = mi + term
        mi = np.maximum(mi, 0)
        h = 0
        for j in range(2):
            for k in range(2):
                term = arr[j, k] * np.log(arr[j, k])
                term[np.isnan(term)] = 0
                h = h + term
        h = np.maximum(-h, 0)
        iqr = mi / h
        iqr[np.isnan(iqr)] = 0
    return iou, mi, h, iqr


def test_information_measures_equal_the_original_formulas():
    # Correlated units and labels, so MI spans small and large values; one label never occurs.
    rng = np.random.default_rng(6)
    labels = rng.integers(1, 6, size=(8, 2, 16, 16)).astype(np.int32)
    acts = rng.normal(size=(8, 16, 16, 4)).astype(np.float32)
    acts[..., 0] += 3.0 * (labels[:, 0] == 2)
    acts[..., 1] -= 2.0 * (labels[:, 1] == 3)  # negatively associated
    thr = np.quantile(acts.reshape(-1, 4), [0.5, 0.8, 0.95, 0.999], axis=0).T.astype(np.float32)
    thr[3, 3] = 1e9  # never on at the last level
    state = MultiThresholdTally.create(4, 8, 4).update(acts, thr, labels)
    counts = [np.asarray(x, np.float64) for x in (state.intersection, state.unit_area, state.label_area)]
    iou, mi, h, iqr = original_statistics(*counts, float(state.pixels))
    assert (mi[:, 1:6] > 1e-3).any() and (mi[:, 6:] == 0).all()
    np.testing.assert_allclose(np.asarray(state.iou())[:, 1:], np.nan_to_num(iou)[:, 1:], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state.mutual_information())[:, 1:], mi[:, 1:], rtol=1e-4, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(state.mi()), np.asarray(state.mutual_information()))
    np.testing.assert_allclose(np.asarray(state.joint_entropy())[:, 1:], h[:, 1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.iqr())[:, 1:], iqr[:, 1:], rtol=1e-4, atol=2e-6)
    assert np.asarray(state.iqr())[:, 0].max() == 0  # label 0 is never a label
    positive = np.asarray(state.positive())
    np.testing.assert_array_equal(positive[:, 1:], (counts[0] * float(state.pixels) >
                                                    counts[1][:, None, :] * counts[2][None, :, None])[:, 1:])
    assert positive[:, 2, 0].all() and not positive[:3, 3, 1].any()


def test_measures_of_hand_checked_tables():
    # Independent: MI 0. Identical halves: MI = H(X) = log 2, joint entropy log 2, IQR 1.
    tables = jnp.asarray([[[0.25, 0.25], [0.25, 0.25]], [[0.5, 0.0], [0.0, 0.5]]]).transpose(1, 2, 0)
    np.testing.assert_allclose(np.asarray(mutual_information(tables)), [0.0, np.log(2)], atol=1e-7)
    np.testing.assert_allclose(np.asarray(joint_entropy(tables)), [np.log(4), np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(information_quality_ratio(tables)), [0.0, 1.0], atol=1e-6)
    empty = jnp.zeros((2, 2, 1)).at[1, 1].set(1.0)  # never on, never labelled: 0 / 0 -> 0
    assert float(information_quality_ratio(empty)[0]) == 0.0


def test_threshold_levels():
    levels = threshold_levels()
    assert levels.shape == (16,) and np.all(np.diff(levels) > 0)
    np.testing.assert_allclose([1 - levels[0], 1 - levels[-1]], [0.5, 0.0005], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.log(1 - levels)), np.log(0.001) / 15, rtol=1e-9)
    with_run = threshold_levels(include=0.01)
    assert with_run.shape == (16,) and np.all(np.diff(with_run) > 0)
    assert level_index(with_run, 0.01) == 8 and abs(with_run[8] - 0.99) < 1e-15
    assert np.sum(np.abs(with_run - levels) > 1e-12) == 1  # only the nearest grid point moved
    with pytest.raises(ValueError, match="not among the threshold levels"):
        level_index(levels, 0.01)
    with pytest.raises(ValueError, match="q_min"):
        threshold_levels(q_min=0.6)
