"""The scenes world: a deterministic procedural generator of 128x128 scene images with exact
multi-label segmentations (object, part, material, color) and a scene class.

Image i of (seed, split) is drawn from its own PCG64 stream seeded by (seed, split, i), so any
image is generated alone and identically everywhere. A scene class is a function of the
scene's composition (`scene_class_of`): e.g. a road with a house is a street, grass with a
person but no house is a park, so a classifier must recognise objects to classify.

The stylized world (`stylized=True`) draws each scene with the same geometry and other surfaces
(see `scene_styles`): the shape-versus-texture twin of every scene, with its own exact labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxdissect.data.scene_objects import (COLORS, DRAW, MATERIALS, OBJECTS, PARTS, SCENE_LABELS, draw_ground,
                                           draw_mountains, draw_sky)
from jaxdissect.data.scene_shapes import Canvas
from jaxdissect.data.scene_styles import STYLES, SceneStyle

SCENE_CLASSES = ("street", "highway", "park", "village", "forest", "harbour", "beach", "lake")
SPLITS = {"train": 0, "val": 1, "test": 2}
CHANNELS = ("object", "part", "material", "color")
__all__ = ["Scenes", "render_scene", "draw_scene", "scene_class_of", "objects_present", "SCENE_CLASSES", "SCENE_LABELS",
           "SPLITS", "CHANNELS", "OBJECTS", "PARTS", "MATERIALS", "COLORS"]


def scene_class_of(present: set[str] | Sequence[str]) -> int:
    """The scene class of a composition, given the names of the objects visible in it."""
    p = set(present)
    if "sand" in p:
        name = "beach"
    elif "water" in p:
        name = "harbour" if "boat" in p else "lake"
    elif "road" in p:
        name = "street" if "house" in p else "highway"
    elif "grass" in p:
        name = "village" if "house" in p else ("park" if "person" in p else "forest")
    else:
        raise ValueError(f"composition {sorted(p)} has no ground region")
    return SCENE_CLASSES.index(name)


def objects_present(segmentation: np.ndarray) -> set[str]:
    """Names of the objects with at least one pixel in a (4, H, W) segmentation."""
    counts = np.bincount(np.asarray(segmentation[0]).ravel(), minlength=len(SCENE_LABELS))
    return {SCENE_LABELS.names[i] for i in np.flatnonzero(counts) if i != 0}


def _place(rng, hz, size, lo, hi):
    """A base line between fractions lo..hi of the ground, its x, and its perspective scale."""
    t = rng.uniform(lo, hi)
    return hz + t * (size - hz), rng.uniform(0.04, 0.96) * size, 0.55 + 1.0 * t


def _compose(rng: np.random.Generator, cls: str, size: int, hz: float):
    """The plan of one scene: ground bands, mountains, and the objects standing in it."""
    n = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    bands, items, mountains = [], [], 0
    if cls in ("street", "highway"):
        bands = [("road", hz, size)]
        if cls == "street":
            items += [("house", *_place(rng, hz, size, 0.05, 0.3)) for _ in range(n(1, 3))]
            items += [("tree", *_place(rng, hz, size, 0.05, 0.3)) for _ in range(n(0, 1))]
        else:
            mountains = n(1, 3) if rng.random() < 0.8 else 0
        items += [("car", *_place(rng, hz, size, 0.35, 1.0)) for _ in range(n(1, 3))]
        items += [("streetlight", *_place(rng, hz, size, 0.1, 0.9)) for _ in range(n(0, 2))]
    elif cls in ("park", "village", "forest"):
        bands = [("grass", hz, size)]
        if rng.random() < 0.3:
            mountains = n(1, 2)
        if cls == "park":
            items += [("tree", *_place(rng, hz, size, 0.05, 0.9)) for _ in range(n(1, 4))]
            items += [("person", *_place(rng, hz, size, 0.3, 1.0)) for _ in range(n(1, 3))]
            items += [("streetlight", *_place(rng, hz, size, 0.1, 0.8)) for _ in range(n(0, 1))]
        elif cls == "village":
            items += [("house", *_place(rng, hz, size, 0.05, 0.6)) for _ in range(n(1, 3))]
            items += [("tree", *_place(rng, hz, size, 0.05, 0.9)) for _ in range(n(0, 3))]
        else:
            items += [("tree", *_place(rng, hz, size, 0.0, 1.0)) for _ in range(n(5, 10))]
    elif cls in ("harbour", "lake"):
        shore = hz + rng.uniform(3, 7) * size / 128
        bands = [("grass", hz, shore), ("water", shore, size)]
        if cls == "harbour":
            for _ in range(n(0, 3)):
                items.append(("house", shore, rng.uniform(0.05, 0.95) * size, 0.45))
            items += [("boat", *_place(rng, shore, size, 0.15, 1.0)) for _ in range(n(1, 3))]
        else:
            mountains = n(1, 3)
            for _ in range(n(1, 4)):
                items.append(("tree", shore, rng.uniform(0.05, 0.95) * size, 0.5))
    elif cls == "beach":
        wline = hz + rng.uniform(0.2, 0.4) * (size - hz)
        bands = [("water", hz, wline), ("sand", wline, size)]
        items += [("boat", *_place(rng, hz, wline, 0.4, 1.0)) for _ in range(n(0, 1))]
        items += [("person", *_place(rng, wline, size, 0.25, 1.0)) for _ in range(n(1, 3))]
    else:
        raise ValueError(f"unknown scene class {cls!r}")
    items.sort(key=lambda it: it[1])  # far (small base line) first: nearer things occlude
    return bands, mountains, items


def style_rng(seed: int, split: str, index: int, style_seed: int = 0) -> np.random.Generator:
    """The random stream of a scene's stylization, apart from the stream that lays the scene out."""
    ss = np.random.SeedSequence([int(seed), SPLITS[split], int(index), int(style_seed)], spawn_key=(1,))
    return np.random.Generator(np.random.PCG64(ss))


def _style_name(stylized: bool | str) -> str | None:
    """None for the original world, else the style name ('all', 'materials', 'colors')."""
    if stylized is True:
        return "all"
    if stylized is False or stylized is None:
        return None
    if stylized not in STYLES:
        raise ValueError(f"unknown stylization {stylized!r}; expected True, False or one of {', '.join(STYLES)}")
    return stylized


def draw_scene(seed: int, split: str, index: int, image_size: int = 128, stylized: bool | str = False,
               style_seed: int = 0, canvas_type: type[Canvas] = Canvas) -> Canvas:
    """The drawn canvas of image `index` of (seed, split). `stylized`: the same scene with other
    surfaces (see `render_scene`). `canvas_type` may be a Canvas subclass that observes the
    drawing: `begin(what)` is called before the sky, the mountains, each ground band and each
    object (jaxdissect.data.captions records each scene's composition this way)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    ss = np.random.SeedSequence([int(seed), SPLITS[split], int(index)])
    rng = np.random.Generator(np.random.PCG64(ss))
    style = _style_name(stylized)
    restyle = SceneStyle(style_rng(seed, split, index, style_seed), style) if style else None
    canvas = canvas_type(image_size, rng, restyle)
    cls = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
    hz = rng.uniform(0.3, 0.5) * image_size
    bands, mountains, items = _compose(rng, cls, image_size, hz)
    canvas.begin("sky")
    draw_sky(canvas, hz, rng)
    canvas.begin("mountains")
    draw_mountains(canvas, hz, rng, mountains)
    for kind, y0, y1 in bands:
        canvas.begin(kind)
        draw_ground(canvas, kind, y0, y1, rng)
    for kind, by, cx, p in items:
        canvas.begin(kind)
        DRAW[kind](canvas, by, cx, p, rng)
    return canvas


def render_scene(seed: int, split: str, index: int, image_size: int = 128, stylized: bool | str = False,
                 style_seed: int = 0):
    """Image `index` of (seed, split): (uint8 image HxWx3, int32 segmentation (4,H,W), scene class).

    `stylized`: the same scene with other surfaces (object and part channels unchanged): True or
    'all' (materials and colours), 'materials' or 'colors' only; each `style_seed` gives another
    stylization."""
    canvas = draw_scene(seed, split, index, image_size, stylized, style_seed)
    image = np.clip(np.rint(canvas.rgb), 0, 255).astype(np.uint8)
    return image, canvas.seg, scene_class_of(objects_present(canvas.seg))


class Scenes:
    """A fixed-size, randomly accessible split of the scenes world.

    `scenes[i]` -> dict(image uint8 (H,W,3), segmentation int32 (4,H,W), scene int);
    `scenes.batch(indices)` stacks several. Generation is on the fly and deterministic.
    `stylized=True` (or 'materials', 'colors'): every scene's stylized twin (same geometry, other
    surfaces; `scene_styles`).
    """

    labels = SCENE_LABELS
    classes = SCENE_CLASSES

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0, image_size: int = 128,
                 stylized: bool | str = False, style_seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        self.split, self.size, self.seed, self.image_size = split, int(size), int(seed), int(image_size)
        self.stylized, self.style_seed = _style_name(stylized) or False, int(style_seed)

    def __len__(self) -> int:
        return self.size

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for Scenes(split={self.split!r}, size={self.size})")
        return i

    def __getitem__(self, i: int) -> dict:
        image, seg, cls = render_scene(self.seed, self.split, self._check(i), self.image_size, self.stylized,
                                       self.style_seed)
        return {"image": image, "segmentation": seg, "scene": cls}

    def batch(self, indices: Sequence[int]) -> dict:
        """Stacked arrays: image (N,H,W,3) uint8, segmentation (N,4,H,W) int32, scene (N,) int32."""
        items = [self[i] for i in indices]
        s = self.image_size
        return {
            "image": np.stack([it["image"] for it in items]) if items else np.zeros((0, s, s, 3), np.uint8),
            "segmentation": np.stack([it["segmentation"] for it in items]) if items
            else np.zeros((0, 4, s, s), np.int32),
            "scene": np.asarray([it["scene"] for it in items], np.int32),
        }

    def __repr__(self) -> str:
        style = f", stylized={self.stylized!r}, style_seed={self.style_seed}" if self.stylized else ""
        return f"Scenes(split={self.split!r}, size={self.size}, seed={self.seed}, image_size={self.image_size}{style})"
