"""Per-class precision, recall, accuracy, true-negative rate and balanced accuracy from counts.

The counts are additive, so they merge exactly across batches and devices (psum). Definitions are
the original's: TN_c = (N - true_c) - (pred_c - TP_c); precision = TP/pred; recall = TP/true;
accuracy = (TP + TN)/N; TNR = TN/(N - true); balanced accuracy = (recall + TNR)/2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ClassCounts:
    true: jax.Array  # (classes,) int32 samples of each class
    pred: jax.Array  # (classes,) int32 samples predicted as each class
    correct: jax.Array  # (classes,) int32 true positives
    total: jax.Array  # () int32

    @classmethod
    def create(cls, num_classes: int) -> "ClassCounts":
        z = jnp.zeros((num_classes,), jnp.int32)
        return cls(true=z, pred=z, correct=z, total=jnp.zeros((), jnp.int32))

    def update(self, predictions: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> "ClassCounts":
        """Add predicted and true class ids (N,); rows where mask is False are ignored."""
        n = self.true.shape[0]
        predictions, labels = jnp.asarray(predictions, jnp.int32), jnp.asarray(labels, jnp.int32)
        w = jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
        count = lambda ids, weights: jnp.zeros((n,), jnp.int32).at[ids].add(weights, mode="drop")  # noqa: E731
        return ClassCounts(true=self.true + count(labels, w), pred=self.pred + count(predictions, w),
                           correct=self.correct + count(labels, w * (predictions == labels)),
                           total=self.total + w.sum())

    def merge(self, other: "ClassCounts") -> "ClassCounts":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "ClassCounts":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def metrics(self) -> dict[str, jax.Array]:
        """precision, recall, accuracy, true_negative_rate, balanced_accuracy: (classes,) each."""
        f = lambda a: a.astype(jnp.float32)  # noqa: E731
        tp, true, pred, n = f(self.correct), f(self.true), f(self.pred), f(self.total)
        tn = (n - true) - (pred - tp)
        div = lambda a, b: jnp.where(b > 0, a / jnp.where(b > 0, b, 1), jnp.nan)  # noqa: E731
        recall, tnr = div(tp, true), div(tn, n - true)
        return {"precision": div(tp, pred), "recall": recall, "accuracy": div(tp + tn, n),
                "true_negative_rate": tnr, "balanced_accuracy": (recall + tnr) / 2}
