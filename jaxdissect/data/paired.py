"""Paired image sources: the same pictures in two versions (e.g. photos and their stylized
copies), matched by a normalized file name as the original's ParallelImageFolders.

A file's pairing key is its path relative to its folder, without extension and without a
'-stylized-...' suffix (the name the stylization tool gives its outputs); a regular expression can
give the key instead (its first group, or the whole match). Files present in one folder only, or
whose key is ambiguous, are listed in a warning and skipped, never fatal. Pairs whose images have
different sizes are both resized to the model input, as every folder source does, with a warning.

`load(indices)` returns two `Batch`es, row i of one the partner of row i of the other.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import warnings
from typing import Sequence

import numpy as np
from PIL import Image

from jaxdissect.data.image_folder import find_images, prepare_image
from jaxdissect.data.scenes import Scenes
from jaxdissect.data.sources import Batch, ScenesSource

STYLIZED_SUFFIX = re.compile(r"-stylized-[^/]*$")
SHOWN = 10  # file names listed per kind of problem in a message


def normalize_filename(relpath: str, pattern: str | re.Pattern | None = None) -> str | None:
    """The pairing key of a relative path ('/'-separated): by default the path without extension
    and without a '-stylized-...' suffix; with `pattern`, its first group (or whole match), None
    when it does not match."""
    rel = relpath.replace(os.sep, "/")
    if pattern is None:
        return STYLIZED_SUFFIX.sub("", os.path.splitext(rel)[0])
    m = re.search(pattern, rel)
    if m is None:
        return None
    return m.group(1) if m.re.groups else m.group(0)


@dataclasses.dataclass
class Pairing:
    """Files of two folders matched by key, and what could not be matched."""

    keys: list[str]  # sorted
    first: list[str]  # relative paths, one per key
    second: list[str]
    only_first: list[str] = dataclasses.field(default_factory=list)  # no partner in the second folder
    only_second: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)  # pattern does not match ('1:' / '2:' prefix)
    ambiguous: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # key -> files sharing it

    def problems(self, first_root: str = "first", second_root: str = "second") -> str | None:
        """A message listing every skipped file (the first few of each kind), or None."""
        parts = []
        for what, files in ((f"only in {first_root}", self.only_first), (f"only in {second_root}", self.only_second),
                            ("not matching the pairing pattern", self.unmatched),
                            ("sharing a pairing key with another file of the same folder",
                             [f for fs in self.ambiguous.values() for f in fs])):
            if files:
                shown = ", ".join(files[:SHOWN]) + (f", ... ({len(files) - SHOWN} more)" if len(files) > SHOWN else "")
                parts.append(f"{len(files)} file(s) {what}: {shown}")
        if not parts:
            return None
        return f"paired folders: {len(self.keys)} pairs; skipped " + "; ".join(parts)


def _keyed(files: Sequence[str], pattern, tag: str, pairing: Pairing) -> dict[str, str]:
    by_key: dict[str, list[str]] = {}
    for f in files:
        key = normalize_filename(f, pattern)
        if key is None:
            pairing.unmatched.append(f"{tag}:{f}")
        else:
            by_key.setdefault(key, []).append(f)
    for key, fs in by_key.items():
        if len(fs) > 1:
            pairing.ambiguous.setdefault(key, []).extend(f"{tag}:{f}" for f in fs)
    return {k: fs[0] for k, fs in by_key.items() if len(fs) == 1}


def pair_files(first: Sequence[str], second: Sequence[str], pattern: str | re.Pattern | None = None) -> Pairing:
    """Match two lists of relative paths by `normalize_filename`; keys held by several files of
    one folder are ambiguous and skipped on both sides."""
    pairing = Pairing([], [], [])
    a, b = _keyed(first, pattern, "1", pairing), _keyed(second, pattern, "2", pairing)
    for key in list(pairing.ambiguous):
        a.pop(key, None)
        b.pop(key, None)
    pairing.keys = sorted(set(a) & set(b))
    pairing.first = [a[k] for k in pairing.keys]
    pairing.second = [b[k] for k in pairing.keys]
    pairing.only_first = sorted(a[k] for k in set(a) - set(b))
    pairing.only_second = sorted(b[k] for k in set(b) - set(a))
    return pairing


class PairedFolders:
    """Two image folders paired by file name; random access like `FolderSource`.

    Pairs are sorted by key and shuffled with random.Random(shuffle_seed) (the original's folder
    order); the class of a pair is the parent folder of its first file. Images are prepared as
    the folder source prepares them (square resize to `resize`, centre crop to `crop`)."""

    kind = "images"
    labels = None  # no segmentation labels

    def __init__(self, first: str | os.PathLike, second: str | os.PathLike, crop: int = 224, resize: int = 256,
                 pattern: str | re.Pattern | None = None, size: int | None = None, shuffle_seed: int | None = 1,
                 warn: bool = True):
        self.roots = (os.fspath(first), os.fspath(second))
        self.crop, self.resize = int(crop), int(resize)
        if pattern is not None and isinstance(pattern, str):
            try:
                pattern = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"pairing pattern {pattern!r} is not a regular expression: {e}") from None
        self.pairing = pair_files(find_images(self.roots[0]), find_images(self.roots[1]), pattern)
        if not self.pairing.keys:
            raise FileNotFoundError(f"no image of {self.roots[0]!r} has a partner in {self.roots[1]!r} "
                                    f"({self.pairing.problems(*self.roots) or 'both folders are empty'})")
        message = self.pairing.problems(*self.roots)
        if message and warn:
            warnings.warn(message, stacklevel=2)
        order = list(range(len(self.pairing.keys)))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(order)
        self.order = order if size is None else order[: max(0, int(size))]
        self.classes = tuple(sorted({os.path.dirname(f) for f in self.pairing.first}))
        self.size_mismatches: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}  # index -> (w, h) of each
        self.warn = warn

    def __len__(self) -> int:
        return len(self.order)

    def files(self, i: int) -> tuple[str, str]:
        """The relative paths of pair `i` in each folder."""
        j = self.order[int(i)]
        return self.pairing.first[j], self.pairing.second[j]

    def _open(self, root: str, rel: str) -> tuple[np.ndarray, tuple[int, int]]:
        with Image.open(os.path.join(root, rel)) as im:
            im.load()
            return prepare_image(im, self.resize, self.crop), im.size

    def load(self, indices: Sequence[int]) -> tuple[Batch, Batch]:
        """The pairs `indices`: (first folder's Batch, second folder's Batch). A pair with an
        unreadable file is not ok in both batches, its message in both batches' errors."""
        n = len(indices)
        images = [np.zeros((n, self.crop, self.crop, 3), np.uint8) for _ in range(2)]
        ok = np.ones(n, bool)
        errors: dict[int, str] = {}
        labels = np.zeros(n, np.int32)
        for j, i in enumerate(indices):
            i = int(i)
            if not 0 <= i < len(self):
                raise IndexError(f"pair {i} out of range for {len(self)} pairs")
            pair = self.files(i)
            labels[j] = self.classes.index(os.path.dirname(pair[0]))
            sizes = []
            for side in range(2):
                try:
                    images[side][j], s = self._open(self.roots[side], pair[side])
                    sizes.append(s)
                except Exception as e:  # PIL raises many types for corrupt data
                    ok[j] = False
                    errors[i] = f"{os.path.join(self.roots[side], pair[side])}: {type(e).__name__}: {e}"
            if len(sizes) == 2 and sizes[0] != sizes[1] and i not in self.size_mismatches:
                self.size_mismatches[i] = (sizes[0], sizes[1])
                if self.warn:
                    warnings.warn(f"pair {i}: {pair[0]} is {sizes[0][0]}x{sizes[0][1]} but {pair[1]} is "
                                  f"{sizes[1][0]}x{sizes[1][1]}; both resized to {self.crop}x{self.crop}, so the "
                                  "masks compared may not align", stacklevel=2)
        idx = np.asarray(indices, np.int32)
        return (Batch(idx, images[0], ok.copy(), None, dict(errors), labels.copy()),
                Batch(idx, images[1], ok.copy(), None, dict(errors), labels.copy()))


# dataset name -> style of the stylized scenes world (see scene_styles)
STYLIZED_SCENES = {"scenes-stylized": "all", "scenes-stylized-materials": "materials",
                   "scenes-stylized-colors": "colors"}


class StylizedScenesSource(ScenesSource):
    """The stylized twins of the scenes world (`Scenes(stylized=style)`), with their exact labels."""

    def __init__(self, size: int = 1000, split: str = "val", seed: int = 0, image_size: int = 128,
                 style: str = "all", style_seed: int = 0, cache_bytes: int = 512 << 20):
        super().__init__(size=size, split=split, seed=seed, image_size=image_size, cache_bytes=cache_bytes)
        self.dataset = Scenes(split=split, size=size, seed=seed, image_size=image_size, stylized=style,
                              style_seed=style_seed)


# The second set of a stylized scenes world: the same scenes stylized again, with another style seed.
RESTYLED_SCENES = "scenes-restyled"


class PairedScenes:
    """Each scene with its stylized twin: identical geometry, object and part labels; other surfaces
    (`style`: 'all', or only 'materials' or 'colors'). With `restyle_seed`, the first image is a
    stylized twin too (style seed `style_seed`) and its partner another stylization of the same
    scene (`restyle_seed`): on such a first set no surface is tied to one kind of thing, so a unit
    labelled with a surface is one that follows it (see experiments.label_confinement)."""

    kind = "images"

    def __init__(self, size: int = 1000, split: str = "val", seed: int = 0, image_size: int = 128,
                 style: str = "all", style_seed: int = 0, restyle_seed: int | None = None):
        common = dict(size=size, split=split, seed=seed, image_size=image_size)
        if restyle_seed is not None and restyle_seed == style_seed:
            raise ValueError(f"a restyled pair needs two style seeds, got {style_seed} twice")
        first = (ScenesSource(**common) if restyle_seed is None
                 else StylizedScenesSource(**common, style=style, style_seed=style_seed))
        second = StylizedScenesSource(**common, style=style,
                                      style_seed=style_seed if restyle_seed is None else restyle_seed)
        self.sources = (first, second)
        self.labels = self.sources[0].labels
        self.classes = self.sources[0].classes

    def __len__(self) -> int:
        return len(self.sources[0])

    def load(self, indices: Sequence[int]) -> tuple[Batch, Batch]:
        return self.sources[0].load(indices), self.sources[1].load(indices)


def paired_source(dataset: str, paired: str | None = None, *, crop: int = 224, size: int | None = None,
                  pattern: str | None = None, image_size: int = 128):
    """The paired source a command line names: 'scenes' with 'scenes-stylized' (the default),
    'scenes-stylized-materials' or 'scenes-stylized-colors' pairs each scene with its stylized
    twin; a stylized world with 'scenes-restyled' (its default) pairs each stylized twin with
    another stylization of the same scene; two folders pair by file name."""
    if dataset in STYLIZED_SCENES:
        if paired not in (None, RESTYLED_SCENES):
            raise ValueError(f"--dataset {dataset} pairs with {RESTYLED_SCENES} (another stylization of each "
                             f"scene), not {paired!r}; for scenes and their stylized twins give the original world "
                             f"first: --dataset scenes --paired-dataset {dataset}")
        return PairedScenes(size=size or 1000, image_size=image_size, style=STYLIZED_SCENES[dataset], restyle_seed=1)
    if dataset == "scenes":
        if paired == RESTYLED_SCENES:
            raise ValueError(f"{RESTYLED_SCENES} restyles a stylized world: --dataset scenes-stylized "
                             f"--paired-dataset {RESTYLED_SCENES}")
        if paired is not None and paired not in STYLIZED_SCENES:
            raise ValueError(f"--dataset scenes pairs with a stylized scenes world ({', '.join(STYLIZED_SCENES)}), "
                             f"not {paired!r}")
        style = STYLIZED_SCENES[paired or "scenes-stylized"]
        return PairedScenes(size=size or 1000, image_size=image_size, style=style)
    if paired is None:
        raise ValueError(f"--dataset {dataset} needs --paired-dataset (the folder of its other versions)")
    return PairedFolders(dataset, paired, crop=crop, pattern=pattern, size=size)
