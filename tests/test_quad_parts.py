"""Label numbering, part mapping, quad division and merging on small hand-made cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.segment.base import SegmentLabels
from jaxdissect.segment.color import color_label_plan
from jaxdissect.segment.merge import MergedSegmenter
from jaxdissect.segment.quad import connected_components, quad_divide
from jaxdissect.segment.upp import upp_label_plan, upp_labels_from_probs

LABELS = {
    "object": ["-", "building", "sky", "person", "window"],
    "material": ["-", "wood", "glass"],
    "object_part": {"person": ["head", "arm"], "building": ["window", "door", "roof"], "sky": ["cloud"]},
}


def bfs_components(a):
    """Reference labelling: 8-connected equal nonzero values, each component's id = 1 + its
    first pixel in raster order (the port's documented convention)."""
    h, w = a.shape
    out = np.zeros((h, w), int)
    for y in range(h):
        for x in range(w):
            if a[y, x] == 0 or out[y, x]:
                continue
            stack, out[y, x] = [(y, x)], y * w + x + 1
            while stack:
                cy, cx = stack.pop()
                for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                    for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                        if not out[ny, nx] and a[ny, nx] == a[y, x]:
                            out[ny, nx] = y * w + x + 1
                            stack.append((ny, nx))
    return out


def test_components_hand_made():
    a = np.array([[1, 0, 0, 2],
                  [0, 1, 0, 2],   # 1s touch diagonally: one component
                  [3, 3, 1, 0],   # 3 beside 1: different values, different components
                  [0, 0, 0, 1]])  # this 1 touches the 1 at (2, 2) diagonally
    want = np.array([[1, 0, 0, 4],
                     [0, 1, 0, 4],
                     [9, 9, 1, 0],
                     [0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(connected_components(jnp.asarray(a))), want)


def test_components_random_and_snake():
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 3, (17, 23)) * (rng.random((17, 23)) < 0.6) for _ in range(3)]
    snake = np.zeros((17, 23), int)  # a long winding path: many propagation steps
    snake[::4, :] = 5
    snake[1::8, -1] = snake[2::8, -1] = snake[3::8, -1] = 5
    snake[5::8, 0] = snake[6::8, 0] = snake[7::8, 0] = 5
    maps.append(snake)
    got = np.asarray(jax.jit(connected_components)(jnp.asarray(np.stack(maps))))
    for g, m in zip(got, maps):
        np.testing.assert_array_equal(g, bfs_components(m))
    assert len(np.unique(got[-1])) == 2  # the snake is one component


def test_quad_divides_every_component():
    # Two separate regions of object 2 and one of object 1 (No' = 4 objects).
    o = np.zeros((1, 6, 7), int)
    o[0, 0:3, 0:4] = 2   # rows 0-2, cols 0-3: vmid = (0+2+1)//2 = 1, hmid = (0+3+1)//2 = 2
    o[0, 4:6, 5:7] = 2   # rows 4-5, cols 5-6: vmid = 5, hmid = 6 (the last component: divided too)
    o[0, 5, 0] = 1       # a single pixel: vmid = 5, hmid = 0 -> bottom and right
    q = np.asarray(quad_divide(jnp.asarray(o), 4))
    t, l, b, r = 4, 8, 12, 16  # offsets of the -t, -l, -b, -r blocks
    v = np.zeros((6, 7), int)
    hz = np.zeros((6, 7), int)
    v[0, 0:4], v[1:3, 0:4] = 2 + t, 2 + b
    hz[0:3, 0:2], hz[0:3, 2:4] = 2 + l, 2 + r
    v[4, 5:7], v[5, 5:7] = 2 + t, 2 + b
    hz[4:6, 5], hz[4:6, 6] = 2 + l, 2 + r
    v[5, 0], hz[5, 0] = 1 + b, 1 + r
    np.testing.assert_array_equal(q[0, 0], v)
    np.testing.assert_array_equal(q[0, 1], hz)
    assert q.dtype == np.int32


def test_upp_label_numbering():
    plan = upp_label_plan(LABELS, quad=True, all_parts=True)
    objs = ["building", "sky", "person", "window"]
    want = (["-"] + objs + [f"{o}-{s}" for s in "tlbr" for o in objs]
            + ["wood", "glass"] + ["head", "arm", "door", "roof", "cloud"])
    assert list(plan.labels.names) == want
    assert plan.labels.categories[:5] == ("-",) + ("object",) * 4
    assert set(plan.labels.categories[5:21]) == {"part"}
    assert plan.labels.categories[21:23] == ("material", "material")
    assert plan.material_offset == 20
    # owners in object_part order; 'window' is an object, so the building's window part is id 4
    assert plan.owners == (3, 1, 2)
    assert plan.translations == ((23, 24), (4, 25, 26), (27,))
    # decoder groups by ascending object id: building (0..2), sky (3), person (4..5)
    assert plan.groups == ((4, 2), (0, 3), (3, 1))
    plain = upp_label_plan(LABELS)
    assert list(plain.labels.names) == ["-"] + objs + ["wood", "glass", "cloud", "door", "roof", "head", "arm"]
    assert plain.owners == (2, 1, 3) and plain.groups == ((3, 1), (0, 3), (4, 2))
    with pytest.raises(KeyError, match="car"):
        upp_label_plan(LABELS, part_objects=["car"])


def test_upp_parts_mapped_by_object_id():
    plan = upp_label_plan(LABELS, all_parts=True)  # owners person, building, sky
    # One row of 3 pixels: building, person, sky. Object probabilities pick them; each owner's
    # part group (found by object id) picks its second part where it has one.
    obj = np.zeros((1, 1, 3, 5), np.float32)
    obj[0, 0, 0, 1] = obj[0, 0, 1, 3] = obj[0, 0, 2, 2] = 1
    mat = np.zeros((1, 1, 3, 3), np.float32)
    mat[0, 0, :, 2] = 1
    parts = [np.tile(np.array([0.2, 0.8], np.float32), (1, 1, 3, 1)),        # person: arm
             np.tile(np.array([0.1, 0.7, 0.2], np.float32), (1, 1, 3, 1)),   # building: door
             np.ones((1, 1, 3, 1), np.float32)]                              # sky: cloud
    seg = np.asarray(upp_labels_from_probs({"object": obj, "material": mat, "parts": parts}, plan))
    names = plan.labels.names
    assert [names[i] for i in seg[0, 0, 0]] == ["building", "person", "sky"]
    assert [names[i] for i in seg[0, 1, 0]] == ["glass"] * 3
    assert [names[i] for i in seg[0, 2, 0]] == ["door", "arm", "cloud"]
    mat[0, 0, :, :] = [1, 0, 0]  # background material stays 0
    seg = np.asarray(upp_labels_from_probs({"object": obj, "material": mat, "parts": parts}, plan))
    assert (seg[0, 1] == 0).all()


def test_color_label_numbering():
    meta = {"labels": [{"name": "red", "category": "color"}, {"name": "x", "category": "color", "internal": True},
                       {"name": "dark", "category": "shade"}, {"name": "red", "category": "shade"}],
            "categories": [{"name": "color"}, {"name": "shade", "mask": "red"}],
            "imageformat": {"mean": [0, 0, 0], "stdev": [1, 1, 1]}}
    plan = color_label_plan(meta)
    assert plan.labels.as_pairs() == [("-", "-"), ("red", "color"), ("dark", "shade")]
    assert plan.category_channels == ((0, 1), (2, 3))
    assert plan.category_ids == ((1, 0), (2, 1))
    # a name in two categories: its last channel (the original's name -> position map) masks
    assert plan.category_masks == (None, (1, 1)) and not plan.bgr and plan.segsizes == (256,)


class _Fixed:
    def __init__(self, labels, seg):
        self.labels, self._seg = labels, seg

    def segment(self, images, downsample=1):
        return jnp.asarray(self._seg)


def test_merged_keeps_zero():
    a = SegmentLabels(("-", "a1", "a2"), ("-", "object", "object"), ("object",))
    b = SegmentLabels(("-", "b1"), ("-", "color"), ("color",))
    m = MergedSegmenter([_Fixed(a, [[[[0, 2]]]]), _Fixed(b, [[[[1, 0]]]])])
    assert m.labels.names == ("-", "a1", "a2", "b1")
    assert m.labels.category_names == ("object", "color")
    np.testing.assert_array_equal(np.asarray(m.segment(jnp.zeros((1, 1, 2, 3)))), [[[[0, 2]], [[3, 0]]]])


def test_quad_divide_sharded_over_devices():
    n = len(jax.devices())
    rng = np.random.default_rng(1)
    o = rng.integers(0, 3, (n, 9, 11)) * (rng.random((n, 9, 11)) < 0.5)
    mesh = jax.make_mesh((n,), ("data",))
    sharded = jax.device_put(jnp.asarray(o), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    got = jax.jit(quad_divide, static_argnums=1)(sharded, 2)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(quad_divide(jnp.asarray(o), 2)))
