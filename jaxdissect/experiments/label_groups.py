"""Shape versus surface: which label categories describe a thing's form and which its surface."""
from __future__ import annotations

SHAPE_CATEGORIES = ("object", "part")
SURFACE_CATEGORIES = ("material", "color")


def group_of(category: str) -> str | None:
    """'shape' for object/part labels, 'surface' for material/color, None otherwise."""
    if category in SHAPE_CATEGORIES:
        return "shape"
    if category in SURFACE_CATEGORIES:
        return "surface"
    return None
