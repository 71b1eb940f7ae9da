"""Streaming statistics as mergeable pytrees: create, update with a batch, merge, read out.

Every state has fixed shapes, and `update` / `merge` are pure and jit-able; `all_reduce(axis)`
merges per-device states inside `jax.shard_map`. `exact_quantiles` turns a sketch into exact
quantiles when the data can be replayed.
"""
from jaxdissect.stats.agreement import MaskAgreement
from jaxdissect.stats.counts import Bincount, IoUTally, UnitCounts
from jaxdissect.stats.formula_tally import Beam, FormulaTally
from jaxdissect.stats.io import load, save
from jaxdissect.stats.moments import CrossCovariance, Moments
from jaxdissect.stats.quantile import QuantileSketch
from jaxdissect.stats.records import SampleRecords
from jaxdissect.stats.refine import (QuantileRefinement, RefinementPlan, ReplayMismatchError, exact_order_statistics,
                                     exact_quantiles, target_ranks)
from jaxdissect.stats.thresholds import MultiThresholdTally, level_index, threshold_levels
from jaxdissect.stats.topk import TopK

__all__ = ["QuantileSketch", "TopK", "Moments", "CrossCovariance", "Bincount", "IoUTally", "save", "load",
           "QuantileRefinement", "RefinementPlan", "exact_quantiles", "exact_order_statistics", "target_ranks",
           "ReplayMismatchError", "UnitCounts", "MaskAgreement", "MultiThresholdTally", "FormulaTally", "Beam",
           "threshold_levels", "level_index", "SampleRecords"]
