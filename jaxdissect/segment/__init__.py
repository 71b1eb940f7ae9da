"""Segmenters: multi-label segmentation maps for labelling units.

`load_segmenter(name)` gives the original's segmenters by their --seg names (net, netp, netq,
netpq, netpqc); `jaxdissect.segment.toy` has the embedded world's segmenters.
"""
from jaxdissect.segment.base import Segmenter, SegmentLabels, merged_labels
from jaxdissect.segment.merge import MergedSegmenter, load_segmenter

__all__ = ["Segmenter", "SegmentLabels", "merged_labels", "MergedSegmenter", "load_segmenter"]
