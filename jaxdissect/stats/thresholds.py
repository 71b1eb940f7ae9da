"""MultiThresholdTally: unit x label intersections at many per-unit thresholds in one pass.

Where IoUTally counts one indicator per unit (activation above one threshold), this state counts
T nested indicators at once: unit u is "on at level t" where its activation exceeds
thresholds[u, t], for thresholds that increase with t (e.g. the unit's quantiles at the levels of
`threshold_levels()`). From the counts come the IoU at every threshold, and the 2x2 contingency
table per (threshold, label, unit) that the original's conditional-quantile statistics read:
mutual information, joint entropy and their ratio, the information quality ratio (IQR).

Counting is exact (integers). An update finds each pixel's level (how many of a unit's
thresholds it exceeds), groups pixels by their set of labels, and counts (label set, level,
unit) triples with one scatter; the label sets then add into their labels. On TPU, where
scatters are slow, a thermometer matmul does the same counting (`method="matmul"`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdissect.stats._labelsets import add_into_labels, label_sets, packable
from jaxdissect.stats._util import is_traced, row_mask
from jaxdissect.stats.counts import IoUTally, dedup_labels

DEFAULT_NUM_THRESHOLDS = 16
DEFAULT_Q_MAX = 0.5  # loosest threshold: the unit's median
DEFAULT_Q_MIN = 0.0005  # tightest: its top 0.05%
DEFAULT_MAX_LABEL_SETS = 512
MATMUL_CHUNK = 8192  # pixels per matmul (method "matmul"): counts stay exact in float32
METHODS = ("auto", "histogram", "matmul")


def threshold_levels(num: int = DEFAULT_NUM_THRESHOLDS, q_max: float = DEFAULT_Q_MAX, q_min: float = DEFAULT_Q_MIN,
                     include: float | None = None) -> np.ndarray:
    """Quantile levels 1 - q, ascending, for q spaced geometrically from q_max down to q_min.

    With `include` (a run's top fraction q0, e.g. 0.01), the grid point nearest to it (in log q)
    is replaced by 1 - q0, so the run's own threshold is one of the T."""
    if num < 1:
        raise ValueError(f"threshold_levels: num must be >= 1, got {num}")
    if not 0.0 < q_min <= q_max < 1.0:
        raise ValueError(f"threshold_levels: need 0 < q_min <= q_max < 1, got q_min={q_min}, q_max={q_max}")
    q = np.geomspace(q_max, q_min, num) if num > 1 else np.asarray([q_max], np.float64)
    if include is not None:
        if not 0.0 < include < 1.0:
            raise ValueError(f"threshold_levels: include must be a fraction in (0, 1), got {include}")
        q[int(np.argmin(np.abs(np.log(q) - np.log(include))))] = include
        q = np.sort(q)[::-1]
    return 1.0 - q


def level_index(levels, quantile: float) -> int:
    """The index of level 1 - quantile in `levels`; a clear error if it is not one of them."""
    levels = np.asarray(levels, np.float64)
    i = int(np.argmin(np.abs(levels - (1.0 - quantile))))
    if abs(levels[i] - (1.0 - quantile)) > 1e-9:
        raise ValueError(f"level 1 - {quantile} is not among the threshold levels {levels.tolist()}; "
                         f"make them with threshold_levels(include={quantile})")
    return i


@struct.dataclass
class MultiThresholdTally:
    """Areas and intersections at T thresholds per unit, with multi-label segmentations.

    A pixel has label k when any of its segmentation channels equals k; label 0 means "no label"
    and is never counted. Arrays are threshold-major: `iou()` is (T, labels, units), so
    `iou()[t]` is what IoUTally.iou() gives at threshold t."""

    unit_area: jax.Array  # (T, units) int32 pixels where the unit exceeds threshold t
    label_area: jax.Array  # (labels,) int32 pixels carrying the label
    intersection: jax.Array  # (T, labels, units) int32
    pixels: jax.Array  # () int32 pixels seen

    @classmethod
    def create(cls, num_units: int, num_labels: int, num_thresholds: int = DEFAULT_NUM_THRESHOLDS
               ) -> "MultiThresholdTally":
        return cls(unit_area=jnp.zeros((num_thresholds, num_units), jnp.int32),
                   label_area=jnp.zeros((num_labels,), jnp.int32),
                   intersection=jnp.zeros((num_thresholds, num_labels, num_units), jnp.int32),
                   pixels=jnp.zeros((), jnp.int32))

    @property
    def num_units(self) -> int:
        return self.unit_area.shape[1]

    @property
    def num_labels(self) -> int:
        return self.label_area.shape[0]

    @property
    def num_thresholds(self) -> int:
        return self.unit_area.shape[0]

    def update(self, activations: jax.Array, thresholds: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
               *, method: str = "auto", max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> "MultiThresholdTally":
        """Add upsampled activations (N, H, W, units), thresholds (units, T) non-decreasing along T,
        and labels (N, channels, H, W) int; masked images are ignored.

        Unit u is on at level t where activation > thresholds[u, t] (NaN is never on). Label ids
        outside [1, num_labels) are ignored. `method`: "histogram" (scatter; CPU and GPU),
        "matmul" (TPU) or "auto". `max_label_sets` bounds the distinct label combinations a
        batch is grouped by (a batch with more is counted per channel instead: same result)."""
        activations = jnp.asarray(activations)
        thresholds = jnp.asarray(thresholds, jnp.float32)
        labels = jnp.asarray(labels)
        t, units = self.num_thresholds, self.num_units
        if activations.ndim != 4 or activations.shape[-1] != units:
            raise ValueError(f"MultiThresholdTally.update: activations must be (N, H, W, {units}), "
                             f"got {activations.shape}")
        if thresholds.shape != (units, t):
            raise ValueError(f"MultiThresholdTally.update: thresholds must be (units, T) = ({units}, {t}), "
                             f"got {thresholds.shape}")
        if labels.ndim != 4 or labels.shape[0] != activations.shape[0] or labels.shape[2:] != activations.shape[1:3]:
            raise ValueError(f"MultiThresholdTally.update: labels must be (N, channels, H, W) = ({activations.shape[0]}, "
                             f"L, {activations.shape[1]}, {activations.shape[2]}), got {labels.shape}")
        if method not in METHODS:
            raise ValueError(f"MultiThresholdTally.update: method must be one of {METHODS}, got {method!r}")
        if not is_traced(thresholds):
            thr = np.asarray(thresholds)
            if (np.diff(thr, axis=1) < 0).any():
                bad = sorted(set(np.nonzero((np.diff(thr, axis=1) < 0).any(1))[0].tolist()))[:10]
                raise ValueError(f"MultiThresholdTally.update: thresholds must not decrease along T "
                                 f"(units {bad} do); pass quantiles at ascending levels")
        if max(self.num_labels + 1, max_label_sets) * (t + 1) * max(units, 1) >= 2 ** 31:
            raise ValueError(f"MultiThresholdTally: {max(self.num_labels + 1, max_label_sets)} labels (or label "
                             f"sets) x {t + 1} levels x {units} units are too many bins for int32 indices; "
                             "tally fewer units at a time")
        if method == "auto":
            method = "matmul" if jax.default_backend() == "tpu" else "histogram"
        return _update(self, activations, thresholds, labels, row_mask(mask, activations.shape[0]),
                       method=method, max_label_sets=int(max_label_sets))

    def merge(self, other: "MultiThresholdTally") -> "MultiThresholdTally":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "MultiThresholdTally":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def at(self, t: int) -> IoUTally:
        """The IoUTally of threshold t alone (e.g. the run's own threshold, for the default labels)."""
        return IoUTally(unit_area=self.unit_area[t], label_area=self.label_area,
                        intersection=self.intersection[t], pixels=self.pixels)

    def iou(self) -> jax.Array:
        """(T, labels, units) IoU = I / (A + S - I); 0 where both areas are empty, and label 0 is 0."""
        inter = self.intersection.astype(jnp.float32)
        union = self.unit_area[:, None, :].astype(jnp.float32) + self.label_area[None, :, None].astype(jnp.float32) - inter
        out = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
        return out.at[:, 0].set(0.0)

    def table(self) -> jax.Array:
        """(2, 2, T, labels, units) joint probabilities over pixels, the original's layout:
        [[P(unit & label), P(unit & not label)], [P(not unit & label), P(neither)]]."""
        n = jnp.maximum(self.pixels, 1).astype(jnp.float32)
        inter = self.intersection.astype(jnp.float32)
        unit = self.unit_area[:, None, :].astype(jnp.float32)
        label = jnp.broadcast_to(self.label_area[None, :, None].astype(jnp.float32), inter.shape)
        return jnp.stack([jnp.stack([inter, unit - inter]),
                          jnp.stack([label - inter, n - unit - label + inter])]) / n

    def mutual_information(self) -> jax.Array:
        """(T, labels, units) mutual information (nats) between the unit being on and the label; label 0 is 0."""
        return mutual_information(self.table()).at[:, 0].set(0.0)

    def mi(self) -> jax.Array:
        """Short for mutual_information()."""
        return self.mutual_information()

    def joint_entropy(self) -> jax.Array:
        """(T, labels, units) joint entropy (nats) of (unit on, label); label 0 is 0."""
        return joint_entropy(self.table()).at[:, 0].set(0.0)

    def iqr(self) -> jax.Array:
        """(T, labels, units) information quality ratio = mutual information / joint entropy."""
        return information_quality_ratio(self.table()).at[:, 0].set(0.0)

    def positive(self) -> jax.Array:
        """(T, labels, units) bool: the unit and the label are positively associated,
        P(unit & label) > P(unit) P(label) (never for label 0)."""
        n = self.pixels.astype(jnp.float32)
        inter = self.intersection.astype(jnp.float32)
        expected = self.unit_area[:, None, :].astype(jnp.float32) * self.label_area[None, :, None].astype(jnp.float32)
        return (inter * n > expected).at[:, 0].set(False)


def _xlogy_terms(joint: jax.Array, ratio: jax.Array) -> jax.Array:
    """joint * log(ratio) with the original's rule: NaN terms (0 * log 0, 0/0) count as 0."""
    term = joint * jnp.log(ratio)
    return jnp.where(jnp.isnan(term), 0.0, term)


def mutual_information(table: jax.Array) -> jax.Array:
    """Mutual information of (2, 2, ...) joint probability tables: sum of p log(p / (row * col)),
    NaN terms as 0, clamped at 0 (as the original's tally.mutual_information)."""
    table = jnp.asarray(table, jnp.float32)
    rows = table.sum(1)
    cols = table.sum(0)
    total = 0.0
    for j in range(2):
        for k in range(2):
            total = total + _xlogy_terms(table[j, k], table[j, k] / (rows[j] * cols[k]))
    return jnp.maximum(total, 0.0)


def joint_entropy(table: jax.Array) -> jax.Array:
    """Joint entropy -sum p log p of (2, 2, ...) tables, NaN terms as 0, clamped at 0."""
    table = jnp.asarray(table, jnp.float32)
    total = 0.0
    for j in range(2):
        for k in range(2):
            total = total + _xlogy_terms(table[j, k], table[j, k])
    return jnp.maximum(-total, 0.0)


def information_quality_ratio(table: jax.Array) -> jax.Array:
    """Mutual information / joint entropy of (2, 2, ...) tables; 0 where that is 0/0."""
    ratio = mutual_information(table) / joint_entropy(table)
    return jnp.where(jnp.isnan(ratio), 0.0, ratio)


def pixel_levels(activations: jax.Array, thresholds: jax.Array) -> jax.Array:
    """(..., units) activations, (units, T) non-decreasing thresholds -> (..., units) int32: how many
    thresholds each activation exceeds (so the unit is on at level t where the result > t)."""
    return (jnp.asarray(activations)[..., None] > thresholds).sum(-1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("method", "max_label_sets"))
def _update(state: MultiThresholdTally, activations, thresholds, labels, mask, *, method: str,
            max_label_sets: int) -> MultiThresholdTally:
    n, h, w, units = activations.shape
    num_labels, t = state.num_labels, state.num_thresholds
    valid_px = jnp.broadcast_to(mask[:, None, None], (n, h, w)).reshape(-1)
    rows = activations.reshape(-1, units)
    # A function, not an array: each consumer computes the levels in its own fusion (a shared
    # array would be computed twice anyway, and once more to materialize it).
    level = lambda: jnp.where(valid_px[:, None], pixel_levels(rows, thresholds), 0)  # noqa: E731
    lab = jnp.moveaxis(labels, 1, -1).reshape(-1, labels.shape[1]).astype(jnp.int32)
    lab = jnp.where(valid_px[:, None], dedup_labels(lab, num_labels), num_labels)
    if method == "matmul":
        inter, unit_area = _counts_matmul(level(), lab, num_labels, t)
    else:
        inter, unit_area = _counts_histogram(level, lab, num_labels, t, max_label_sets)
    area = state.label_area
    for c in range(lab.shape[1]):
        area = area + jnp.bincount(lab[:, c], length=num_labels + 1)[:num_labels].astype(jnp.int32)
    return MultiThresholdTally(unit_area=state.unit_area + unit_area, label_area=area,
                               intersection=state.intersection + inter,
                               pixels=state.pixels + valid_px.sum(dtype=jnp.int32))


def _exceedance(hist: jax.Array) -> jax.Array:
    """(..., T, units) counts of level == t + 1 -> counts of level > t (reverse cumulative sum)."""
    rows = [hist[..., -1, :]]
    for t in range(hist.shape[-2] - 2, -1, -1):  # a few adds: cheaper than cumsum on CPU
        rows.append(rows[-1] + hist[..., t, :])
    return jnp.stack(rows[::-1], axis=-2)


def _counts_histogram(level: Callable[[], jax.Array], lab, num_labels: int, t: int, max_sets: int):
    """Exact counts by scatter: (T, labels, units) intersections and (T, units) unit areas.

    Bins keep level 0 (off at every threshold) and the "no label" id, and are dropped after the
    scatter: on CPU a scatter with out-of-range (dropped) indices costs far more."""
    p, units = jax.eval_shape(level).shape
    channels = lab.shape[1]
    units_idx = jnp.arange(units, dtype=jnp.int32)
    radix = num_labels + 1  # label ids 1 .. num_labels - 1, and num_labels for "none"
    levels = t + 1

    def by_channels(_):
        # One scatter of (label, level, unit) per channel, and one of (level, unit).
        level_ = level()
        size = radix * levels * units
        inter = jnp.zeros((size,), jnp.int32)
        for c in range(channels):
            inter = inter.at[(lab[:, c:c + 1] * levels + level_) * units + units_idx].add(1)
        hist = jnp.zeros((levels * units,), jnp.int32).at[level_ * units + units_idx].add(1)
        inter = _exceedance(inter.reshape(radix, levels, units)[:num_labels, 1:])
        return inter.transpose(1, 0, 2), _exceedance(hist.reshape(levels, units)[1:])

    if not packable(num_labels, channels):
        return by_channels(None)
    groups = label_sets(lab, num_labels, max_sets)
    # The bin of every (pixel, unit): (label set, level, unit). Computed here, outside the cond,
    # XLA makes it a (pixels, units) array: fused into the scatter (whose indices are flat) the
    # level comparisons would not vectorize on CPU.
    set_bins = (groups.set_id[:, None] * levels + level()) * units + units_idx

    def by_sets(_):
        hist = jnp.zeros((max_sets * levels * units,), jnp.int32).at[set_bins].add(1)
        hist = hist.reshape(max_sets, levels, units)[:, 1:].reshape(max_sets, t * units)
        inter = _exceedance(add_into_labels(hist, groups.labels, num_labels).reshape(num_labels, t, units))
        return inter.transpose(1, 0, 2), _exceedance(hist.sum(0).reshape(t, units))

    return jax.lax.cond(groups.fits, by_sets, by_channels, None)


def _counts_matmul(level, lab, num_labels: int, t: int, chunk: int = MATMUL_CHUNK):
    """Exact counts by thermometer matmuls (labels x pixels) @ (pixels x T*units) over chunks of
    pixels: 0/1 in bfloat16, each chunk's sums (< 2^24) exact in float32, then added as int32."""
    p, units = level.shape
    chunks = -(-p // chunk)
    pad = chunks * chunk - p
    level = jnp.pad(level, ((0, pad), (0, 0))).reshape(chunks, chunk, units)  # padding: level 0, off
    lab = jnp.pad(lab, ((0, pad), (0, 0)), constant_values=num_labels).reshape(chunks, chunk, -1)
    steps = jnp.arange(t, dtype=jnp.int32)

    def body(carry, xs):
        lev, lb = xs
        multi_hot = sum(jax.nn.one_hot(lb[:, c], num_labels + 1, dtype=jnp.bfloat16) for c in range(lb.shape[1]))
        thermo = (lev[:, None, :] > steps[None, :, None]).astype(jnp.bfloat16).reshape(chunk, t * units)
        inter = jnp.dot(multi_hot[:, :num_labels].T, thermo, preferred_element_type=jnp.float32)
        area = jnp.sum(thermo, axis=0, dtype=jnp.float32)
        return (carry[0] + inter.astype(jnp.int32), carry[1] + area.astype(jnp.int32)), None

    init = (jnp.zeros((num_labels, t * units), jnp.int32), jnp.zeros((t * units,), jnp.int32))
    (inter, unit_area), _ = jax.lax.scan(body, init, (level, lab))
    return inter.reshape(num_labels, t, units).transpose(1, 0, 2), unit_area.reshape(t, units)
