"""Where downloaded checkpoints and converted weights live: $JAXDISSECT_HOME, else
~/.cache/jaxdissect (read at every call, so tests and users can redirect it)."""
from __future__ import annotations

import os
import pathlib
import urllib.parse

ENV_VAR = "JAXDISSECT_HOME"


def cache_dir() -> pathlib.Path:
    """The root of the cache (not created here)."""
    root = os.environ.get(ENV_VAR)
    if root:
        return pathlib.Path(root).expanduser()
    return pathlib.Path("~/.cache/jaxdissect").expanduser()


def downloads_dir() -> pathlib.Path:
    """Downloaded original files (.pth checkpoints, zips), under their published names."""
    return cache_dir() / "downloads"


def weights_dir(name: str) -> pathlib.Path:
    """The converted weights folder of model `name` (a weights_io folder)."""
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise ValueError(f"invalid weights folder name {name!r}")
    return cache_dir() / "weights" / name


def download_path(url: str) -> pathlib.Path:
    """Where the file at `url` is kept once downloaded: downloads_dir()/<its file name>."""
    fname = os.path.basename(urllib.parse.urlparse(url).path)
    if not fname:
        raise ValueError(f"URL {url!r} does not end in a file name")
    return downloads_dir() / fname
