"""report.json in the original's format, written atomically.

{"header": {"name", "image"}, "units": [{"image", "unit", "iou", "label", "cat", ...}]}, indent 1.
Like the original's FloatEncoder, non-finite floats become the strings "NaN", "Infinity" and
"-Infinity", so the file stays valid JSON; `read_report_json` turns them back into floats.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from jaxdissect.atomic import atomic_write_text, existing_version

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# Keys whose values are text: a label that is literally "NaN" stays a string when read back.
TEXT_KEYS = frozenset({"name", "image", "label", "cat", "category", "title", "html"})
UNIT_KEYS = ("image", "unit", "iou", "label", "cat")


def to_json_value(value: Any) -> Any:
    """Plain JSON data: numpy values become Python ones, non-finite floats become strings."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist())
    if isinstance(value, np.generic):
        return to_json_value(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"report.json: cannot write a value of type {type(value).__name__}: {value!r}")


def from_json_value(value: Any, key: str | None = None) -> Any:
    """Inverse of `to_json_value` for the non-finite floats (text keys are left alone)."""
    if isinstance(value, dict):
        return {k: from_json_value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v, key) for v in value]
    if isinstance(value, str) and key not in TEXT_KEYS and value in NONFINITE:
        return NONFINITE[value]
    return value


def dumps_report(report: dict) -> str:
    """The report as the original wrote it: JSON with indent=1."""
    return json.dumps(to_json_value(report), indent=1, allow_nan=False)


def make_report(header: dict, units: list[dict]) -> dict:
    """Check the header and unit records and assemble the report dict."""
    if not isinstance(header, dict) or "name" not in header:
        raise ValueError(f"report.json: header must be a dict with a 'name', got {header!r}")
    checked = []
    for i, unit in enumerate(units):
        missing = [k for k in UNIT_KEYS if k not in unit]
        if missing:
            raise ValueError(f"report.json: unit record {i} lacks {missing}: {unit!r}")
        checked.append(dict(unit))
    return {"header": dict(header), "units": checked}


def write_report_json(path: str | os.PathLike, header: dict, units: list[dict]) -> None:
    """Write report.json atomically; each unit needs image, unit, iou, label, cat (extra keys kept)."""
    atomic_write_text(path, dumps_report(make_report(header, units)) + "\n")


def read_report_json(path: str | os.PathLike) -> dict:
    """Read a report.json written by `write_report_json` (or by the original)."""
    path = existing_version(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "header" not in data or "units" not in data:
        raise ValueError(f"{path!r} is not a dissection report (needs 'header' and 'units')")
    return from_json_value(data)
