"""Streaming statistics as mergeable pytrees: create, update with a batch, merge, read out.

Every state has fixed shapes, and `update` / `merge` are pure and jit-able; `all_reduce(axis)`
merges per-device states inside `jax.shard_map`.
"""
from jaxdissect.stats.counts import Bincount, IoUTally
from jaxdissect.stats.formula_tally import Beam, FormulaTally
from jaxdissect.stats.io import load, save
from jaxdissect.stats.moments import CrossCovariance, Moments
from jaxdissect.stats.quantile import QuantileSketch
from jaxdissect.stats.thresholds import MultiThresholdTally, level_index, threshold_levels
from jaxdissect.stats.topk import TopK

__all__ = ["QuantileSketch", "TopK", "Moments", "CrossCovariance", "Bincount", "IoUTally", "MultiThresholdTally",
           "FormulaTally", "Beam",
           "threshold_levels", "level_index", "save", "load"]
