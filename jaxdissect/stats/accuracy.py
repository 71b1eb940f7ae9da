"""Measuring a quantile sketch against exact ranks: adversarial streams and rank error.

Used by the tests and by scripts/bench_stats.py, so that both report the same figures.
"""
from __future__ import annotations

import numpy as np

STREAM_NAMES = ("ascending", "descending", "lognormal", "relu", "ties", "constant")


def adversarial_streams(n: int, seed: int = 0) -> np.ndarray:
    """(n, 6) float32 columns: sorted ascending, sorted descending (heavy-tailed), lognormal,
    ReLU-like (~80% exact zeros), many ties (40 distinct values), and a constant."""
    rng = np.random.default_rng(seed)
    ascending = np.sort(rng.normal(3.0, 2.0, n))
    descending = np.sort(rng.standard_cauchy(n))[::-1]
    lognormal = rng.lognormal(0.0, 1.5, n)
    relu = np.maximum(rng.normal(0, 1, n), 0) * (rng.random(n) < 0.4)  # P(x > 0) = 0.2
    ties = rng.choice(rng.normal(0, 1, 40), size=n)
    constant = np.full(n, 0.3)
    return np.stack([ascending, descending, lognormal, relu, ties, constant], 1).astype(np.float32)


def rank_error(sorted_values: np.ndarray, value: float, q: float) -> float:
    """How far (as a fraction of n) the rank of `value` is from the asked rank q * (n - 1).

    A value present in the data may sit anywhere in its block of ties; a value between two
    samples sits between their ranks."""
    n = len(sorted_values)
    below = np.searchsorted(sorted_values, value, "left")
    upto = np.searchsorted(sorted_values, value, "right")
    present = upto > below
    lo = below if present else below - 1
    hi = upto - 1 if present else below
    r = q * (n - 1)
    return float(max(0.0, lo - r, r - hi) / n)


def max_rank_errors(sorted_data: np.ndarray, estimates: np.ndarray, qs) -> np.ndarray:
    """(units, len(qs)) rank errors of per-unit estimates against exact sorted columns."""
    return np.array([[rank_error(sorted_data[:, u], estimates[u, j], q) for j, q in enumerate(qs)]
                     for u in range(sorted_data.shape[1])])
