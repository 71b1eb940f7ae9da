"""Network dissection: per-unit thresholds, top images and IoU with segmentation labels.

`steps` holds the pure per-batch functions (compose them in your own JAX code); `dissect(config)`
runs the whole resumable, sharded pipeline and writes the reports; `DissectRun` is the resolved,
frozen description of one dissection that its stages share.
"""
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.dissect.pipeline import FinishedWithOtherSettingsError, LayerResult, dissect, layer_stats
from jaxdissect.dissect.run import DissectRun, result_dir
from jaxdissect.dissect.steps import (ActivationStats, unit_indicator, update_activation_stats, update_iou,
                                      update_refinement)

__all__ = ["DissectConfig", "DissectRun", "LayerResult", "dissect", "result_dir", "ActivationStats",
           "update_activation_stats", "update_iou", "update_refinement", "unit_indicator",
           "FinishedWithOtherSettingsError", "layer_stats"]
