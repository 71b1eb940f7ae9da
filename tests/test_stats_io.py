"""save/load of every statistics state: bit-exact round trips, atomic replacement."""
import os

import numpy as np
import pytest

from jaxdissect import stats
from stats_helpers import assert_trees_equal


def make_states():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    return {
        "quantile": (stats.QuantileSketch.create(4, resolution=32).update(x), lambda s: s.update(x * 2)),
        "topk": (stats.TopK.create(4, 3, largest=False).update(x, np.arange(50)),
                 lambda s: s.update(x + 1, np.arange(50, 100))),
        "moments": (stats.Moments.create(4).update(x), lambda s: s.update(x)),
        "crosscov": (stats.CrossCovariance.create(4, 2).update(x, x[:, :2]), lambda s: s.update(x, x[:, 2:])),
        "bincount": (stats.Bincount.create(5).update(np.arange(10) % 5), lambda s: s.update(np.arange(3))),
        "iou": (stats.IoUTally.create(4, 6).update(x.reshape(2, 5, 5, 4) > 0, np.ones((2, 1, 5, 5), np.int32)),
                lambda s: s.update(x.reshape(2, 5, 5, 4) > 1, np.full((2, 1, 5, 5), 3, np.int32))),
    }


@pytest.mark.parametrize("name", list(make_states()))
def test_round_trip_is_bit_exact_and_keeps_updating(tmp_path, name):
    state, more = make_states()[name]
    path = tmp_path / name
    stats.save(path, state)
    loaded = stats.load(path)
    assert type(loaded) is type(state)
    assert_trees_equal(loaded, state)
    assert_trees_equal(more(loaded), more(state))


def test_overwrite_is_atomic_and_crash_leaves_previous(tmp_path, monkeypatch):
    path = tmp_path / "state"
    first = stats.Bincount.create(3).update(np.array([0, 1, 1]))
    stats.save(path, first)
    second = first.update(np.array([2, 2]))

    import orbax.checkpoint as ocp

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash during save")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stats.save(path, second)
    monkeypatch.undo()
    assert_trees_equal(stats.load(path), first)
    assert sorted(os.listdir(tmp_path)) == ["state"]  # no temporary left behind
    stats.save(path, second)
    assert_trees_equal(stats.load(path), second)


def test_load_falls_back_to_old_copy_after_crash_between_renames(tmp_path):
    path = tmp_path / "state"
    s = stats.Bincount.create(3).update(np.array([0, 1, 1]))
    stats.save(path, s)
    os.rename(path, str(path) + ".old")
    assert_trees_equal(stats.load(path), s)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no statistics state"):
        stats.load(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a saved jaxdissect.stats state"):
        stats.load(tmp_path / "junk")
    with pytest.raises(TypeError):
        stats.save(tmp_path / "x", {"not": "a state"})
