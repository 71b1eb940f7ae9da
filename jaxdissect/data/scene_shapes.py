"""A numpy canvas for the scenes world: shape masks clipped to bounding boxes and a painter
that writes colour and all four label channels (object, part, material, color) at once, so
the segmentation is exact by construction and later shapes occlude earlier ones."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# A texture turns (canvas, box, base rgb) into an (h, w, 3) float image for that box.
Texture = Callable[["Canvas", tuple[int, int, int, int], np.ndarray], np.ndarray]
# A restyle turns what a painter asked for (texture, base rgb, labels) into what is painted.
Restyle = Callable[[Texture, np.ndarray, tuple[int, int, int, int]],
                   tuple[Texture, np.ndarray, tuple[int, int, int, int]]]


def value_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1): a random grid with one value per `cell` pixels, smoothstep-interpolated."""
    n = int(size / cell) + 2
    g = rng.random((n, n), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(cell)
    i = t.astype(np.int32)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]  # (size, n)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


class Canvas:
    """One image being drawn: float RGB in [0, 255], int32 labels (4, S, S), and noise fields
    that textures sample (drawn once per image, so texture cost is a slice).

    `restyle`, when given, rewrites every paint's texture, colour and labels (never its shape):
    the stylized scenes world draws the same geometry with other surfaces through it."""

    def __init__(self, size: int, rng: np.random.Generator, restyle: Restyle | None = None):
        self.size = size
        self.rng = rng
        self.restyle = restyle
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.seg = np.zeros((4, size, size), np.int32)
        coords = np.arange(size, dtype=np.float32) + 0.5
        self.ys = coords  # pixel-centre coordinates
        self.xs = coords
        s = size / 128.0
        self.fine = rng.random((size, size), dtype=np.float32)
        self.smooth = value_noise(rng, size, 6 * s)
        self.coarse = value_noise(rng, size, 20 * s)

    def begin(self, what: str) -> None:
        """Called before each region or object of a scene is drawn: a no-op here, a hook for
        subclasses that record what is drawn (see scenes.draw_scene)."""

    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[int, int, int, int] | None:
        """Integer box covering [y0, y1) x [x0, x1) clipped to the image; None when empty."""
        b = (max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.size),
             max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.size))
        return b if b[0] < b[1] and b[2] < b[3] else None

    def grid(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (h, 1) and (1, w) of a box."""
        y0, y1, x0, x1 = box
        return self.ys[y0:y1, None], self.xs[None, x0:x1]

    def paint(self, box, mask: np.ndarray | None, texture: Texture, rgb: Sequence[float],
              labels: tuple[int, int, int, int]) -> None:
        """Paint `texture` of base colour `rgb` where `mask` (box-shaped, None = all) holds,
        writing the labels (object, part, material, color) on every painted pixel."""
        if box is None:
            return
        y0, y1, x0, x1 = box
        if mask is not None and not mask.any():
            return
        if self.restyle is not None:
            texture, rgb, labels = self.restyle(texture, np.asarray(rgb, np.float32), labels)
        colour = texture(self, box, np.asarray(rgb, np.float32))
        target = self.rgb[y0:y1, x0:x1]
        segs = self.seg[:, y0:y1, x0:x1]
        if mask is None:
            target[...] = colour
            segs[...] = np.asarray(labels, np.int32)[:, None, None]
        else:
            target[mask] = colour[mask]
            for c in range(4):
                segs[c][mask] = labels[c]

    # ---- shapes: each returns (box, mask) ------------------------------------------------
    def rect(self, y0, y1, x0, x1):
        return self.box(y0, y1, x0, x1), None

    def ellipse(self, cy, cx, ry, rx):
        b = self.box(cy - ry, cy + ry, cx - rx, cx + rx)
        if b is None:
            return None, None
        y, x = self.grid(b)
        return b, ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0

    def polygon(self, pts: Sequence[tuple[float, float]]):
        """Convex polygon given as (y, x) vertices in either winding order."""
        p = np.asarray(pts, np.float32)
        b = self.box(p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max())
        if b is None:
            return None, None
        y, x = self.grid(b)
        q = np.roll(p, -1, axis=0)
        area = np.sum(p[:, 1] * q[:, 0] - q[:, 1] * p[:, 0])
        sign = 1.0 if area >= 0 else -1.0
        mask = np.ones((b[1] - b[0], b[3] - b[2]), bool)
        for (ay, ax), (by, bx) in zip(p, q):
            mask &= sign * ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) >= 0
        return b, mask
