"""Stylized scenes: the same scene (geometry, objects, parts) drawn with other surfaces.

A `SceneStyle` is drawn once per scene from its own random stream, so the scene's layout stream
is untouched and every shape, occlusion and object/part label stays exactly as in the original.
It maps surfaces consistently within the scene, like a cue-conflict image (a brick house drawn
in water ripples):
- every material is replaced by another one (a derangement of the 16 materials: no material
  keeps its texture), and a surface with no material (sky, clouds) gets a material drawn at
  random per object kind;
- every colour name is replaced by another one (a derangement of the 11 colours), painted with
  that colour's palette value (tints such as sky blue or skin tones become plain palette colours).

What the segmentation of a stylized scene says: the object and part channels are those of the
original scene, pixel for pixel; the material channel names the material whose texture is drawn
there (never empty, since sky and clouds get one too) and the colour channel the colour painted.

Partial styles separate the two cues: `STYLES['materials']` changes only the textures (colours,
tints and colour labels as in the original), `STYLES['colors']` only the colours (textures and
material labels as in the original). The mappings drawn for a scene are the same in every style.
"""
from __future__ import annotations

import numpy as np

from jaxdissect.data import scene_textures as tx
from jaxdissect.data.scene_objects import COL, COLORS, MAT, MATERIALS, OBJECTS, OBJ, PALETTE, SCENE_LABELS

# The texture that draws each material (the original world draws some regions with special
# textures: road markings 'plain', lamps 'light'; a stylized surface always uses these).
MATERIAL_TEXTURES = {
    "brick": tx.brick, "wood": tx.wood, "foliage": tx.foliage, "turf": tx.turf, "ripples": tx.water,
    "asphalt": tx.asphalt, "grit": tx.sand, "stone": tx.stone, "snow": tx.snow, "metal": tx.metal,
    "glass": tx.glass, "fabric": tx.fabric, "skin": tx.skin, "tile": tx.tile, "plaster": tx.plaster,
    "rubber": tx.rubber,
}
assert set(MATERIAL_TEXTURES) == set(MATERIALS)
# style name -> (change materials, change colours)
STYLES = {"all": (True, True), "materials": (True, False), "colors": (False, True)}


def derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random permutation of 0..n-1 with no fixed point (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


class SceneStyle:
    """The surface mapping of one stylized scene, used as a `Canvas` restyle.

    `material_map[m]`, `color_map[c]`: label ids (SCENE_LABELS) of the new material and colour for
    original ids m, c; `bare_material[o]`: the material of object o's surfaces that had none."""

    def __init__(self, rng: np.random.Generator, style: str = "all"):
        if style not in STYLES:
            raise ValueError(f"unknown scene style {style!r}; expected one of {', '.join(STYLES)}")
        self.rng = rng
        self.materials, self.colors = STYLES[style]
        mats, cols = np.asarray([MAT[m] for m in MATERIALS]), np.asarray([COL[c] for c in COLORS])
        self.material_map = dict(zip(mats.tolist(), mats[derangement(rng, len(mats))].tolist()))
        self.color_map = dict(zip(cols.tolist(), cols[derangement(rng, len(cols))].tolist()))
        self.bare_material = {OBJ[o]: int(mats[rng.integers(len(mats))]) for o in OBJECTS}

    def __call__(self, texture, rgb: np.ndarray, labels: tuple[int, int, int, int]):
        obj, part, mat, col = (int(v) for v in labels)
        jitter = self.rng.uniform(-10, 10, 3)  # drawn in every style, so every style draws alike
        if self.materials:
            mat = self.material_map[mat] if mat else self.bare_material[obj]
            texture = MATERIAL_TEXTURES[SCENE_LABELS.names[mat]]
        if self.colors and col in self.color_map:
            col = self.color_map[col]
            rgb = np.clip(np.asarray(PALETTE[SCENE_LABELS.names[col]], np.float32) + jitter, 0, 255)
        return texture, np.asarray(rgb, np.float32), (obj, part, mat, col)
