"""Datasets: the embedded scenes world (synthetic images with exact segmentations)."""
from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS, Scenes, render_scene, scene_class_of

__all__ = ["SCENE_CLASSES", "SCENE_LABELS", "Scenes", "render_scene", "scene_class_of"]
