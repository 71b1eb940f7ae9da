"""Network dissection: per-unit thresholds, top images and IoU with segmentation labels.

`steps` holds the pure per-batch functions (compose them in your own JAX code); `dissect(config)`
runs the whole resumable, sharded pipeline and writes the reports.
"""
from jaxdissect.dissect.pipeline import DissectConfig, LayerResult, dissect, result_dir
from jaxdissect.dissect.steps import ActivationStats, unit_indicator, update_activation_stats, update_iou

__all__ = ["DissectConfig", "LayerResult", "dissect", "result_dir", "ActivationStats", "update_activation_stats",
           "update_iou", "unit_indicator"]
