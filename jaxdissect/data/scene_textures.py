"""Visual textures for the scenes world's materials. Each is a vectorised function of the
box's pixel coordinates and the canvas noise fields, modulating a base colour's brightness
(so the pixel keeps its named colour) with a pattern a network can learn: brick courses,
wood grain, leaf speckle, ripples ..."""
from __future__ import annotations

import numpy as np

from jaxdissect.data.scene_shapes import Canvas


def _noise(c: Canvas, box, name: str) -> np.ndarray:
    y0, y1, x0, x1 = box
    return getattr(c, name)[y0:y1, x0:x1]


def _shade(base: np.ndarray, k: np.ndarray) -> np.ndarray:
    return base[None, None, :] * k[..., None]


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer pair (per brick, per tile)."""
    v = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return v - np.floor(v)


def plain(c: Canvas, box, base):
    return _shade(base, 0.94 + 0.12 * _noise(c, box, "smooth"))


def sky(c: Canvas, box, base):
    y, _ = c.grid(box)
    k = 0.85 + 0.25 * (y / c.size) + 0.0 * _noise(c, box, "smooth")
    return np.minimum(_shade(base, np.broadcast_to(k, (box[1] - box[0], box[3] - box[2]))), 255)


def cloud(c: Canvas, box, base):
    return _shade(base, 0.9 + 0.1 * _noise(c, box, "smooth"))


def brick(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    bh, bw = 3.0 * s, 7.0 * s
    row = np.floor(y / bh)
    xs = x + (row % 2) * bw / 2
    col = np.floor(xs / bw)
    mortar = ((y % bh) < 0.9 * s) | ((xs % bw) < 0.9 * s)
    k = 0.8 + 0.3 * _hash(row, col)
    out = _shade(base, np.where(mortar, 1.0, k))
    out[mortar] = (0.55 * out[mortar] + 0.45 * 215.0)
    return out


def wood(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    grain = 0.5 + 0.5 * np.sin(y * (1.4 / s) + 6.0 * _noise(c, box, "coarse"))
    return _shade(base, 0.78 + 0.32 * grain)


def foliage(c: Canvas, box, base):
    leaves = (_noise(c, box, "fine") > 0.55).astype(np.float32)
    return _shade(base, 0.6 + 0.35 * _noise(c, box, "smooth") + 0.3 * leaves)


def turf(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    blade = _hash(np.floor(x / s), 0.0)
    stroke = ((y / (3.0 * s) + 3.0 * blade) % 1.0) < 0.5
    return _shade(base, 0.8 + 0.25 * stroke + 0.1 * _noise(c, box, "smooth"))


def water(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    rip = np.sin(y * (1.6 / s) + 2.5 * np.sin(x * (0.2 / s)) + 5.0 * _noise(c, box, "smooth"))
    k = 0.85 + 0.12 * rip
    out = _shade(base, k)
    crest = rip > 0.85
    out[crest] = 0.6 * out[crest] + 0.4 * 230.0
    return out


def asphalt(c: Canvas, box, base):
    return _shade(base, 0.8 + 0.35 * _noise(c, box, "fine"))


def sand(c: Canvas, box, base):
    y, x = c.grid(box)
    dune = 0.5 + 0.5 * np.sin(y * 0.5 + 4.0 * _noise(c, box, "coarse"))
    return _shade(base, 0.88 + 0.1 * dune + 0.1 * _noise(c, box, "fine"))


def stone(c: Canvas, box, base):
    return _shade(base, 0.65 + 0.45 * _noise(c, box, "coarse") + 0.1 * _noise(c, box, "fine"))


def snow(c: Canvas, box, base):
    return _shade(base, 0.93 + 0.07 * _noise(c, box, "fine"))


def metal(c: Canvas, box, base):
    y, x = c.grid(box)
    rel = (y - box[0]) / max(box[1] - box[0], 1)
    shine = np.exp(-((rel - 0.3) / 0.12) ** 2)
    out = _shade(base, np.broadcast_to(0.8 + 0.0 * x, (box[1] - box[0], box[3] - box[2])) + 0.0)
    return out * (1 - 0.5 * shine[..., None]) + 245.0 * 0.5 * shine[..., None]


def glass(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    streak = ((x + y) % (6.0 * s)) < 1.5 * s
    out = _shade(base, np.broadcast_to(0.9 + 0.0 * (x + y), streak.shape))
    out[streak] = 0.5 * out[streak] + 0.5 * 240.0
    return out


def fabric(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    weave = ((np.floor(y / s) + np.floor(x / s)) % 2).astype(np.float32)
    return _shade(base, 0.88 + 0.12 * weave)


def skin(c: Canvas, box, base):
    return _shade(base, 0.95 + 0.08 * _noise(c, box, "smooth"))


def tile(c: Canvas, box, base):
    y, x = c.grid(box)
    s = c.size / 128.0
    th, tw = 3.5 * s, 5.0 * s
    row = np.floor(y / th)
    u = ((x + (row % 2) * tw / 2) % tw) / tw - 0.5
    v = (y % th) / th
    edge = (u * u * 4 + (1 - v) ** 2) > 1.0
    return _shade(base, np.where(edge, 0.65, 0.95 + 0.1 * _hash(row, np.floor(x / tw))))


def plaster(c: Canvas, box, base):
    return _shade(base, 0.92 + 0.08 * _noise(c, box, "smooth") + 0.05 * _noise(c, box, "fine"))


def rubber(c: Canvas, box, base):
    return _shade(base, 0.9 + 0.2 * _noise(c, box, "fine"))


def light(c: Canvas, box, base):
    return _shade(base, np.ones((box[1] - box[0], box[3] - box[2]), np.float32))
