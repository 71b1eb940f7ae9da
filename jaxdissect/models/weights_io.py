"""Weights on disk: one folder holding an orbax checkpoint of the Flax variables and a
`meta.json` with the model name and module config, so a module can be rebuilt without the
original checkpoint."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from jaxdissect.atomic import atomic_directory, existing_version
from jaxdissect.stats.io import local_checkpointer

META_FILE = "meta.json"
STATE_DIR = "variables"


def save_weights(directory: str | os.PathLike, name: str, variables: Any,
                 config: Mapping[str, Any], **meta: Any) -> None:
    """Write variables + meta atomically: build in a temporary sibling folder, then rename."""
    with atomic_directory(directory) as tmp:
        tree = jax.tree.map(np.asarray, variables)
        with local_checkpointer() as ckpt:
            ckpt.save(os.path.join(tmp, STATE_DIR), tree)
            ckpt.wait_until_finished()
        # orbax's marker names the temporary path; shipped weights must not carry machine paths
        marker = os.path.join(tmp, STATE_DIR, "commit_success.txt")
        if os.path.exists(marker):
            os.remove(marker)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump({"model": name, "config": dict(config), **meta}, f, indent=1)


def read_meta(directory: str | os.PathLike) -> dict:
    """The meta.json of a weights folder, with a clear error when it is not one."""
    try:
        directory = existing_version(directory)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights folder {os.fspath(directory)!r} does not exist") from None
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(directory)!r} is not a jaxdissect weights folder (no {META_FILE})")
    with open(path) as f:
        return json.load(f)


def load_weights(directory: str | os.PathLike) -> tuple[Any, dict, dict]:
    """Return (variables as numpy arrays, module config, meta) from a weights folder."""
    meta = read_meta(directory)
    directory = existing_version(directory)
    with local_checkpointer() as ckpt:
        variables = ckpt.restore(os.path.join(os.path.abspath(os.fspath(directory)), STATE_DIR))
    return variables, dict(meta.get("config", {})), meta
