"""Segmenters: multi-label segmentation maps for labelling units."""
