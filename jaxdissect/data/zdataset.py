"""Latent samples for generators, as the original drew them."""
from __future__ import annotations

import numpy as np


def standard_z_sample(size: int, depth: int, seed: int = 1) -> np.ndarray:
    """(size, depth) float32 from numpy RandomState(seed).standard_normal, so every prefix is
    the same for any size (the original's z for dissection: seed 1, 10,000 samples)."""
    return np.random.RandomState(seed).standard_normal(size * depth).reshape(size, depth).astype(np.float32)
