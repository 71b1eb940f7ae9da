"""Errors of the conversion layer, each naming the file, URL or key that is wrong."""


class PthReadError(ValueError):
    """A .pth file is corrupt, truncated, unsupported or unsafe."""


class KeyMapError(ValueError):
    """A checkpoint's keys or shapes do not match the model's key map."""


class DownloadError(RuntimeError):
    """A download failed or did not match its checksum; nothing was left behind."""
