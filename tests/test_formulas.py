"""Compositional formulas: planted units found by the beam search, counts against numpy."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.dissect.formulas import (AND, AND_NOT, OR, Formula, FormulaTally, beam_arrays, replay_counter,
                                         search_formulas)
from jaxdissect.stats import IoUTally, load, save
from stats_helpers import assert_trees_equal, run_sharded

NAMES = ["-", "water", "river", "blue", "grass", "sky", "red", "tree"]


def scene_like(seed, n=12, size=24):
    """Two channels (object ids 1..5, colour ids 6..7, 0 = none) of random rectangles."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((n, 2, size, size), np.int32)
    for i in range(n):
        for _ in range(6):
            y, x = rng.integers(0, size - 4, 2)
            hh, ww = rng.integers(3, 12, 2)
            seg[i, 0, y:y + hh, x:x + ww] = rng.integers(1, 6)
        for _ in range(3):
            y, x = rng.integers(0, size - 4, 2)
            seg[i, 1, y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = rng.integers(6, 8)
    return seg


def has_label(seg, k):
    return (seg == k).any(1)


def numpy_iou(unit, seg, formula):
    """Exact IoU over all pixels of a unit mask (N, H, W) with a formula's mask."""
    mask = formula.evaluate(lambda k: has_label(seg, k))
    union = (unit | mask).sum()
    return (unit & mask).sum() / union if union else 0.0


def run_search(units, seg, max_length, beam_width=5, batch=4):
    indicator = np.stack(units, -1)
    single = IoUTally.create(indicator.shape[-1], len(NAMES)).update(indicator, seg)
    batches = lambda: ((indicator[i:i + batch], seg[i:i + batch]) for i in range(0, len(seg), batch))  # noqa: E731
    return search_formulas(single, replay_counter(batches, len(NAMES), beam_width), max_length, beam_width)


def test_union_difference_and_longer_formulas_are_found():
    seg = scene_like(0)
    water, river, blue, grass, red = (has_label(seg, k) for k in (1, 2, 3, 4, 6))
    union = water | river
    minus = water & ~red
    three = (water | grass) & ~red
    result = run_search([union, minus, three, np.zeros_like(water), blue], seg, max_length=3)
    # the planted units' single labels cannot explain them: no label reaches 0.7 on the union
    single = [numpy_iou(u, seg, Formula((int(result.single_label[i]),))) for i, u in enumerate([union, minus])]
    assert max(numpy_iou(union, seg, Formula((k,))) for k in range(1, len(NAMES))) <= 0.7
    assert single[1] < 0.8, single
    np.testing.assert_allclose(result.single_iou[:2], single)
    f_union, f_minus, f_three = result.formulas[:3]
    assert f_union.key() == Formula((1,)).then(OR, 2).key() and result.iou[0] >= 0.9
    assert f_minus == Formula((1,)).then(AND_NOT, 6) and result.iou[1] >= 0.9
    assert f_three.key() == Formula((1,)).then(OR, 4).then(AND_NOT, 6).key()
    assert result.format(NAMES)[1] == "water AND NOT red"
    assert result.formulas[3] is None and result.iou[3] == 0 and result.single_label[3] == 0
    assert result.format(NAMES)[3] == "-"
    assert result.formulas[4] == Formula((3,)) and result.iou[4] == 1.0  # a label explained by itself
    for u, unit in [(0, union), (1, minus), (2, three), (4, blue)]:
        np.testing.assert_allclose(result.iou[u], numpy_iou(unit, seg, result.formulas[u]), rtol=1e-12)
        for formula, score in result.beams[u]:  # every score in the final beams is exact
            np.testing.assert_allclose(score, numpy_iou(unit, seg, formula), rtol=1e-12)
        scores = [s for _, s in result.beams[u]]
        assert scores == sorted(scores, reverse=True) and len({f.key() for f, _ in result.beams[u]}) == len(scores)


def test_noisy_union_beats_single_labels():
    seg = scene_like(1)
    rng = np.random.default_rng(2)
    unit = (has_label(seg, 2) | has_label(seg, 5)) ^ (rng.random(seg[:, 0].shape) < 0.03)
    result = run_search([unit], seg, max_length=2, beam_width=3)
    assert result.formulas[0].key() == Formula((2,)).then(OR, 5).key()
    assert result.iou[0] > result.single_iou[0] + 0.05
    np.testing.assert_allclose(result.iou[0], numpy_iou(unit, seg, result.formulas[0]))


def test_length_one_is_the_best_single_label():
    seg = scene_like(3)
    unit = has_label(seg, 4) | has_label(seg, 7)
    result = run_search([unit], seg, max_length=1)
    assert len(result.formulas[0]) == 1 and result.formulas[0].leaves[0] == result.single_label[0]
    assert result.iou[0] == result.single_iou[0]


def random_beam(rng, units, width, leaves, num_labels):
    beams = []
    for _ in range(units):
        beam = []
        for _ in range(rng.integers(0, width + 1)):
            f = Formula((int(rng.integers(1, num_labels)),))
            for _ in range(rng.integers(0, leaves)):
                f = f.then(int(rng.integers(0, 3)), int(rng.integers(0, num_labels + 2)))  # out-of-range ids too
            beam.append(f)
        beams.append(beam)
    return beams


@pytest.mark.parametrize("max_sets", [512, 2])  # by label sets, and pixel by pixel (too many sets)
def test_formula_tally_counts_exactly_and_merges_over_devices(tmp_path, max_sets):
    rng = np.random.default_rng(4)
    seg = scene_like(4, n=8, size=10)
    indicator = rng.random((8, 10, 10, 6)) < 0.3
    beams = random_beam(rng, 6, 3, 3, len(NAMES))
    beam = beam_arrays(beams, 3, 3)
    mask = np.array([True, True, False, True, True, True, True, False])
    state = FormulaTally.create(6, len(NAMES), 3).update(indicator, seg, beam, mask, max_label_sets=max_sets)
    ind, s = indicator[mask], seg[mask]
    has = lambda k: has_label(s, k) if 0 < k < len(NAMES) else np.zeros(s[:, 0].shape, bool)  # noqa: E731
    for u, b in enumerate(beams):
        for j in range(3):
            f = b[j].evaluate(has) if j < len(b) else np.zeros(s[:, 0].shape, bool)
            assert state.formula[j, u] == f.sum() and state.unit_formula[j, u] == (f & ind[..., u]).sum()
            for k in range(1, len(NAMES)):
                assert state.formula_label[j, k, u] == (f & has(k)).sum()
                assert state.unit_formula_label[j, k, u] == (f & has(k) & ind[..., u]).sum()
    assert int(state.pixels) == mask.sum() * 100
    if max_sets == 2:
        return
    whole = FormulaTally.create(6, len(NAMES), 3).update(indicator, seg, beam)
    sharded = run_sharded(lambda i, l: FormulaTally.create(6, len(NAMES), 3).update(i, l, beam).all_reduce("data"),
                          indicator, seg)
    assert_trees_equal(sharded, whole)
    halves = FormulaTally.create(6, len(NAMES), 3).update(indicator[:4], seg[:4], beam).merge(
        FormulaTally.create(6, len(NAMES), 3).update(indicator[4:], seg[4:], beam))
    assert_trees_equal(halves, whole)
    save(tmp_path / "formula", whole)
    assert_trees_equal(load(tmp_path / "formula"), whole)


def test_formula_text_and_keys():
    f = Formula((1,)).then(OR, 2).then(AND_NOT, 3)
    assert f.format(NAMES) == "(water OR river) AND NOT blue" and str(f) == "(1 OR 2) AND NOT 3"
    assert Formula.parse("(water OR river) AND NOT blue", NAMES) == f
    g = Formula((4,)).then(AND, 5).then(OR, 1).then(AND_NOT, 2)
    assert g.format(NAMES) == "((grass AND sky) OR water) AND NOT river"
    assert Formula.parse(g.format(NAMES), NAMES) == g and Formula.parse("sky", NAMES) == Formula((5,))
    assert f.key() == Formula((2,)).then(OR, 1).then(AND_NOT, 3).key()
    assert Formula((1,)).then(AND_NOT, 3).then(AND, 2).key() == Formula((1,)).then(AND, 2).then(AND_NOT, 3).key()
    assert Formula((1,)).then(AND, 2).key() != Formula((1,)).then(OR, 2).key()
    assert Formula((1,)).then(AND_NOT, 2).key() != Formula((2,)).then(AND_NOT, 1).key()
    with pytest.raises(ValueError, match="unknown label 'lake'"):
        Formula.parse("water OR lake", NAMES)
    with pytest.raises(ValueError, match="n - 1 operators"):
        Formula((1, 2))
    with pytest.raises(ValueError, match="formula length"):
        search_formulas(IoUTally.create(1, 3), lambda b: None, 0)
    with pytest.raises(ValueError, match="indicator"):
        FormulaTally.create(2, 3, 1).update(jnp.zeros((1, 2, 2, 3), bool), jnp.zeros((1, 1, 2, 2), jnp.int32),
                                            beam_arrays([[], []], 1, 1))
