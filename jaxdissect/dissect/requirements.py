"""Every file a dissection will download, and one short message naming the missing ones.

Without network access a command needs its files put by hand; the message says, for each file it
still lacks, where it comes from, where to put it, and the flag that avoids it.
"""
from __future__ import annotations

import dataclasses
import os

from jaxdissect.config_error import UserError
from jaxdissect.data.places import PLACES_URL, places_dir
from jaxdissect.dissect.config import DissectConfig
from jaxdissect.models import get_spec
from jaxdissect.models.weights_io import META_FILE
from jaxdissect.segment import color, upp
from jaxdissect.segment.merge import SEGMENTER_NAMES
from weight_conversion import cache


@dataclasses.dataclass(frozen=True)
class NeededFile:
    """A file a command downloads on first use."""

    url: str
    path: str  # where it goes (or is looked for)
    what: str  # what it is
    instead: str  # how to do without the download


class MissingFilesError(UserError):
    """Files a command needs could not be downloaded; the message lists every one still missing."""


def needed_files(config: DissectConfig, dataset: str | None) -> list[NeededFile]:
    """The files `config` would download that are not on disk yet (for `dataset`, the resolved one)."""
    out = []
    name = config.model_name
    spec = get_spec(name)
    if config.weights is None and spec.url and not (cache.weights_dir(name) / META_FILE).is_file():
        path = cache.download_path(spec.url)
        if not path.is_file():
            out.append(NeededFile(spec.url, str(path), f"the {name} checkpoint",
                                  "or pass --weights FILE.pth (a copy you have) or a converted weights folder"))
    if dataset == "places" and not os.path.isdir(places_dir("val")):
        url = PLACES_URL.format(split="val")
        path = cache.download_path(url)
        if not path.is_file():
            out.append(NeededFile(url, str(path), "Places365 val (the original's zip, 36,500 images)",
                                  "or pass --dataset FOLDER (a folder of images)"))
    seg = config.seg
    if seg is None and spec.kind != "generator" and dataset not in ("scenes",) and not name.startswith("toy_"):
        seg = "netpqc"
    if seg in SEGMENTER_NAMES:
        folders = [(upp.UPP_DIRNAME, upp.UPP_URL, upp.UPP_FILES, "the unified perceptual parsing segmenter")]
        if "c" in seg[3:]:
            folders.append((color.COLOR_DIRNAME, color.COLOR_URL, color.COLOR_FILES, "the colour segmenter"))
        for dirname, base, files, what in folders:
            folder = cache.cache_dir() / "segmodel" / dirname
            for f in files:
                if not (folder / f).is_file():
                    out.append(NeededFile(base + f, str(folder / f), f"{what} ({f})",
                                          "or use --seg scenes / --seg toy on the embedded scenes world"))
    return out


def missing_files_message(needed: list[NeededFile], cause: str) -> str:
    """One message: why, then each missing file with where to put it and the alternative."""
    lines = [f"{cause}. This command needs {len(needed)} file(s) that are not here yet; without network access, "
             "download each on another machine and put it at the path shown:"]
    for n in needed:
        lines.append(f"  - {n.what}: {n.url}\n      -> {n.path}  ({n.instead})")
    lines.append(f"Files are kept under $JAXDISSECT_HOME (now {cache.cache_dir()}).")
    return "\n".join(lines)
