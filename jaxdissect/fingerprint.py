"""Fingerprints: what made a stored thing, as canonical JSON and its digest.

Every checkpoint, cache and finished result carries the fingerprint of the settings and inputs
that made it (samples, model and weights digest, layer, segmenter and its digest, quantile, ...).
A stored thing whose fingerprint differs from what the run expects is recomputed or refused,
never mixed in; `differences` says what changed, for the message.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import jax
import numpy as np

Fingerprint = Mapping[str, Any]


def canonical(value: Any) -> Any:
    """A JSON-ready copy of `value`: tuples as lists, numpy scalars as Python numbers, floats
    as their shortest repr (so 0.01 stays 0.01), mapping keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return canonical(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__}: {value!r}")


def to_json(fingerprint: Fingerprint) -> str:
    """The canonical JSON text of a fingerprint (sorted keys, no spaces)."""
    return json.dumps(canonical(fingerprint), sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(fingerprint: Fingerprint) -> str:
    """The sha256 hex digest of a fingerprint's canonical JSON."""
    return hashlib.sha256(to_json(fingerprint).encode()).hexdigest()


def array_digest(tree: Any) -> str:
    """sha256 of a pytree of arrays (structure, shapes, dtypes and bytes): a weights digest."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    h.update(str(jax.tree_util.tree_structure(tree)).encode())
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def differences(stored: Fingerprint | None, expected: Fingerprint, prefix: str = "") -> list[str]:
    """Human-readable differences 'key: stored -> expected' between two fingerprints."""
    if stored is None:
        return [f"{prefix or 'fingerprint'}: none stored"]
    stored, expected = canonical(stored), canonical(expected)
    out = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, name + "."))
        elif a != b:
            out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
