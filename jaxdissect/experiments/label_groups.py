"""Shape versus surface: which label categories describe a thing's form and which its surface."""
from __future__ import annotations

import numpy as np

SHAPE_CATEGORIES = ("object", "part")
SURFACE_CATEGORIES = ("material", "color")


def group_of(category: str) -> str | None:
    """'shape' for object/part labels, 'surface' for material/color, None otherwise."""
    if category in SHAPE_CATEGORIES:
        return "shape"
    if category in SURFACE_CATEGORIES:
        return "surface"
    return None


def in_group(groups: np.ndarray, group: str) -> np.ndarray:
    """(units,) bool: units whose group (e.g. from shape_bias.unit_groups) is `group`; 'surface'
    also takes its split subgroups ('surface_separable', 'surface_confined')."""
    return np.asarray([g == group or (group == "surface" and isinstance(g, str) and g.startswith("surface_"))
                       for g in groups], bool)
