"""Reading published PyTorch checkpoints without torch, and converting them to Flax.

`convert_checkpoint` is imported lazily (it needs jax and the model registry), so `read_pth`
works without jax and model modules can import the key maps without import cycles.
`download(url, dest, md5=..., sha256_prefix=...)` is weight_conversion.downloads.download.
"""
from __future__ import annotations

from typing import Any

from weight_conversion.downloads import download
from weight_conversion.errors import DownloadError, KeyMapError, PthReadError
from weight_conversion.pth_reader import read_pth

__all__ = ["read_pth", "convert_checkpoint", "download", "PthReadError", "KeyMapError", "DownloadError"]


def __getattr__(name: str) -> Any:
    if name == "convert_checkpoint":
        from weight_conversion.convert import convert_checkpoint

        return convert_checkpoint
    raise AttributeError(f"module 'weight_conversion' has no attribute {name!r}")
