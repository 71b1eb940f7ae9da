"""What the experiments share: class names of a model, checks that a source's classes match
them, and class names resolved to ids. (Their result folders are named by jaxdissect.folder_names.)"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

def class_names(model: Any, num_classes: int) -> tuple[str, ...]:
    """The model's class names when it has one per output, else the ids as strings."""
    if model.labels is not None and len(model.labels) == num_classes:
        return tuple(model.labels)
    return tuple(str(i) for i in range(num_classes))


def check_source_classes(source: Any, names: Sequence[str], what: str) -> None:
    """ValueError when a labelled source has another number of classes than the model predicts."""
    classes = getattr(source, "classes", None)
    if classes is not None and len(classes) != len(names):
        raise ValueError(f"the {what} images have {len(classes)} classes but the model predicts "
                         f"{len(names)}: class ids would not match")


def default_dataset(model: str) -> str:
    """An experiment's dataset when none is named: 'scenes' for the toy models and your own
    (package.module:factory), 'places' otherwise."""
    return "scenes" if model.startswith("toy") or ":" in model else "places"


def resolve_classes(names: Sequence[str | int], class_names: Sequence[str]) -> tuple[int, ...]:
    """Class ids of names (or ids); a clear error names an unknown class."""
    out = []
    for name in names:
        if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()):
            i = int(name)
            if not 0 <= i < len(class_names):
                raise ValueError(f"class id {i} out of range 0..{len(class_names) - 1}")
        elif name in class_names:
            i = list(class_names).index(name)
        else:
            raise ValueError(f"unknown class {name!r}; classes: {', '.join(class_names)}")
        out.append(i)
    return tuple(out)


__all__ = ["class_names", "check_source_classes", "default_dataset", "resolve_classes"]
