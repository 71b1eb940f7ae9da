"""Shared pieces of the paint tests: a small toy-generator painter, a rule-based segmenter whose
answer the tests can compute by hand, PNG helpers and a server running in a thread."""
import base64
import importlib.util
import io
import os
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxdissect.data.scenes import SCENE_LABELS
from jaxdissect.models import get_spec
from jaxdissect.models.registry import LoadedModel
from jaxdissect.paint import Painter
from jaxdissect.segment.base import SegmentLabels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE, SKY, DOOR = (SCENE_LABELS.index(n) for n in ("tree", "sky", "door"))
IMAGE_HW = (32, 32)


def load_script():
    """scripts/paint.py as a module (registered in sys.modules: its dataclasses need that)."""
    if "paint_script" in sys.modules:
        return sys.modules["paint_script"]
    spec = importlib.util.spec_from_file_location("paint_script", os.path.join(ROOT, "scripts", "paint.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paint_script"] = mod
    spec.loader.exec_module(mod)
    return mod


def small_generator():
    """The toy generator architecture, small (layer6 is 16x16 with 16 units; images 32x32), random weights."""
    spec = get_spec("toy_generator")
    cfg = {"z_dim": 64, "channels": [32, 32, 16, 8]}
    module = spec.build(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64)))  # random weights without
    rng = np.random.default_rng(1)  # compiling the initializers (slow on a busy CPU)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    return LoadedModel(spec.name, spec.kind, module, variables, cfg, None, spec.normalization, "layer6",
                       tuple(f"layer{i}" for i in range(1, 9)), None)


def small_painter(model):
    """Tree units 2, 5, 7 (best first), sky units 0, 1; door below min_iou (not a concept)."""
    iou = np.zeros((len(SCENE_LABELS), 16))
    iou[TREE, [2, 5, 7]] = [0.3, 0.2, 0.1]
    iou[SKY, [0, 1]] = [0.5, 0.4]
    iou[DOOR, 9] = 0.01
    high = np.linspace(1.0, 2.5, 16)
    return Painter(model, "layer6", iou, high, SCENE_LABELS.names, SCENE_LABELS.categories, units_per_concept=3)


class RuleSegmenter:
    """A segmenter by fixed colour rules (thresholds suit the random small generator's greenish
    images), channel 0 objects, channel 1 colours, on RGB in [-1, 1]: object 'sky' where
    blue > -0.3, else 'grass' where green > 0.6, else none; colour 'red' where red > -0.9."""

    labels = SegmentLabels(("-", "sky", "grass", "red"), ("-", "object", "object", "color"), ("object", "color"))

    def segment(self, images, downsample: int = 1):
        x = np.asarray(images, np.float32)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        obj = np.where(b > -0.3, 1, np.where(g > 0.6, 2, 0))
        col = np.where(r > -0.9, 3, 0)
        seg = np.stack([obj, col], axis=1).astype(np.int32)
        return seg[..., downsample // 2::downsample, downsample // 2::downsample]


def expected_view(image_u8: np.ndarray) -> np.ndarray:
    """RuleSegmenter's first-channel-with-a-label map of a uint8 image, by hand."""
    x = image_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    out = np.zeros(image_u8.shape[:2], np.int32)
    for y in range(out.shape[0]):
        for xx in range(out.shape[1]):
            r, g, b = x[y, xx]
            if b > -0.3:
                out[y, xx] = 1
            elif g > 0.6:
                out[y, xx] = 2
            elif r > -0.9:
                out[y, xx] = 3
    return out


def png_url(mask, mode="RGBA") -> str:
    """A 0/1 mask as a PNG data URL (painted = opaque white)."""
    buf = io.BytesIO()
    rgba = np.zeros(np.shape(mask) + (4,), np.uint8)
    rgba[np.asarray(mask) > 0] = 255
    Image.fromarray(rgba, "RGBA").convert(mode).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_png(url) -> np.ndarray:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


class RunningServer:
    """scripts/paint.py's server on 127.0.0.1 (an ephemeral port) in a thread."""

    def __init__(self, painter, segmenter=None, limits=None):
        self.mod = load_script()
        kw = {} if limits is None else {"limits": limits}
        self.server = self.mod.make_server(painter, port=0, segmenter=segmenter, segmenter_name="rule", **kw)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
