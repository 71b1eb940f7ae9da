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

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        mats, cols = np.asarray([MAT[m] for m in MATERIALS]), np.asarray([COL[c] for c in COLORS])
        self.material_map = dict(zip(mats.tolist(), mats[derangement(rng, len(mats))].tolist()))
        self.color_map = dict(zip(cols.tolist(), cols[derangement(rng, len(cols))].tolist()))
        self.bare_material = {OBJ[o]: int(mats[rng.integers(len(mats))]) for o in OBJECTS}

    def __call__(self, texture, rgb: np.ndarray, labels: tuple[int, int, int, int]):
        obj, part, mat, col = (int(v) for v in labels)
        new_mat = self.material_map[mat] if mat else self.bare_material[obj]
        new_col = self.color_map.get(col, col)
        base = np.asarray(PALETTE[SCENE_LABELS.names[new_col]], np.float32) if new_col else rgb
        jitter = self.rng.uniform(-10, 10, 3)
        new_rgb = np.clip(base + jitter, 0, 255).astype(np.float32)
        return MATERIAL_TEXTURES[SCENE_LABELS.names[new_mat]], new_rgb, (obj, part, new_mat, new_col)
