"""Export a split of the scenes world in Broden's layout, so that Broden readers can read it.

    python -m jaxdissect.data.broden_export --split val --size 100 --out DIR [--seed 0] [--image-size 128]

writes DIR/index.csv, label.csv, category.csv, c_<category>.csv and DIR/images/scenes/: each
scene as a PNG (lossless), and one mask PNG per pixel category that the scene has (object,
part, material, color; label number = red + 256 * green). The scene class is a whole-image
'scene' category; the texture column is empty (the scenes world has no whole-image textures).

Label numbers: the scenes world's ids are kept (1 .. 54: objects, parts, materials, colours, in
SCENE_LABELS order), and scene class s is number 55 + s. Masks are at the image resolution
(sh = ih), so they hold the renderer's exact segmentation. label.csv's frequency is the number
of images with the label and coverage the summed fraction of pixels (in whole images), as in
Broden; c_<category>.csv numbers each category's labels densely from 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import numpy as np
from PIL import Image

from jaxdissect.atomic import atomic_directory
from jaxdissect.data.scenes import CHANNELS, SCENE_CLASSES, SCENE_LABELS, SPLITS, Scenes
from jaxdissect.segment.broden import encode_mask

BRODEN_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")  # Broden's column order
SCENE_OFFSET = len(SCENE_LABELS)  # scene class s has label number SCENE_OFFSET + s


def scene_label_number(scene_class: int) -> int:
    return SCENE_OFFSET + int(scene_class)


def label_table() -> list[tuple[int, str, str]]:
    """(number, name, category) of every exported label."""
    rows = [(i, SCENE_LABELS.names[i], SCENE_LABELS.categories[i]) for i in range(1, len(SCENE_LABELS))]
    rows += [(scene_label_number(s), name, "scene") for s, name in enumerate(SCENE_CLASSES)]
    return rows


def _save_png(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _write_csv(path: str, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def export_scenes(out: str | os.PathLike, split: str = "val", size: int = 100, seed: int = 0,
                  image_size: int = 128, overwrite: bool = False, progress=None) -> str:
    """Write scenes (split, size, seed, image_size) to `out` in Broden's layout; returns the path.

    The folder appears whole or not at all; an existing one is replaced only with overwrite."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out!r} exists; choose another folder or pass overwrite=True (--overwrite)")
    scenes = Scenes(split=split, size=size, seed=seed, image_size=image_size)
    num = 1 + len(label_table())
    frequency = np.zeros(num, np.int64)
    coverage = np.zeros(num, np.float64)
    category_images = {c: 0 for c in BRODEN_CATEGORIES}
    index = []
    with atomic_directory(out) as tmp:
        os.makedirs(os.path.join(tmp, "images", "scenes"))
        for i in range(len(scenes)):
            item = scenes[i]
            stem = f"scenes/{split}_{i:06d}"
            _save_png(os.path.join(tmp, "images", stem + ".png"), item["image"])
            cells = {c: "" for c in BRODEN_CATEGORIES}
            pixels = item["segmentation"][0].size
            for c, cat in enumerate(CHANNELS):
                channel = item["segmentation"][c]
                ids, counts = np.unique(channel[channel > 0], return_counts=True)
                if len(ids):
                    _save_png(os.path.join(tmp, "images", f"{stem}_{cat}.png"), encode_mask(channel))
                    cells[cat] = f"{stem}_{cat}.png"
                    frequency[ids] += 1
                    coverage[ids] += counts / pixels
                    category_images[cat] += 1
            scene = scene_label_number(item["scene"])
            cells["scene"] = str(scene)
            frequency[scene] += 1
            coverage[scene] += 1.0
            category_images["scene"] += 1
            h, w = item["image"].shape[:2]
            index.append([stem + ".png", split, h, w, h, w] + [cells[c] for c in BRODEN_CATEGORIES])
            if progress is not None:
                progress(i + 1)
        _write_csv(os.path.join(tmp, "index.csv"), ["image", "split", "ih", "iw", "sh", "sw", *BRODEN_CATEGORIES],
                   index)
        table = label_table()
        _write_csv(os.path.join(tmp, "label.csv"), ["number", "name", "category", "frequency", "coverage", "syns"],
                   [[n, name, f"{cat}({frequency[n]})", frequency[n], f"{coverage[n]:.6f}", name]
                    for n, name, cat in table])
        categories = []
        for cat in BRODEN_CATEGORIES:
            mine = [(n, name) for n, name, c in table if c == cat]
            _write_csv(os.path.join(tmp, f"c_{cat}.csv"), ["code", "number", "name", "frequency", "coverage"],
                       [[code, n, name, frequency[n], f"{coverage[n]:.6f}"] for code, (n, name) in enumerate(mine, 1)])
            categories.append([cat, 1 if mine else 0, len(mine), len(mine), category_images[cat]])
        _write_csv(os.path.join(tmp, "category.csv"), ["name", "first", "last", "count", "frequency"], categories)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdissect.data.broden_export",
                                     description="Export a split of the scenes world in Broden's layout.")
    parser.add_argument("--split", default="val", choices=sorted(SPLITS))
    parser.add_argument("--size", type=int, default=1000, help="number of scenes (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the scenes world's seed (default 0)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    try:
        path = export_scenes(args.out, args.split, args.size, args.seed, args.image_size, args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"broden_export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.size} {args.split} scenes in Broden's layout to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
