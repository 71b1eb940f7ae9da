"""Captions of the scenes world, written from each scene's exact composition.

`render_with_composition` draws a scene while recording every painted piece (which region or
object it belongs to, its part, material and colour, and how many of its pixels stay visible
once nearer things are drawn over it); `Composition` is what is visible: the scene class, the
sky, the mountains, the ground, and each object with its colour, material and parts.
`caption(composition, rng)` writes one seeded caption of it, e.g. "a village with two red
houses with doors, a tree and a car under a cloudy sky": a random subset of what is there,
with synonyms, counts and varied word order, never anything that is not there.
`VOCABULARY` holds every word a caption can use (the toy CLIP's text vocabulary).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from jaxdissect.data.scene_objects import COLORS, MATERIALS, OBJECTS, PARTS, SCENE_LABELS
from jaxdissect.data.scene_shapes import Canvas
from jaxdissect.data.scenes import SCENE_CLASSES, draw_scene, objects_present, scene_class_of

# A thing (or part) counts as visible when this many of its pixels show at 128x128 (scaled by
# area for other sizes): small enough for a door (~45 px), large enough to ignore slivers.
MIN_THING_PIXELS = 12
MIN_PART_PIXELS = 4
THINGS = ("house", "tree", "car", "boat", "person", "streetlight")
GROUNDS = ("grass", "road", "water", "sand")


# ---- what is visible ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Part:
    """One visible part of a thing, e.g. a door: its material, colour and pieces (windows: 3)."""

    name: str
    material: str | None
    color: str
    pieces: int
    pixels: int


@dataclasses.dataclass(frozen=True)
class Thing:
    """One visible object or region instance (a house, a mountain, the grass) and its parts."""

    kind: str
    color: str  # the colour of its main body (a house's walls, a tree's crown, a person's shirt)
    material: str | None
    pixels: int
    parts: tuple[Part, ...] = ()
    snow: bool = False  # mountains: a visible snow cap

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


@dataclasses.dataclass(frozen=True)
class Composition:
    """Everything visible in one scene."""

    scene: str  # class name, one of SCENE_CLASSES (of the whole scene, also for a window of it)
    sky: str | None  # 'blue' or 'grey'; None in a window that shows no sky
    clouds: tuple[str, ...]  # colours of the visible clouds (empty: no cloud)
    mountains: tuple[Thing, ...]
    grounds: tuple[Thing, ...]  # grass / road / water / sand bands
    things: tuple[Thing, ...]  # houses, trees, cars, boats, people, streetlights

    def count(self, kind: str) -> int:
        return sum(t.kind == kind for t in self.things + self.mountains + self.grounds)

    def objects(self) -> set[str]:
        """The object names (as in SCENE_LABELS) of everything visible."""
        names = ({"sky"} if self.sky else set()) | {t.kind for t in self.things + self.mountains + self.grounds}
        return names | ({"cloud"} if self.clouds else set())


class _RecordingCanvas(Canvas):
    """A canvas that remembers, per pixel, which painted piece is on top, and per piece its
    labels and the drawing block (`begin(what)`) it belongs to."""

    def __init__(self, size: int, rng: np.random.Generator, restyle=None):
        super().__init__(size, rng, restyle)
        self.piece = np.full((size, size), -1, np.int32)
        self.pieces: list[tuple[int, tuple[int, int, int, int]]] = []  # (block, labels)
        self.blocks: list[str] = []

    def begin(self, what: str) -> None:
        self.blocks.append(what)

    def paint(self, box, mask, texture, rgb, labels) -> None:
        if box is None or (mask is not None and not mask.any()):
            return
        super().paint(box, mask, texture, rgb, labels)
        y0, y1, x0, x1 = box
        region = self.piece[y0:y1, x0:x1]
        if mask is None:
            region[...] = len(self.pieces)
        else:
            region[mask] = len(self.pieces)
        self.pieces.append((len(self.blocks) - 1, tuple(int(v) for v in labels)))


def _name(i: int) -> str | None:
    return SCENE_LABELS.names[i] if i else None


def _thing(kind: str, pieces: Sequence[tuple[tuple, int]], min_part: int) -> Thing:
    """A Thing from its pieces ((labels, visible pixels), in drawing order)."""
    body_part = {"tree": "crown", "boat": "hull", "person": "torso", "streetlight": "pole"}.get(kind)
    parts: dict[str, list] = {}
    body = None
    for (_, part, mat, col), px in pieces:
        pname, mname, cname = _name(part), _name(mat), _name(col)
        if pname == body_part or (pname is None and body is None):
            if body is None or (px > 0 and body[2] == 0):
                body = (cname, mname, px)
        if pname is not None and px >= min_part:
            entry = parts.setdefault(pname, [mname, cname, 0, 0])
            entry[2] += 1
            entry[3] += px
    color, material, _ = body if body is not None else (None, None, 0)
    snow = any(_name(l[2]) == "snow" and px >= min_part for l, px in pieces)
    total = sum(px for _, px in pieces)
    return Thing(kind, color, material, total,
                 tuple(Part(n, m, c, k, p) for n, (m, c, k, p) in parts.items()), snow)


def _composition(canvas: _RecordingCanvas, window: tuple[int, int, int, int] | None = None) -> Composition:
    """What is visible in the whole canvas, or in `window` (y0, y1, x0, x1) of it: the same
    pixel thresholds (a window is seen at the scene's scale), the scene class of the whole."""
    size = canvas.size
    scale = (size / 128.0) ** 2
    min_thing, min_part = max(1, round(MIN_THING_PIXELS * scale)), max(1, round(MIN_PART_PIXELS * scale))
    piece = canvas.piece if window is None else canvas.piece[window[0]:window[1], window[2]:window[3]]
    visible = np.bincount(piece.ravel() + 1, minlength=len(canvas.pieces) + 1)[1:]
    by_block: list[list[tuple[tuple, int]]] = [[] for _ in canvas.blocks]
    for k, (block, labels) in enumerate(canvas.pieces):
        by_block[block].append((labels, int(visible[k])))
    sky, clouds, mountains, grounds, things = "blue" if window is None else None, [], [], [], []
    for what, pieces in zip(canvas.blocks, by_block):
        if what == "sky":
            for labels, px in pieces:
                if _name(labels[0]) == "sky":
                    if window is None or px >= min_part:
                        sky = _name(labels[3])
                elif px >= min_part:
                    clouds.append(_name(labels[3]))
        elif what == "mountains":  # each stone piece starts a mountain; a snow cap follows it
            groups: list[list] = []
            for labels, px in pieces:
                if _name(labels[2]) == "stone" or not groups:
                    groups.append([])
                groups[-1].append((labels, px))
            mountains += [_thing("mountain", g, min_part) for g in groups]
        elif what in GROUNDS:
            grounds.append(_thing(what, pieces, min_part))
        elif what in THINGS:
            things.append(_thing(what, pieces, min_part))
        else:
            raise ValueError(f"unknown drawing block {what!r}")
    keep = lambda ts: tuple(t for t in ts if t.pixels >= min_thing)  # noqa: E731
    scene = SCENE_CLASSES[scene_class_of(objects_present(canvas.seg))]
    return Composition(scene, sky, tuple(sorted(set(clouds))), keep(mountains), keep(grounds), keep(things))


def render_with_composition(seed: int, split: str, index: int, image_size: int = 128):
    """Image `index` of (seed, split) as `scenes.render_scene` draws it, with what is visible in it:
    (uint8 image (H, W, 3), int32 segmentation (4, H, W), Composition)."""
    canvas = draw_scene(seed, split, index, image_size, canvas_type=_RecordingCanvas)
    image = np.clip(np.rint(canvas.rgb), 0, 255).astype(np.uint8)
    return image, canvas.seg, _composition(canvas)


def render_with_windows(seed: int, split: str, index: int, windows: Sequence[tuple[int, int, int, int]],
                        image_size: int = 128):
    """As render_with_composition, plus what is visible in each window (y0, y1, x0, x1) of the
    image: (image, segmentation, Composition of the whole, tuple of the windows' Compositions)."""
    canvas = draw_scene(seed, split, index, image_size, canvas_type=_RecordingCanvas)
    image = np.clip(np.rint(canvas.rgb), 0, 255).astype(np.uint8)
    return image, canvas.seg, _composition(canvas), tuple(_composition(canvas, w) for w in windows)


def grid_windows(size: int = 128, window: int = 64, stride: int = 32) -> tuple[tuple[int, int, int, int], ...]:
    """Square windows (y0, y1, x0, x1) of side `window` every `stride` pixels over a size x size image."""
    starts = range(0, size - window + 1, stride)
    return tuple((y, y + window, x, x + window) for y in starts for x in starts)


# ---- words ----------------------------------------------------------------------------------
SCENE_WORDS = {
    "street": ("street", "town street", "city street"), "highway": ("highway", "motorway", "freeway"),
    "park": ("park", "city park"), "village": ("village", "hamlet"), "forest": ("forest", "woods", "woodland"),
    "harbour": ("harbour", "harbor", "port"), "beach": ("beach", "seaside", "coast"), "lake": ("lake", "pond"),
}
NOUNS = {  # singular -> plural, per synonym
    "house": {"house": "houses", "home": "homes", "cottage": "cottages"},
    "tree": {"tree": "trees"},
    "car": {"car": "cars", "automobile": "automobiles"},
    "boat": {"boat": "boats", "sailboat": "sailboats", "ship": "ships"},
    "person": {"person": "people", "pedestrian": "pedestrians", "figure": "figures"},
    "streetlight": {"streetlight": "streetlights", "street lamp": "street lamps", "lamppost": "lampposts"},
    "mountain": {"mountain": "mountains", "hill": "hills"},
}
PART_NOUNS = {  # part -> (singular, plural) synonyms
    "roof": (("roof", "roofs"),), "door": (("door", "doors"),), "window": (("window", "windows"),),
    "trunk": (("trunk", "trunks"),), "crown": (("crown", "crowns"), ("foliage", "foliage"), ("leaves", "leaves")),
    "wheel": (("wheel", "wheels"),), "hull": (("hull", "hulls"),), "mast": (("mast", "masts"),),
    "sail": (("sail", "sails"),), "head": (("head", "heads"), ("skin", "skin")),
    "torso": (("torso", "torsos"), ("shirt", "shirts")), "leg": (("leg", "legs"), ("trousers", "trousers")),
    "pole": (("pole", "poles"),), "lamp": (("lamp", "lamps"), ("light", "lights")),
}
MASS_PARTS = {"foliage", "leaves", "skin", "trousers"}  # no article, no count
MATERIAL_WORDS = {"brick": ("brick",), "plaster": ("plaster",), "wood": ("wooden", "wood"), "metal": ("metal",),
                  "glass": ("glass",), "tile": ("tile",), "stone": ("stone", "rocky"), "rubber": ("rubber",),
                  "fabric": ("fabric", "cloth"), "foliage": ("leafy",), "skin": (), "snow": ("snowy",),
                  "turf": ("turf",), "asphalt": ("asphalt",), "ripples": (), "grit": ()}
GROUND_PHRASES = {  # region -> phrases; {c} is its colour
    "grass": ("grass", "{c} grass", "turf", "{c} turf", "a {c} lawn", "a lawn"),
    "road": ("a road", "an asphalt road", "a {c} road", "asphalt", "a {c} asphalt road"),
    "water": ("water", "{c} water", "water with ripples", "ripples", "rippling water"),
    "sand": ("sand", "{c} sand", "grit", "sand and grit", "gritty sand"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
JOIN_WORDS = ("a", "an", "and", "with", "in", "at", "on", "of", "under", "photo", "picture", "sky", "clouds",
              "cloud", "cloudy", "clear", "overcast", "many", "several", "some", "snow", "capped", "the",
              "by", "near", "over", "scene", "view")


def tokenize_words(text: str) -> list[str]:
    """Lower-case words of a caption or phrase (punctuation and digits are separators)."""
    return re.findall(r"[a-z]+", text.lower())


def _vocabulary() -> tuple[str, ...]:
    strings: list[str] = list(JOIN_WORDS) + list(NUMBERS) + list(COLORS) + list(OBJECTS) + list(PARTS)
    strings += list(MATERIALS) + list(SCENE_CLASSES)
    for syn in SCENE_WORDS.values():
        strings += syn
    for d in NOUNS.values():
        strings += list(d) + list(d.values())
    for pairs in PART_NOUNS.values():
        strings += [w for pair in pairs for w in pair]
    for words in MATERIAL_WORDS.values():
        strings += words
    for phrases in GROUND_PHRASES.values():
        strings += [p.replace("{c}", "") for p in phrases]
    return tuple(sorted({w for s in strings for w in tokenize_words(s)}))


VOCABULARY = _vocabulary()


# ---- captions -------------------------------------------------------------------------------
def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _count_word(n: int, rng) -> str:
    if n > 4 and rng.random() < 0.5:
        return _pick(rng, ("many", "several"))
    return NUMBERS[n] if n < len(NUMBERS) else "many"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _part_phrase(part: Part, rng) -> str:
    """'a red door', 'glass windows', 'a wooden mast', 'green foliage' ..."""
    singular, plural = _pick(rng, PART_NOUNS[part.name])
    adjectives = []
    if rng.random() < 0.6:
        adjectives.append(part.color)
    mats = MATERIAL_WORDS.get(part.material or "", ())
    if mats and rng.random() < 0.35:
        adjectives.append(_pick(rng, mats))
    rng.shuffle(adjectives) if len(adjectives) > 1 and rng.random() < 0.3 else None
    if singular in MASS_PARTS or (part.pieces > 1 and plural != singular):
        return " ".join(adjectives + [plural])
    return _a(" ".join(adjectives + [singular]))


def _with_parts(thing: Thing, rng) -> str:
    """' with a red door and windows' for some of the thing's visible parts ('' often)."""
    parts = [p for p in thing.parts if not (thing.kind == "tree" and p.name == "crown" and rng.random() < 0.5)]
    if not parts or rng.random() < 0.55:
        return ""
    chosen = rng.permutation(len(parts))[: int(rng.integers(1, min(len(parts), 2) + 1))]
    return " with " + _join([_part_phrase(parts[i], rng) for i in chosen])


def _adjectives(thing: Thing, rng, use_color: float = 0.6) -> list[str]:
    adj = []
    if thing.color and rng.random() < use_color:
        adj.append(thing.color)
    mats = MATERIAL_WORDS.get(thing.material or "", ())
    if thing.kind == "mountain" and thing.snow and rng.random() < 0.4:
        mats = ("snowy", "snow capped")
    if mats and thing.kind not in ("tree",) and rng.random() < 0.3:
        adj.append(_pick(rng, mats))
    return adj


def _group_phrase(kind: str, things: Sequence[Thing], rng) -> str:
    """A noun phrase for all the visible things of one kind."""
    noun, plural = _pick(rng, list(NOUNS[kind].items()))
    if len(things) == 1:
        t = things[0]
        snow = " with snow" if kind == "mountain" and t.snow and rng.random() < 0.3 else ""
        return _a(" ".join(_adjectives(t, rng) + [noun])) + snow + _with_parts(t, rng)
    if rng.random() < 0.25 and len(things) <= 3:  # one by one
        return _join([_group_phrase(kind, [t], rng) for t in things])
    words = [_count_word(len(things), rng)]
    colors = {t.color for t in things}
    if len(colors) == 1 and rng.random() < 0.6:
        words.append(things[0].color)
    words.append(plural)
    shared = set.intersection(*({p.name for p in t.parts} for t in things))
    tail = ""
    if shared and rng.random() < 0.35:
        name = _pick(rng, sorted(shared))
        singular, plural_part = _pick(rng, PART_NOUNS[name])
        tail = " with " + plural_part
    return " ".join(words) + tail


def _ground_phrase(g: Thing, rng) -> str:
    return _pick(rng, GROUND_PHRASES[g.kind]).replace("{c}", g.color or "")


def _sky_phrase(comp: Composition, rng) -> str:
    if comp.clouds and rng.random() < 0.6:
        return _pick(rng, ("a cloudy sky", f"{_pick(rng, comp.clouds)} clouds", "clouds", "a sky with clouds"))
    if comp.sky == "grey":
        return _pick(rng, ("a grey sky", "an overcast sky"))
    return _pick(rng, ("a blue sky", "a sky") if comp.clouds else ("a blue sky", "a clear sky", "a clear blue sky"))


def _scene_phrase(comp: Composition, rng) -> str:
    return _a(_pick(rng, SCENE_WORDS[comp.scene]))


# Materials that name a thing's kind well enough to pair with it ('brick house', 'metal boat').
PAIRED_MATERIAL_KINDS = ("house", "boat", "car", "mountain", "streetlight")
UNPAIRED_PART_MATERIALS = ("foliage", "skin", "fabric")


def concept_phrases(comp: Composition) -> list[str]:
    """Every bare concept phrase true of the scene, in the segmentation labels' words: names
    ('house', 'door', 'brick', 'red'), colour + name ('red house', 'blue door') and material +
    name ('brick house', 'tile roof'). The default concept list is their union over many scenes."""
    out: list[str] = ["sky", f"{comp.sky} sky", comp.sky] if comp.sky else []
    for c in comp.clouds:
        out += ["cloud", f"{c} cloud", c]
    for t in comp.things + comp.mountains + comp.grounds:
        out += [t.kind, f"{t.color} {t.kind}", t.color]
        if t.material and t.kind not in ("tree",):
            out.append(t.material)
            if t.kind in PAIRED_MATERIAL_KINDS:
                out.append(f"{t.material} {t.kind}")
        if t.snow:
            out += ["snow", "snowy mountain", "white"]
        for p in t.parts:
            out += [p.name, f"{p.color} {p.name}", p.color]
            if p.material:
                out.append(p.material)
                if p.material not in UNPAIRED_PART_MATERIALS:
                    out.append(f"{p.material} {p.name}")
    return list(dict.fromkeys(o for o in out if o and "None" not in o))


def default_concepts(n: int = 2000, seed: int = 0) -> tuple[str, ...]:
    """The scenes world's default concept list: every phrase `concept_phrases` finds in the
    first n train scenes; single label names first (in SCENE_LABELS order), then the two-word
    phrases alphabetically. jaxdissect/data/scene_concepts.txt is this list."""
    found: set[str] = set()
    for i in range(n):
        found.update(concept_phrases(render_with_composition(seed, "train", i)[2]))
    singles = [name for name in SCENE_LABELS.names[1:] if name in found]
    return tuple(singles + sorted(p for p in found if " " in p))


def caption(comp: Composition, rng: np.random.Generator, max_words: int = 30, bare: float = 0.15) -> str:
    """One random caption of `comp`: some of what is visible, in one of several word orders,
    with synonyms; everything it names is in the scene. At most `max_words` words. With
    probability `bare` it is one bare concept phrase instead ('red house', 'stone': the form
    of the concept lists the toy CLIP later scores)."""
    if rng.random() < bare:
        phrases = concept_phrases(comp)
        if phrases:  # a window can show nothing nameable
            return _pick(rng, phrases)
    kinds = [k for k in THINGS + ("mountain",) if comp.count(k)]
    groups = {k: [t for t in comp.things + comp.mountains if t.kind == k] for k in kinds}
    while True:
        facts = []
        order = rng.permutation(len(kinds))
        keep_all = rng.random() < 0.4
        for i in order:
            if keep_all or rng.random() < 0.5:
                facts.append(_group_phrase(kinds[i], groups[kinds[i]], rng))
        for g in comp.grounds:
            if rng.random() < 0.3:
                facts.insert(int(rng.integers(len(facts) + 1)), _ground_phrase(g, rng))
        sky = _sky_phrase(comp, rng) if rng.random() < 0.35 and comp.sky else None
        scene = _scene_phrase(comp, rng) if rng.random() < 0.85 or not (facts or sky) else None
        text = _arrange(scene, facts, sky, rng)
        if len(tokenize_words(text)) <= max_words:
            return text


def _arrange(scene: str | None, facts: list[str], sky: str | None, rng) -> str:
    photo = _pick(rng, ("a photo of ", "a picture of ", "a view of ")) if rng.random() < 0.25 else ""
    if not facts:
        text = scene or sky or ""
        if scene and sky:
            text = f"{scene} under {sky}" if rng.random() < 0.5 else f"{scene} with {sky}"
        return photo + text
    listed = _join(facts)
    if scene is None:
        text = listed
    else:
        form = int(rng.integers(3))
        if form == 0:
            text = f"{scene} with {listed}"
        elif form == 1:
            text = f"{listed} {_pick(rng, ('in', 'at', 'by'))} {scene}"
        else:
            text = f"{scene} {_pick(rng, ('scene', 'view'))} with {listed}" if rng.random() < 0.3 else \
                f"{scene} {_pick(rng, ('near', 'with'))} {listed}"
    if sky:
        text = f"{text} under {sky}" if rng.random() < 0.6 else f"{sky} over {text}"
    return photo + text


def full_caption(comp: Composition) -> str:
    """A deterministic caption naming everything visible (counts, main colours), in a fixed
    order: '<scene> with <things>, <mountains> and <grounds> under <sky>'."""
    facts = []
    for k in THINGS + ("mountain",):
        ts = [t for t in comp.things + comp.mountains if t.kind == k]
        if ts:
            noun, plural = next(iter(NOUNS[k].items()))
            colors = {t.color for t in ts}
            col = [ts[0].color] if len(colors) == 1 and ts[0].color else []
            facts.append(_a(" ".join(col + [noun])) if len(ts) == 1 else " ".join([NUMBERS[min(len(ts), 10)]] + col + [plural]))
    facts += [g.kind if g.kind != "road" else "a road" for g in comp.grounds]
    sky = ("a cloudy " if comp.clouds else "a ") + ("grey sky" if comp.sky == "grey" else "blue sky")
    if not comp.sky:
        return f"{_a(comp.scene)} with {_join(facts)}" if facts else _a(comp.scene)
    return f"{_a(comp.scene)} with {_join(facts)} under {sky}" if facts else f"{_a(comp.scene)} under {sky}"


def check_words(phrases: Iterable[str], vocabulary: Sequence[str] = VOCABULARY) -> None:
    """Raise ValueError naming every phrase with a word outside `vocabulary`."""
    vocab = set(vocabulary)
    bad = [(p, [w for w in tokenize_words(p) if w not in vocab]) for p in phrases]
    bad = [(p, ws) for p, ws in bad if ws]
    if bad:
        listed = "; ".join(f"{p!r}: {', '.join(ws)}" for p, ws in bad[:20])
        raise ValueError(f"{len(bad)} phrase(s) use words the toy CLIP does not know ({listed})"
                         + (" ..." if len(bad) > 20 else ""))


__all__ = ["Composition", "Thing", "Part", "render_with_composition", "render_with_windows", "grid_windows", "caption", "full_caption", "concept_phrases",
           "default_concepts",
           "VOCABULARY",
           "tokenize_words", "check_words"]
