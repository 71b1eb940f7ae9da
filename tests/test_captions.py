"""Captions of the scenes world are true of their scenes, use the toy vocabulary, and the
recorded composition agrees with the exact segmentation."""
import importlib.resources

import numpy as np
import pytest

from jaxdissect.data import captions as cap
from jaxdissect.data.scene_objects import SCENE_LABELS
from jaxdissect.data.scenes import SCENE_CLASSES, objects_present, render_scene

CASES = [("train", i) for i in range(12)] + [("val", i) for i in range(12)]


@pytest.fixture(scope="module")
def scenes():
    return {(s, i): cap.render_with_composition(0, s, i) for s, i in CASES}


def test_rendering_is_unchanged_by_recording(scenes):
    for (split, i), (image, seg, comp) in list(scenes.items())[::4]:
        ref_image, ref_seg, cls = render_scene(0, split, i)
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(seg, ref_seg)
        assert comp.scene == SCENE_CLASSES[cls]


def test_composition_agrees_with_the_segmentation(scenes):
    for image, seg, comp in scenes.values():
        present = objects_present(seg)
        assert comp.objects() <= present
        counts = np.bincount(seg[0].ravel(), minlength=len(SCENE_LABELS))
        for name in present:
            if counts[SCENE_LABELS.index(name)] >= 300 and name != "cloud":
                assert name in comp.objects(), name
        for t in comp.things + comp.mountains + comp.grounds:
            mask = seg[0] == SCENE_LABELS.index(t.kind)
            assert t.pixels <= mask.sum()
            # the thing's colour is on its pixels, in the colour channel
            assert (mask & (seg[3] == SCENE_LABELS.index(t.color))).any(), (t.kind, t.color)
            for p in t.parts:
                on = mask & (seg[1] == SCENE_LABELS.index(p.name)) & (seg[3] == SCENE_LABELS.index(p.color))
                assert on.sum() >= p.pixels > 0, (t.kind, p)
        for kind in cap.THINGS:  # visible pixels of one kind add up to at most the kind's pixels
            assert sum(t.pixels for t in comp.things if t.kind == kind) <= counts[SCENE_LABELS.index(kind)]


def test_captions_are_true_seeded_and_in_the_vocabulary(scenes):
    vocab = set(cap.VOCABULARY)
    nouns = {w: kind for kind, d in cap.NOUNS.items() for syn in list(d) + list(d.values()) for w in cap.tokenize_words(syn)}
    nouns.pop("street", None)  # 'street' is also a scene word ('town street'); 'lamp' also a part
    nouns.pop("lamp", None)
    nouns.pop("lamps", None)
    class_words = {"highway": ("highway", "motorway", "freeway"), "village": ("village", "hamlet"),
                   "beach": ("beach", "seaside", "coast"), "lake": ("lake", "pond")}
    for k, (_, _, comp) in enumerate(scenes.values()):
        texts = [cap.caption(comp, np.random.default_rng(k * 100 + j)) for j in range(40)]
        assert texts == [cap.caption(comp, np.random.default_rng(k * 100 + j)) for j in range(40)]
        assert len(set(texts)) > 20  # varied
        for text in texts + [cap.full_caption(comp)]:
            words = cap.tokenize_words(text)
            assert set(words) <= vocab and 0 < len(words) <= 30, text
            for w in words:
                if w in nouns:
                    assert comp.count(nouns[w]) > 0, (text, comp)
            for cls, ws in class_words.items():
                if set(ws) & set(words):
                    assert comp.scene == cls, (text, comp.scene)
        assert cap.full_caption(comp).split()[0] in ("a", "an")


def test_full_caption_counts(scenes):
    for _, _, comp in scenes.values():
        text = cap.full_caption(comp)
        assert comp.scene in text
        houses = comp.count("house")
        if houses >= 2:
            assert f"{cap.NUMBERS[houses]} " in text and "houses" in text
        elif houses == 1:
            assert " house" in text and "houses" not in text


def test_concept_phrases_are_true(scenes):
    for _, seg, comp in scenes.values():
        for phrase in cap.concept_phrases(comp):
            words = phrase.split()
            assert all(w in cap.VOCABULARY for w in cap.tokenize_words(phrase))
            ids = [SCENE_LABELS.index(w) for w in words if w in SCENE_LABELS.names]
            if len(ids) == 1 and words[0] in SCENE_LABELS.names and words[0] not in ("snowy",):
                c = SCENE_LABELS.categories[ids[0]]
                chan = SCENE_LABELS.category_names.index(c)
                assert (seg[chan] == ids[0]).any(), phrase


def test_shipped_concept_list():
    text = importlib.resources.files("jaxdissect.data").joinpath("scene_concepts.txt").read_text()
    phrases = text.splitlines()
    assert len(phrases) == len(set(phrases)) > 100
    assert set(SCENE_LABELS.names[1:]) <= set(phrases)  # every segmentation label is a concept
    assert {"red house", "brick house", "tile roof", "white sail", "stone mountain"} <= set(phrases)
    assert all(set(cap.tokenize_words(p)) <= set(cap.VOCABULARY) for p in phrases)
    assert not set(SCENE_CLASSES) & set(phrases)  # scene classes are not segmentation concepts


@pytest.mark.slow
def test_shipped_concept_list_is_the_derived_one():
    text = importlib.resources.files("jaxdissect.data").joinpath("scene_concepts.txt").read_text()
    assert tuple(text.splitlines()) == cap.default_concepts()


def test_window_compositions_name_what_the_window_shows():
    """A window's composition (the toy CLIP's crop captions) names an object only when at least
    MIN_THING_PIXELS of its pixels are in the window (sky: MIN_PART_PIXELS), names every object
    that covers 300 of them, and keeps the whole scene's class; the whole composition is
    render_with_composition's."""
    windows = cap.grid_windows(128, 64, 32) + cap.grid_windows(128, 32, 32)
    assert len(windows) == 9 + 16 and windows[4] == (32, 96, 32, 96)
    for i in range(6):
        image, seg, whole, parts = cap.render_with_windows(0, "val", i, windows)
        ref_image, _, ref_whole = cap.render_with_composition(0, "val", i)
        np.testing.assert_array_equal(image, ref_image)
        assert whole == ref_whole
        for (y0, y1, x0, x1), comp in zip(windows, parts):
            counts = np.bincount(seg[0, y0:y1, x0:x1].ravel(), minlength=len(SCENE_LABELS))
            named = comp.objects()
            for name in named:
                floor = cap.MIN_PART_PIXELS if name in ("sky", "cloud") else cap.MIN_THING_PIXELS
                assert counts[SCENE_LABELS.index(name)] >= floor, (i, (y0, x0), name)
            big = {SCENE_LABELS.names[k] for k in np.flatnonzero(counts >= 300) if k}
            assert big <= named, (i, (y0, x0), big - named)
            assert comp.scene == whole.scene
            assert (comp.sky is None) == (counts[SCENE_LABELS.index("sky")] < cap.MIN_PART_PIXELS)
            text = cap.caption(comp, np.random.default_rng(i))
            assert set(cap.tokenize_words(text)) <= set(cap.VOCABULARY)
            if comp.sky is None:
                assert "sky" not in cap.concept_phrases(comp) and "sky" not in cap.tokenize_words(cap.full_caption(comp))
