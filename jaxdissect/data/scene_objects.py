"""The scenes world's vocabulary and how each thing is drawn: regions (sky, ground, water ...)
and objects with parts (house: roof, door, windows; tree: trunk, crown; car: wheels, windows;
boat: hull, mast, sail; person: head, torso, legs; streetlight: pole, lamp)."""
from __future__ import annotations

import numpy as np

from jaxdissect.data import scene_textures as tx
from jaxdissect.data.scene_shapes import Canvas
from jaxdissect.segment.base import SegmentLabels

OBJECTS = ("sky", "cloud", "mountain", "grass", "road", "water", "sand",
           "house", "tree", "car", "boat", "person", "streetlight")
PARTS = ("roof", "door", "window", "trunk", "crown", "wheel", "hull", "mast", "sail",
         "head", "torso", "leg", "pole", "lamp")
MATERIALS = ("brick", "wood", "foliage", "turf", "ripples", "asphalt", "grit", "stone", "snow",
             "metal", "glass", "fabric", "skin", "tile", "plaster", "rubber")
COLORS = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red",
          "white", "yellow")
CATEGORIES = ("object", "part", "material", "color")

SCENE_LABELS = SegmentLabels(
    names=("-",) + OBJECTS + PARTS + MATERIALS + COLORS,
    categories=("-",) + ("object",) * len(OBJECTS) + ("part",) * len(PARTS)
    + ("material",) * len(MATERIALS) + ("color",) * len(COLORS),
    category_names=CATEGORIES,
)
OBJ = {n: SCENE_LABELS.index(n) for n in OBJECTS}
PART = {n: SCENE_LABELS.index(n) for n in PARTS}
MAT = {n: SCENE_LABELS.index(n) for n in MATERIALS}
COL = {n: SCENE_LABELS.index(n) for n in COLORS}

PALETTE = {
    "black": (35, 35, 38), "blue": (60, 100, 205), "brown": (125, 80, 45),
    "green": (55, 145, 55), "grey": (130, 130, 130), "orange": (238, 140, 35),
    "pink": (240, 155, 185), "purple": (130, 65, 165), "red": (200, 45, 40),
    "white": (236, 236, 236), "yellow": (232, 208, 60),
}
# Special tints that keep their colour name: light sky blue, pale sand, glass blue, skin tones.
TINTS = {
    "sky": (125, 175, 235), "overcast": (175, 180, 188), "water": (45, 95, 175),
    "sand": (222, 196, 120), "glass": (150, 190, 232), "leaf": (45, 115, 45),
    "skin_pink": (236, 182, 162), "skin_brown": (140, 92, 62), "skin_orange": (226, 162, 112),
    "asphalt": (92, 92, 96), "stone": (120, 116, 112),
}


def _col(rng: np.random.Generator, rgb) -> np.ndarray:
    """A base colour jittered a little per instance (never enough to change its name)."""
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-10, 10, 3), 0, 255)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _labels(obj: str, part: str | None, mat: str | None, color: str):
    return (OBJ[obj], PART[part] if part else 0, MAT[mat] if mat else 0, COL[color])


# ---- regions -----------------------------------------------------------------------------
def draw_sky(c: Canvas, hz: float, rng) -> None:
    overcast = rng.random() < 0.2
    name, tint = ("grey", TINTS["overcast"]) if overcast else ("blue", TINTS["sky"])
    box, _ = c.rect(0, hz + 1, 0, c.size)
    c.paint(box, None, tx.sky, _col(rng, tint), _labels("sky", None, None, name))
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(0.05, 0.8) * hz, rng.uniform(0, c.size)
        ry, rx = rng.uniform(3, 7) * c.size / 128, rng.uniform(10, 22) * c.size / 128
        cname = "white" if rng.random() < 0.75 else "grey"
        for dx in (-0.5, 0.0, 0.5):
            box, m = c.ellipse(cy - (dx == 0) * ry * 0.4, cx + dx * rx, ry, rx * 0.6)
            c.paint(box, m, tx.cloud, _col(rng, PALETTE[cname]), _labels("cloud", None, None, cname))


def draw_mountains(c: Canvas, hz: float, rng, n: int) -> None:
    s = c.size / 128
    for _ in range(n):
        cx = rng.uniform(0, c.size)
        top = hz - rng.uniform(12, 38) * s
        hw = rng.uniform(20, 45) * s
        name = _pick(rng, ("grey", "brown", "purple"))
        rgb = _col(rng, TINTS["stone"] if name == "grey" else PALETTE[name])
        box, m = c.polygon([(top, cx), (hz + 1, cx + hw), (hz + 1, cx - hw)])
        c.paint(box, m, tx.stone, rgb, _labels("mountain", None, "stone", name))
        if hz - top > 22 * s and rng.random() < 0.6:
            f = rng.uniform(0.25, 0.4)
            box, m = c.polygon([(top, cx), (top + f * (hz - top), cx + f * hw), (top + f * (hz - top), cx - f * hw)])
            c.paint(box, m, tx.snow, _col(rng, PALETTE["white"]), _labels("mountain", None, "snow", "white"))


def draw_ground(c: Canvas, kind: str, y0: float, y1: float, rng) -> None:
    box, _ = c.rect(y0, y1, 0, c.size)
    if kind == "road":
        c.paint(box, None, tx.asphalt, _col(rng, TINTS["asphalt"]), _labels("road", None, "asphalt", "grey"))
        s = c.size / 128
        ym = y0 + rng.uniform(0.45, 0.7) * (y1 - y0)
        off = rng.uniform(0, 16 * s)
        for x in np.arange(-16 * s + off, c.size, 16 * s):
            b, _ = c.rect(ym - 0.8 * s, ym + 0.8 * s, x, x + 8 * s)
            c.paint(b, None, tx.plain, _col(rng, PALETTE["white"]), _labels("road", None, "asphalt", "white"))
    elif kind == "grass":
        name = "green" if rng.random() < 0.85 else "yellow"
        c.paint(box, None, tx.turf, _col(rng, PALETTE[name]), _labels("grass", None, "turf", name))
    elif kind == "water":
        c.paint(box, None, tx.water, _col(rng, TINTS["water"]), _labels("water", None, "ripples", "blue"))
    elif kind == "sand":
        c.paint(box, None, tx.sand, _col(rng, TINTS["sand"]), _labels("sand", None, "grit", "yellow"))
    else:
        raise ValueError(f"unknown ground kind {kind!r}")


# ---- objects: each is drawn standing on base line `by`, centred at `cx`, scaled by `p` -----
def draw_house(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    w = rng.uniform(26, 40) * s
    h = w * rng.uniform(0.55, 0.8)
    if rng.random() < 0.5:
        wall_mat, wall_col = "brick", _pick(rng, ("red", "brown"))
        wall_tex = tx.brick
    else:
        wall_mat, wall_col = "plaster", _pick(rng, ("white", "yellow", "pink", "orange", "blue", "grey"))
        wall_tex = tx.plaster
    box, _ = c.rect(by - h, by, cx - w / 2, cx + w / 2)
    c.paint(box, None, wall_tex, _col(rng, PALETTE[wall_col]), _labels("house", None, wall_mat, wall_col))
    rh, ov = w * rng.uniform(0.3, 0.45), w * 0.08
    roof_col = _pick(rng, ("red", "brown", "grey", "black"))
    if rng.random() < 0.6:
        pts = [(by - h - rh, cx), (by - h, cx + w / 2 + ov), (by - h, cx - w / 2 - ov)]
    else:
        pts = [(by - h - rh, cx - w * 0.25), (by - h - rh, cx + w * 0.25),
               (by - h, cx + w / 2 + ov), (by - h, cx - w / 2 - ov)]
    box, m = c.polygon(pts)
    c.paint(box, m, tx.tile, _col(rng, PALETTE[roof_col]), _labels("house", "roof", "tile", roof_col))
    dw, dh = w * rng.uniform(0.15, 0.22), h * rng.uniform(0.45, 0.6)
    slot = int(rng.integers(3))
    dx = cx + (slot - 1) * w / 3
    door_col = _pick(rng, ("brown", "red", "blue", "green", "black"))
    box, _ = c.rect(by - dh, by, dx - dw / 2, dx + dw / 2)
    c.paint(box, None, tx.wood, _col(rng, PALETTE[door_col]), _labels("house", "door", "wood", door_col))
    ws = w * rng.uniform(0.13, 0.18)
    wy = by - h * rng.uniform(0.62, 0.78)
    for k in range(3):
        if k == slot and rng.random() < 0.7:
            continue
        wx = cx + (k - 1) * w / 3
        top = wy - ws / 2 if k != slot else by - dh - ws * 1.2
        box, _ = c.rect(top, top + ws, wx - ws / 2, wx + ws / 2)
        c.paint(box, None, tx.glass, _col(rng, TINTS["glass"]), _labels("house", "window", "glass", "blue"))


def draw_tree(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    tw, th = rng.uniform(3, 5) * s, rng.uniform(8, 14) * s
    box, _ = c.rect(by - th, by, cx - tw / 2, cx + tw / 2)
    c.paint(box, None, tx.wood, _col(rng, PALETTE["brown"]), _labels("tree", "trunk", "wood", "brown"))
    r = rng.random()
    name, rgb = ("green", TINTS["leaf"]) if r < 0.8 else (("orange", PALETTE["orange"]) if r < 0.9 else ("yellow", PALETTE["yellow"]))
    if rng.random() < 0.65:
        rx, ry = rng.uniform(7, 12) * s, rng.uniform(8, 13) * s
        box, m = c.ellipse(by - th - ry * 0.7, cx, ry, rx)
    else:
        hh, hw = rng.uniform(18, 28) * s, rng.uniform(7, 11) * s
        box, m = c.polygon([(by - th - hh, cx), (by - th + 2 * s, cx + hw), (by - th + 2 * s, cx - hw)])
    c.paint(box, m, tx.foliage, _col(rng, rgb), _labels("tree", "crown", "foliage", name))


def draw_car(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    length, bh, r = rng.uniform(24, 34) * s, rng.uniform(7, 9) * s, rng.uniform(3, 4) * s
    name = _pick(rng, ("red", "blue", "white", "black", "yellow", "grey", "green", "orange"))
    rgb = _col(rng, PALETTE[name])
    lab = _labels("car", None, "metal", name)
    bot = by - r * 0.8
    box, _ = c.rect(bot - bh, bot, cx - length / 2, cx + length / 2)
    c.paint(box, None, tx.metal, rgb, lab)
    ch = rng.uniform(5, 8) * s
    shift = rng.uniform(-0.12, 0.12) * length
    cab = [(bot - bh - ch, cx + shift - 0.2 * length), (bot - bh - ch, cx + shift + 0.2 * length),
           (bot - bh + 0.5, cx + shift + 0.32 * length), (bot - bh + 0.5, cx + shift - 0.32 * length)]
    box, m = c.polygon(cab)
    c.paint(box, m, tx.metal, rgb, lab)
    inset = 1.2 * s
    for lo, hi in ((-0.27, -0.02), (0.02, 0.27)):
        pts = [(bot - bh - ch + inset, cx + shift + max(lo, -0.17) * length),
               (bot - bh - ch + inset, cx + shift + min(hi, 0.17) * length),
               (bot - bh - 0.5, cx + shift + hi * length), (bot - bh - 0.5, cx + shift + lo * length)]
        box, m = c.polygon(pts)
        c.paint(box, m, tx.glass, _col(rng, TINTS["glass"]), _labels("car", "window", "glass", "blue"))
    for wx in (-0.3, 0.3):
        box, m = c.ellipse(by - r, cx + wx * length, r, r)
        c.paint(box, m, tx.rubber, _col(rng, PALETTE["black"]), _labels("car", "wheel", "rubber", "black"))


def draw_boat(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    length, hh = rng.uniform(26, 40) * s, rng.uniform(6, 9) * s
    if rng.random() < 0.5:
        mat, name, tex = "wood", "brown", tx.wood
    else:
        mat, name, tex = "metal", _pick(rng, ("white", "red", "blue")), tx.metal
    box, m = c.polygon([(by - hh, cx - length / 2), (by - hh, cx + length / 2),
                        (by, cx + length * 0.35), (by, cx - length * 0.35)])
    c.paint(box, m, tex, _col(rng, PALETTE[name]), _labels("boat", "hull", mat, name))
    mh = rng.uniform(14, 22) * s
    mx = cx + rng.uniform(-0.15, 0.15) * length
    box, _ = c.rect(by - hh - mh, by - hh, mx - 0.8 * s, mx + 0.8 * s)
    c.paint(box, None, tx.wood, _col(rng, PALETTE["brown"]), _labels("boat", "mast", "wood", "brown"))
    sail = _pick(rng, ("white", "white", "red", "yellow", "orange"))
    d = 1 if rng.random() < 0.5 else -1
    box, m = c.polygon([(by - hh - mh, mx + d * 1.2 * s), (by - hh - 1.5 * s, mx + d * 1.2 * s),
                        (by - hh - 1.5 * s, mx + d * length * rng.uniform(0.3, 0.45))])
    c.paint(box, m, tx.fabric, _col(rng, PALETTE[sail]), _labels("boat", "sail", "fabric", sail))


def draw_person(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    H = rng.uniform(22, 32) * s
    legs = _pick(rng, ("blue", "black", "brown", "grey"))
    for dx in (-0.1, 0.1):
        box, _ = c.rect(by - 0.46 * H, by, cx + dx * H - 0.065 * H, cx + dx * H + 0.065 * H)
        c.paint(box, None, tx.fabric, _col(rng, PALETTE[legs]), _labels("person", "leg", "fabric", legs))
    shirt = _pick(rng, ("red", "blue", "white", "yellow", "green", "orange", "purple", "pink", "black"))
    box, _ = c.rect(by - 0.8 * H, by - 0.44 * H, cx - 0.17 * H, cx + 0.17 * H)
    c.paint(box, None, tx.fabric, _col(rng, PALETTE[shirt]), _labels("person", "torso", "fabric", shirt))
    tone = _pick(rng, ("pink", "brown", "orange"))
    box, m = c.ellipse(by - 0.9 * H, cx, 0.11 * H, 0.1 * H)
    c.paint(box, m, tx.skin, _col(rng, TINTS["skin_" + tone]), _labels("person", "head", "skin", tone))


def draw_streetlight(c: Canvas, by: float, cx: float, p: float, rng) -> None:
    s = c.size / 128 * p
    h = rng.uniform(28, 40) * s
    name = _pick(rng, ("grey", "black"))
    box, _ = c.rect(by - h, by, cx - 0.9 * s, cx + 0.9 * s)
    c.paint(box, None, tx.metal, _col(rng, PALETTE[name]), _labels("streetlight", "pole", "metal", name))
    lamp = _pick(rng, ("yellow", "white"))
    box, m = c.ellipse(by - h, cx, 2.4 * s, 3.6 * s)
    c.paint(box, m, tx.light, _col(rng, PALETTE[lamp]), _labels("streetlight", "lamp", "glass", lamp))


DRAW = {"house": draw_house, "tree": draw_tree, "car": draw_car, "boat": draw_boat,
        "person": draw_person, "streetlight": draw_streetlight}
