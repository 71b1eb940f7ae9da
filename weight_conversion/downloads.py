"""Verified downloads: stream to a temporary file beside the destination, check the size and
the checksum, then rename. A failed or mismatched download leaves nothing behind.
`weight_conversion.download` is this module's `download` function.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request

from weight_conversion import cache
from weight_conversion.errors import DownloadError

CHUNK = 1 << 20
_HUB_HASH = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def sha256_prefix_from_name(url_or_name: str) -> str | None:
    """The torch-hub style hash fragment of a file name ('vgg16_places365-0bafbc55.pth' -> '0bafbc55')."""
    m = _HUB_HASH.search(os.path.basename(url_or_name))
    return m.group(1) if m else None


def file_hashes(path: str | os.PathLike) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, read in chunks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def check_hash(path: str | os.PathLike, md5: str | None = None, sha256_prefix: str | None = None) -> str | None:
    """None when the file matches the given hashes, else a sentence saying what differs."""
    if md5 is None and sha256_prefix is None:
        return None
    got_md5, got_sha = file_hashes(path)
    if md5 is not None and got_md5 != md5.lower():
        return f"md5 is {got_md5}, expected {md5}"
    if sha256_prefix is not None and not got_sha.startswith(sha256_prefix.lower()):
        return f"sha256 is {got_sha}, expected it to start with {sha256_prefix}"
    return None


def _manual_hint(url: str, dest: str) -> str:
    return (f"To supply the file by hand, fetch {url} yourself and put it at {dest}, or pass a local copy "
            "with --pth FILE (python -m weight_conversion) or weights=FILE (jaxdissect.models.load).")


def download(url: str, dest: str | os.PathLike, md5: str | None = None, sha256_prefix: str | None = None,
             *, progress: bool = True, timeout: float = 60.0) -> str:
    """Download `url` to `dest` (a file path), verifying `md5` and/or `sha256_prefix` when given.

    Streams into a hidden temporary file in dest's folder and renames it into place only after
    the length and checksum check out; on any failure the temporary file is removed and a
    DownloadError names the URL and how to supply the file by hand. Returns dest.
    """
    dest = os.path.abspath(os.fspath(dest))
    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part", dir=folder)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                got = _stream(resp, out, total, os.path.basename(dest), progress)
            if total is not None and got != total:
                raise DownloadError(f"download of {url} failed: connection closed after {got} of {total} bytes. "
                                    + _manual_hint(url, dest))
        except DownloadError:
            raise
        except urllib.error.HTTPError as e:
            raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}. "
                                + _manual_hint(url, dest)) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"download of {url} failed: {reason}. " + _manual_hint(url, dest)) from e
        problem = check_hash(tmp, md5, sha256_prefix)
        if problem:
            raise DownloadError(f"download of {url} does not match its checksum ({problem}); the file was "
                                "discarded. " + _manual_hint(url, dest))
        os.replace(tmp, dest)
        return dest
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _stream(resp, out, total: int | None, desc: str, progress: bool) -> int:
    from tqdm.auto import tqdm

    got = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=not progress, leave=False) as bar:
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                return got
            out.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))


def fetch_cached(url: str, md5: str | None = None, sha256_prefix: str | None = None) -> str:
    """The file at `url` in the download cache (cache.download_path), downloading and verifying
    it when absent; a cached file that fails its checksum is refused (DownloadError), not replaced."""
    path = cache.download_path(url)
    if path.is_file():  # downloaded before, or put there by hand
        problem = check_hash(path, md5, sha256_prefix)
        if problem is None:
            return str(path)
        raise DownloadError(f"{path} does not match the checksum of {url} ({problem}); delete it to "
                            "download it again, or pass it with --pth FILE / weights=FILE to convert it unchecked")
    return download(url, path, md5=md5, sha256_prefix=sha256_prefix)
