"""Reading published PyTorch checkpoints without torch, verified downloads, the download cache,
and the key maps that rename a checkpoint's tensors into Flax variables.

A leaf: nothing here imports jaxdissect (save the command line, `python -m weight_conversion`).
Converting a registered model lives with the models (jaxdissect.models.conversion).
`download(url, dest, md5=..., sha256_prefix=...)` is weight_conversion.downloads.download.
"""
from __future__ import annotations

from weight_conversion.downloads import download
from weight_conversion.errors import DownloadError, KeyMapError, PthReadError
from weight_conversion.pth_reader import read_pth

__all__ = ["read_pth", "download", "PthReadError", "KeyMapError", "DownloadError"]
