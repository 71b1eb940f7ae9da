"""Places365 val, as the original used it: the zip published with the original, fetched once
into the cache (md5-checked) and unpacked atomically. Give an image folder with --dataset PATH
to use a copy you already have."""
from __future__ import annotations

import os
import zipfile

from jaxdissect.atomic import atomic_directory
from weight_conversion.cache import cache_dir, download_path
from weight_conversion.downloads import download

PLACES_URL = "https://dissect.csail.mit.edu/datasets/places_{split}.zip"
PLACES_MD5 = {"val": "593bbc21590cf7c396faac2e600cd30c", "train": "d1db6ad3fc1d69b94da325ac08886a01"}


def is_places365(dataset: str) -> bool:
    """Whether a --dataset names Places365: the original's download or a tfds places365 dataset."""
    return dataset == "places" or dataset.startswith("tfds:places365")


def places_dir(split: str = "val") -> str:
    return os.path.join(cache_dir(), "datasets", "places", split)


def ensure_places_val(split: str = "val", url: str | None = None) -> str:
    """The folder of Places365 `split` images, downloading and unpacking it on first use."""
    target = places_dir(split)
    if os.path.isdir(target):
        return target
    url = url or PLACES_URL.format(split=split)
    archive = download_path(url)
    if not archive.exists():
        download(url, archive, md5=PLACES_MD5.get(split))
    try:
        with zipfile.ZipFile(archive) as z, atomic_directory(target) as tmp:
            for member in z.namelist():
                if member.startswith("/") or ".." in member.split("/"):
                    raise ValueError(f"{archive}: unsafe path {member!r} in the archive")
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive} is not a valid zip file ({e}); delete it to download again") from None
    return target
