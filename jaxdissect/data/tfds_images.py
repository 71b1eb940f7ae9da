"""A tensorflow-datasets image dataset read through `tfds.data_source` (random access, no
TensorFlow), prepared like an image folder: e.g. `places365_small` validation, the original's
Places365 val at 256 x 256. Needs the `tfds` extra and the dataset already prepared in the tfds
data dir ($TFDS_DATA_DIR or `data_dir`); the samples keep tfds's order."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from jaxdissect.data.image_folder import prepare_image


def parse_tfds_name(dataset: str) -> tuple[str, str] | None:
    """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT) with SPLIT defaulting to 'validation'; None otherwise."""
    if not dataset.startswith("tfds:"):
        return None
    parts = dataset[len("tfds:"):].split(":")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError(f"--dataset {dataset!r}: expected tfds:NAME or tfds:NAME:SPLIT")
    return parts[0], parts[1] if len(parts) == 2 else "validation"


def open_data_source(name: str, split: str, data_dir: str | None = None) -> Any:
    """tfds.data_source(name, split), with errors that say what is missing and how to get it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("the tfds dataset source needs tensorflow-datasets: pip install 'jaxdissect[tfds]'") from None
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for a missing or unprepared dataset
        raise FileNotFoundError(
            f"tfds dataset {name!r} split {split!r} is not readable ({type(e).__name__}: {e}); prepare it once "
            f"with `tfds build {name}` (needs TensorFlow) into $TFDS_DATA_DIR, or use --dataset places / a folder"
        ) from None


class TfdsImages:
    """Random-access, prepared images of a tfds data source; `batch(indices)` like ImageFolder's."""

    def __init__(self, data: Any, crop: int = 224, resize: int = 256):
        self.data = data
        self.crop, self.resize = int(crop), int(resize)
        self.classes = tuple(_label_names(data))

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: Sequence[int]) -> dict:
        """image uint8 (N, crop, crop, 3), label (N,), ok (N,) and errors {index: message}."""
        images = np.zeros((len(indices), self.crop, self.crop, 3), np.uint8)
        labels = np.full(len(indices), -1, np.int32)
        ok = np.ones(len(indices), bool)
        errors = {}
        for j, i in enumerate(indices):
            try:
                record = self.data[int(i)]
                images[j] = prepare_image(Image.fromarray(_rgb_array(record["image"])), self.resize, self.crop)
                labels[j] = int(record.get("label", -1))
            except Exception as e:  # a corrupt record is reported, never fatal
                ok[j] = False
                errors[int(i)] = f"record {int(i)}: {type(e).__name__}: {e}"
        return {"image": images, "label": labels, "ok": ok, "errors": errors}


def _rgb_array(image: Any) -> np.ndarray:
    """A decoded tfds image (H, W, 1 or 3 or 4) as uint8 for PIL."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 (H, W, 1|3|4) image, got {a.dtype} {a.shape}")
    return a[:, :, 0] if a.shape[2] == 1 else a


def _label_names(data: Any) -> list[str]:
    try:
        return list(data.dataset_info.features["label"].names)
    except (AttributeError, KeyError, TypeError):
        return []
