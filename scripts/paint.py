"""Paint units into a generator: a small local web page to switch concepts on or off in a region.

It dissects the layer first if needed (or reuses the results folder), then serves on
http://127.0.0.1:PORT/ a generated image, a brush to paint a region, a concept menu, on/off,
the regenerated image, and the segmentation of both (with a legend of label colours and each
label's share of pixels before and after), so one sees what the edit changed. Only the local
machine can reach it.

    python scripts/paint.py                                  (embedded toy_generator)
    python scripts/paint.py --model proggan_church --layer layer4 --port 8765

The page also takes its settings from the URL hash, which lets scripts drive it:
    #seed=3&concept=tree&on=0&rect=x0,y0,x1,y1&apply=1
paints the rectangle (image pixels) and applies the stroke once the page has loaded.

JSON API: GET /api/info; POST /api/render {"seed": int, "strokes": [{"mask": PNG data URL
(alpha or brightness > 50% = painted), "concept": str, "on": bool}]} -> {"original", "image"}
as PNG data URLs and "segmentation": {"original", "image", "legend", "segmenter"} (null with
--no-segmentation). A stroke may give "units": [int, ...] instead of "concept". One sample per
request; seeds lie in 0 <= seed < 100000 (sample k of the dissection's z sequence).
Malformed requests get a 4xx answer {"error": "..."} saying what is wrong: 400 for bad JSON,
keys, types or values, 413 for a body over --max-body-mb, 408 for a request not received within
--read-timeout seconds, 404/405 for unknown paths and methods.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from jaxdissect.paint import (SEED_LIMIT, Stroke, ZSequence, label_colors, label_legend, segmentation_view)
from jaxdissect.models import get_spec
from jaxdissect.segment.merge import SEGMENTER_NAMES
from jaxdissect.experiments.generator_intervention import GeneratorInterventionConfig, dissected_layer
from jaxdissect.models import load
from jaxdissect.paint import Painter

HOST = "127.0.0.1"
PNG_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MASK_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")  # 8-bit modes whose brightness/alpha mean what they say
REQUEST_KEYS = ("layer", "seed", "strokes")
STROKE_KEYS = ("concept", "mask", "on", "units")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body: int = 4 << 20  # bytes of a request body (a 256x256 canvas PNG is ~10 KB)
    read_timeout: float = 10.0  # seconds to receive a whole request: line, headers and body
    max_depth: int = 16  # JSON nesting (a valid request nests 3 deep)
    max_strokes: int = 64  # strokes per request
    seed_limit: int = SEED_LIMIT  # seeds are 0 <= seed < seed_limit

    def __post_init__(self):
        if self.max_body < 1 or self.read_timeout <= 0 or self.max_depth < 3 or self.max_strokes < 1 \
                or not 1 <= self.seed_limit <= SEED_LIMIT:
            raise ValueError(f"invalid server limits {self}")


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message saying what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jaxdissect paint</title>
<style>
body{font-family:sans-serif;margin:16px;color:#222}
.row{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.stack{position:relative;display:inline-block}
.stack img,.stack canvas,.view{display:block;image-rendering:pixelated}
.stack canvas{position:absolute;left:0;top:0;opacity:.55;cursor:crosshair}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:260px}
#controls>*{margin:0 8px 8px 0}#status{font-size:12px;color:#555}
p.help{font-size:13px;color:#444;max-width:900px}
#segpanel{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
#legend{border-collapse:collapse;font-size:12px}
#legend caption{text-align:left;color:#555;padding-bottom:4px}
#legend th,#legend td{padding:1px 6px;text-align:right}
#legend td.label,#legend td.cat,#legend th.label,#legend th.cat{text-align:left}
#legend tr.changed{font-weight:bold}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #888;vertical-align:middle}
</style></head>
<body>
<h1 style="font-size:18px">Paint units: <span id="model"></span> <span id="layer"></span></h1>
<p class="help">Paint a region of the generated image, choose a concept and on or off, then apply:
the concept's best units of this layer are switched on (set to their 99.5th-percentile value) or off
(zero) under the paint, and the image is generated again. The segmentations below show what the edit changed.</p>
<div id="controls">
 <label>sample <input id="seed" type="number" min="0" step="1" value="0" style="width:7em"></label>
 <label>concept <select id="concept"></select></label>
 <label><input type="radio" name="onoff" id="on" value="on" checked> on</label>
 <label><input type="radio" name="onoff" id="off" value="off"> off</label>
 <label>brush <input id="brush" type="range" min="2" max="40" value="10"></label>
 <button id="apply">apply</button> <button id="reset">reset</button>
 <span id="status">loading</span>
</div>
<div class="row">
 <figure><div class="stack"><img id="original" alt="generated image"><canvas id="mask"></canvas></div>
  <figcaption>generated sample <span id="seedshown">0</span>: paint here</figcaption></figure>
 <figure><img id="result" class="view" alt="regenerated image"><figcaption>regenerated, strokes applied: <span id="nstrokes">0</span></figcaption></figure>
 <div id="segpanel">
  <figure><img id="seg-original" class="view" alt="segmentation of the generated image"><figcaption>segmentation of the generated image</figcaption></figure>
  <figure><img id="seg-result" class="view" alt="segmentation of the regenerated image"><figcaption>segmentation of the regenerated image</figcaption></figure>
  <table id="legend"><caption id="legendcaption">labels</caption>
   <thead><tr><th>colour</th><th class="label">label</th><th class="cat">category</th><th>generated</th><th>regenerated</th><th>change (% points)</th></tr></thead>
   <tbody></tbody></table>
 </div>
</div>
<p class="help" id="segnote"></p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = {info: null, strokes: [], scale: 1, drawing: false, seed: 0};
const canvas = $("mask"), ctx = canvas.getContext("2d");

function setStatus(s) { $("status").textContent = s; document.body.dataset.status = s; }

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function clearMask() { ctx.clearRect(0, 0, canvas.width, canvas.height); }

function brushAt(ev) {
  const rect = canvas.getBoundingClientRect();
  const x = (ev.clientX - rect.left) / state.scale, y = (ev.clientY - rect.top) / state.scale;
  const r = Number($("brush").value) / state.scale / 2;
  ctx.fillStyle = "#fff";
  ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill();
}

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function showLegend(legend) {
  const body = $("legend").tBodies[0];
  body.replaceChildren();
  for (const row of legend) {
    const tr = document.createElement("tr");
    tr.dataset.label = row.label;
    let change = 100 * (row.after - row.before);
    if (Math.abs(change) < 0.05) change = 0;  // shown as 0.0, never -0.0
    else tr.classList.add("changed");
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = row.color; sw.title = row.color;
    const cells = [sw, row.label, row.category, pct(row.before), pct(row.after), (change >= 0 ? "+" : "") + change.toFixed(1)];
    const classes = ["swatch", "label", "cat", "before", "after", "change"];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.className = classes[i];
      if (typeof c === "string") td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

async function render() {
  setStatus("rendering");
  try {
    const data = await api("/api/render", {seed: state.seed, strokes: state.strokes});
    $("original").src = data.original;
    $("result").src = data.image;
    $("nstrokes").textContent = String(state.strokes.length);
    $("seedshown").textContent = String(state.seed);
    if (data.segmentation) {
      $("seg-original").src = data.segmentation.original;
      $("seg-result").src = data.segmentation.image;
      showLegend(data.segmentation.legend);
    }
    setStatus("done");
  } catch (e) { setStatus("error: " + e.message); }
}

async function apply() {
  const s = {mask: canvas.toDataURL("image/png"), concept: $("concept").value, on: $("on").checked};
  if (!s.concept) { setStatus("error: no concept to paint (the dissection labelled no unit)"); return; }
  state.strokes.push(s);
  clearMask();
  await render();
}

function hashParams() {
  const p = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(p.entries());
}

function parseSeed(text) {
  const limit = state.info.seed_limit;
  if (!/^[0-9]+$/.test(String(text).trim()) || Number(text) >= limit)
    throw new Error("sample must be a whole number from 0 to " + (limit - 1) + ", got '" + text + "'");
  return Number(text);
}

async function main() {
  const info = state.info = await api("/api/info");
  $("model").textContent = info.model; $("layer").textContent = info.layer;
  const [h, w] = info.image_size;
  state.scale = Math.max(1, Math.floor(256 / w));
  canvas.width = w; canvas.height = h;
  for (const el of [canvas, $("original"), $("result"), $("seg-original"), $("seg-result")]) {
    el.style.width = (w * state.scale) + "px"; el.style.height = (h * state.scale) + "px";
  }
  $("seed").max = String(info.seed_limit - 1);
  for (const c of info.concepts) {
    const o = document.createElement("option");
    o.value = c.name; o.textContent = c.name + " (" + c.category + ")";
    $("concept").appendChild(o);
  }
  if (info.segmenter) {
    $("legendcaption").textContent = "labels by share of image pixels (the " + info.segmenter + " segmenter)";
    $("segnote").textContent = "Segmentation by the " + info.segmenter + " segmenter: each pixel is coloured by its label " +
      "in the first of the segmenter's channels that has one (its categories, in order: " + info.segmentation_channels +
      "); black is no label. " +
      "The legend lists every label in either image, the largest change first.";
  } else {
    $("segpanel").hidden = true;
    $("segnote").textContent = "No segmentation shown (the server runs with --no-segmentation).";
  }
  canvas.addEventListener("mousedown", (ev) => { state.drawing = true; brushAt(ev); });
  canvas.addEventListener("mousemove", (ev) => { if (state.drawing) brushAt(ev); });
  window.addEventListener("mouseup", () => { state.drawing = false; });
  $("apply").addEventListener("click", apply);
  $("reset").addEventListener("click", () => { state.strokes = []; clearMask(); render(); });
  $("seed").addEventListener("change", () => {
    try { state.seed = parseSeed($("seed").value); } catch (e) { setStatus("error: " + e.message); return; }
    state.strokes = []; render();
  });

  const hp = hashParams();
  if (hp.seed !== undefined) { state.seed = parseSeed(hp.seed); $("seed").value = hp.seed; }
  if (hp.concept !== undefined) {
    if (!info.concepts.some((c) => c.name === hp.concept))
      throw new Error("unknown concept '" + hp.concept + "' in the address; concepts: " + info.concepts.map((c) => c.name).join(", "));
    $("concept").value = hp.concept;
  }
  if (hp.on !== undefined) {
    if (!["0", "1", "true", "false"].includes(hp.on)) throw new Error("on must be 0, 1, true or false, got '" + hp.on + "'");
    const on = hp.on === "1" || hp.on === "true"; $("on").checked = on; $("off").checked = !on;
  }
  if (hp.rect !== undefined) {
    const r = hp.rect.split(",").map(Number);
    if (r.length !== 4 || r.some((v) => !Number.isFinite(v))) throw new Error("rect must be x0,y0,x1,y1, got '" + hp.rect + "'");
    const [x0, y0, x1, y1] = r;
    ctx.fillStyle = "#fff"; ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
  }
  if (hp.apply === "1") await apply(); else await render();
}
main().catch((e) => setStatus("error: " + e.message));
</script>
</body></html>
"""


# ---- pure pieces: images, JSON, requests -----------------------------------------------------------
def png_data_url(image: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return PNG_PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, read without decoding anything."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("mask is not a PNG image")
    return struct.unpack(">II", data[16:24])


def decode_mask(data_url, image_hw: tuple[int, int]) -> np.ndarray:
    """A PNG data URL -> (H, W) 0/1 mask: painted where alpha (or, without alpha, brightness) > 50%.
    The size is read from the PNG header and checked before anything is decoded, so a
    decompression bomb is refused unread."""
    if not isinstance(data_url, str) or not data_url.startswith(PNG_PREFIX):
        raise ValueError("mask must be a PNG data URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(data_url[len(PNG_PREFIX):], validate=True)
    except ValueError as e:
        raise ValueError(f"mask is not valid base64: {e}") from None
    w, h = png_size(data)
    if (h, w) != tuple(image_hw):
        raise ValueError(f"mask is {w}x{h}, the image is {image_hw[1]}x{image_hw[0]}")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        if img.size != (w, h):
            raise ValueError(f"its size {img.size} disagrees with its header")
        if img.mode not in MASK_MODES:
            raise ValueError(f"mode {img.mode!r} is not supported; use 8-bit RGBA (as a canvas gives)")
        img.load()
    except Exception as e:  # noqa: BLE001  (untrusted bytes: any decoder failure is a bad mask)
        raise ValueError(f"mask is not a readable PNG: {type(e).__name__}: {e}") from None
    alpha = "A" in img.getbands() or "transparency" in img.info
    arr = np.asarray(img.convert("RGBA"), np.float32)
    channel = arr[..., 3] if alpha else arr[..., :3].mean(-1)
    return (channel > 127.5).astype(np.float32)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def json_depth(body: bytes) -> int:
    """The deepest nesting of [ and { outside strings, found without parsing (deep JSON would
    exhaust the parser's recursion)."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body))
    if not brackets:
        return 0
    a = np.frombuffer(brackets, np.uint8)
    return int(np.cumsum(np.where((a == ord("[")) | (a == ord("{")), 1, -1)).max())


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes, max_depth: int):
    """A request body as JSON, or a RequestError(400) saying why not."""
    depth = json_depth(body)
    if depth > max_depth:
        raise RequestError(400, f"request JSON is nested {depth} levels deep; at most {max_depth} are allowed")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8: {e}") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, "request JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers over Python's digit limit
        raise RequestError(400, f"request is not valid JSON: {str(e)[:200]}") from None


def json_type(value) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if value is None:
        return "null"
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                    (dict, "object")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def json_text(value, limit: int = 60) -> str:
    """A parsed value as (shortened) JSON text, for messages."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _unknown_keys(obj: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(k for k in obj if k not in known)
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k[:40]) for k in unknown[:5])} "
                         f"in {where}; known keys: {', '.join(known)}")


def parse_render_request(request, painter, zseq: ZSequence, limits: Limits) -> tuple[int, list[Stroke]]:
    """(seed, strokes) of a render request, or a ValueError naming the key and what is wrong."""
    if not isinstance(request, dict):
        raise ValueError(f"the request must be a JSON object, got {json_type(request)}")
    _unknown_keys(request, REQUEST_KEYS, "the request")
    layer = request.get("layer", painter.layer)
    if layer != painter.layer:
        raise ValueError(f"unknown layer {str(layer)[:60]!r}: this server paints layer {painter.layer!r}")
    seed = request.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {json_text(seed)}")
    seed = zseq.check(seed)
    raw = request.get("strokes", [])
    if not isinstance(raw, list):
        raise ValueError(f"strokes must be a list, got {json_type(raw)}")
    if len(raw) > limits.max_strokes:
        raise ValueError(f"{len(raw)} strokes given; at most {limits.max_strokes} are allowed per request")
    strokes = []
    for i, s in enumerate(raw):
        try:
            strokes.append(parse_stroke(s, painter))
        except ValueError as e:
            raise ValueError(f"stroke {i}: {e}") from None
    return seed, strokes


def parse_stroke(s, painter) -> Stroke:
    """One stroke {"mask", "concept" or "units", "on"} -> Stroke, checked."""
    if not isinstance(s, dict):
        raise ValueError(f"must be an object, got {json_type(s)}")
    _unknown_keys(s, STROKE_KEYS, "the stroke")
    on = s.get("on", True)
    if not isinstance(on, bool):
        raise ValueError(f"'on' must be true or false (a JSON boolean), got {json_text(on)}")
    if ("concept" in s) == ("units" in s):
        raise ValueError("give either 'concept' (a name) or 'units' (unit indices), not both or neither")
    concept, units = s.get("concept"), None
    if "concept" in s:
        if not isinstance(concept, str):
            raise ValueError(f"'concept' must be a string, got {json_type(concept)}")
        try:
            painter.units_for(concept)
        except KeyError as e:
            raise ValueError(e.args[0][:2000]) from None
    else:
        if not isinstance(s["units"], list):
            raise ValueError(f"'units' must be a list of unit indices, got {json_type(s['units'])}")
        units = tuple(int(u) for u in painter.check_units(s["units"]))
    if "mask" not in s:
        raise ValueError("'mask' is missing")
    return Stroke(decode_mask(s["mask"], painter.image_hw), concept, on, units)


# ---- the application ---------------------------------------------------------------------------
class PaintApp:
    """The server's state: a Painter (and optionally a segmenter for the segmentation view)
    behind a lock, one render at a time."""

    def __init__(self, painter, segmenter=None, segmenter_name: str | None = None, limits: Limits = Limits()):
        self.painter, self.segmenter, self.limits = painter, segmenter, limits
        self.segmenter_name = segmenter_name or (type(segmenter).__name__ if segmenter is not None else None)
        self.zseq = ZSequence(int(painter.model.z_dim), limits.seed_limit)
        self.colors = label_colors(len(segmenter.labels)) if segmenter is not None else None
        self.lock = threading.Lock()

    def info(self) -> dict:
        p = self.painter
        channels = None
        if self.segmenter is not None:
            channels = ", ".join(c for c in self.segmenter.labels.category_names) or "its channels"
        return {"model": p.model.name, "layer": p.layer, "image_size": list(p.image_hw),
                "layer_size": list(p.layer_hw), "num_units": p.num_units, "concepts": p.concepts(),
                "seed_limit": self.limits.seed_limit, "max_strokes": self.limits.max_strokes,
                "max_body": self.limits.max_body,
                "segmenter": self.segmenter_name if self.segmenter is not None else None,
                "segmentation_channels": channels}

    def parse(self, request) -> tuple[int, list[Stroke]]:
        """(seed, strokes) of a POST /api/render request (ValueError naming what is wrong)."""
        return parse_render_request(request, self.painter, self.zseq, self.limits)

    def render(self, seed: int, strokes: list[Stroke]) -> dict:
        """The answer to a parsed request: images, and the segmentation view when there is a segmenter."""
        z = self.zseq(seed)
        with self.lock:
            original = self.painter.render(z)[0]
            image = self.painter.render(z, strokes)[0] if strokes else original
            views = segmentation_view(self.segmenter, np.stack([original, image])) if self.segmenter is not None else None
        out = {"seed": seed, "strokes": len(strokes), "original": png_data_url(original), "image": png_data_url(image),
               "segmentation": None}
        if views is not None:
            labels = self.segmenter.labels
            out["segmentation"] = {
                "segmenter": self.segmenter_name,
                "original": png_data_url(self.colors[views[0]]), "image": png_data_url(self.colors[views[1]]),
                "legend": label_legend(views[0], views[1], labels.names, labels.categories, self.colors)}
        return out


# ---- HTTP --------------------------------------------------------------------------------------
def make_handler(app: PaintApp):
    limits = app.limits

    class Handler(BaseHTTPRequestHandler):
        timeout = limits.read_timeout  # per socket read while the request comes in
        server_version = "jaxdissect-paint"

        def setup(self):
            super().setup()
            self._deadline = time.monotonic() + limits.read_timeout
            # the whole request (line, headers, body) must arrive by the deadline: a client that
            # trickles bytes slower than the per-read timeout is cut off here
            self._watchdog = threading.Timer(limits.read_timeout + 1.0, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

        def _expire(self):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self._watchdog.cancel()
            try:
                super().finish()
            except OSError:
                pass

        # -- answers
        def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self._watchdog.cancel()
            try:
                self.connection.settimeout(limits.read_timeout)  # for writing the answer
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                if code >= 400:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except OSError:  # the client went away
                self.close_connection = True

        def _json(self, code: int, data: dict, extra: dict | None = None) -> None:
            self._send(code, json.dumps(data).encode(), "application/json", extra)

        def send_error(self, code, message=None, explain=None):  # the base class's errors, as JSON
            self.log_error("code %d, message %s", code, message)
            if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line
                self.request_version = "HTTP/1.0"
            self._json(code, {"error": message or explain or self.responses.get(code, ("error",))[0]})

        def _discard_input(self, limit: int = 1 << 20, seconds: float = 1.0) -> None:
            """Read and drop what the client still sends (up to `limit` bytes, `seconds`), so that
            closing the socket does not reset the connection before the client reads the answer."""
            end, got = time.monotonic() + seconds, 0
            try:
                self.connection.shutdown(socket.SHUT_WR)
                while got < limit and time.monotonic() < end:
                    self.connection.settimeout(max(0.01, end - time.monotonic()))
                    data = self.rfile.read1(65536)
                    if not data:
                        break
                    got += len(data)
            except OSError:
                pass

        # -- requests
        def _path(self) -> str:
            return urllib.parse.urlsplit(self.path).path

        def do_GET(self):  # noqa: N802
            path = self._path()
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._json(200, app.info())
            elif path == "/api/render":
                self._json(405, {"error": "use POST for /api/render"}, {"Allow": "POST"})
            else:
                self._json(404, {"error": f"no such page: {path[:200]}"})

        do_HEAD = do_GET  # noqa: N815

        def _not_allowed(self):
            self._json(405, {"error": f"method {self.command} is not allowed; use GET, HEAD or POST"},
                       {"Allow": "GET, HEAD, POST"})

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding") is not None:
                raise RequestError(400, "Transfer-Encoding is not accepted; send the body with a Content-Length")
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise RequestError(400, "a Content-Length header is required")
            if len(set(v.strip() for v in values)) > 1:
                raise RequestError(400, "conflicting Content-Length headers")
            value = values[0].strip()
            if not re.fullmatch(r"[0-9]{1,18}", value):
                raise RequestError(400, f"Content-Length must be a whole number of bytes, got {value[:40]!r}")
            length = int(value)
            if length == 0:
                raise RequestError(400, "the request body is empty; send a JSON object")
            if length > limits.max_body:
                raise RequestError(413, f"the request body is {length} bytes; at most {limits.max_body} are allowed")
            chunks, got = [], 0
            while got < length:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestError(408, f"the request did not arrive within {limits.read_timeout:g} s "
                                            f"({got} of {length} body bytes received)")
                self.connection.settimeout(remaining)
                try:
                    data = self.rfile.read1(min(1 << 16, length - got))
                except TimeoutError:  # the socket is unusable for reading after this
                    raise RequestError(408, f"the request did not arrive within {limits.read_timeout:g} s "
                                            f"({got} of {length} body bytes received)") from None
                if not data:
                    raise RequestError(400, f"the connection ended after {got} of {length} body bytes")
                chunks.append(data)
                got += len(data)
            self._watchdog.cancel()
            self._body_read = True
            return b"".join(chunks)

        def do_POST(self):  # noqa: N802
            path = self._path()
            self._body_read = False
            try:
                if path != "/api/render":
                    raise RequestError(404, f"no such endpoint: {path[:200]}")
                request = parse_json(self._read_body(), limits.max_depth)
                try:
                    seed, strokes = app.parse(request)
                except ValueError as e:
                    raise RequestError(400, str(e)) from None
                answer = app.render(seed, strokes)
            except RequestError as e:
                self._json(e.status, {"error": e.message})
                if not self._body_read:
                    self._discard_input()
                return
            except Exception as e:  # noqa: BLE001  (a bug, not the client's fault: say so, keep serving)
                traceback.print_exc()
                return self._json(500, {"error": f"internal error: {type(e).__name__}: {str(e)[:300]}"})
            self._json(200, answer)

        def log_message(self, fmt, *args):  # quiet by default
            if getattr(self.server, "verbose", False):
                super().log_message(fmt, *args)

    return Handler


def make_server(painter, port: int = 0, verbose: bool = False, segmenter=None, segmenter_name: str | None = None,
                limits: Limits = Limits()) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0: any free port; see server.server_address)."""
    server = ThreadingHTTPServer((HOST, port), make_handler(PaintApp(painter, segmenter, segmenter_name, limits)))
    server.verbose = verbose
    server.daemon_threads = True
    return server


# ---- the command line --------------------------------------------------------------------------
class UsageError(ValueError):
    """A bad flag or input: one line to the user, exit code 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags, each with help and its default shown in --help."""
    p = _Parser(prog="paint.py", description=__doc__.split("\n\n")[0], formatter_class=_Formatter,
                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="toy_generator", help="a registered generator: toy_generator or proggan_<domain>")
    p.add_argument("--layer", default=None,
                   help="the layer to paint (None: the model's default layer, layer4 for Progressive GANs)")
    p.add_argument("--seg", default=None,
                   help="segmenter for the dissection and the segmentation view: toy, net, netp, netq, netpq, netc, "
                        "netpc, netqc, netpqc (None: toy for toy models, netpqc otherwise)")
    p.add_argument("--outdir", default="results", help="folder of dissection results (made, or reused when complete)")
    p.add_argument("--dissect-sample-size", type=int, default=None,
                   help="z samples for the dissection (None: 1000 for toy models, 10000 otherwise)")
    p.add_argument("--weights", default=None, help="weights folder or .pth file (None: packaged or cached weights)")
    p.add_argument("--units", type=int, default=20, help="units switched per concept (a concept's best by IoU)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 to serve on (0: any free port)")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body accepted, in MiB (larger: 413)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a client has to send a whole request (slower: 408)")
    p.add_argument("--max-strokes", type=int, default=64, help="most strokes accepted in one request")
    p.add_argument("--no-segmentation", action="store_true",
                   help="do not segment the images on the page (saves a segmenter pass per request)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Validate the flags before anything slow runs (UsageError names the flag)."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in 0..65535, got {args.port}")
    if args.units < 1:
        raise UsageError(f"--units must be >= 1, got {args.units}")
    if args.dissect_sample_size is not None and args.dissect_sample_size < 1:
        raise UsageError(f"--dissect-sample-size must be >= 1, got {args.dissect_sample_size}")
    if not 0 < args.max_body_mb <= 1024:
        raise UsageError(f"--max-body-mb must lie in (0, 1024], got {args.max_body_mb:g}")
    if not 0 < args.read_timeout <= 3600:
        raise UsageError(f"--read-timeout must lie in (0, 3600] seconds, got {args.read_timeout:g}")
    if not 1 <= args.max_strokes <= 10_000:
        raise UsageError(f"--max-strokes must lie in 1..10000, got {args.max_strokes}")
    try:
        spec = get_spec(args.model)
    except KeyError as e:
        raise UsageError(f"--model: {e.args[0]}") from None
    if spec.kind != "generator":
        raise UsageError(f"--model {args.model} is a {spec.kind}; painting needs a generator (toy_generator, proggan_<domain>)")
    if args.layer is not None and spec.layer_names_for is None and args.layer not in spec.layer_names:
        raise UsageError(f"--layer: unknown layer {args.layer!r} for {args.model}; layers: {', '.join(spec.layer_names)}")
    segs = ("toy",) + tuple(SEGMENTER_NAMES)
    if args.seg is not None and args.seg not in segs:
        raise UsageError(f"--seg: unknown segmenter {args.seg!r} for a generator; known: {', '.join(segs)}")
    if os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
        raise UsageError(f"--outdir {args.outdir} exists and is not a folder")
    if args.weights is not None and not os.path.exists(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file or folder")
    if args.port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, args.port))
            except OSError as e:
                raise UsageError(f"--port {args.port}: cannot listen on {HOST}:{args.port} ({e.strerror or e})") from None


def serve(args: argparse.Namespace) -> None:
    """Load, dissect (or reuse the dissection), compile, and serve until Ctrl-C."""
    model = load(args.model, args.weights)
    if args.layer is not None and args.layer not in model.layer_names:
        raise UsageError(f"--layer: unknown layer {args.layer!r} for {model.name}; layers: {', '.join(model.layer_names)}")
    cfg = GeneratorInterventionConfig(model=args.model, layer=args.layer, seg=args.seg, outdir=args.outdir,
                                      dissect_sample_size=args.dissect_sample_size, weights=args.weights)
    model, segmenter, result, _ = dissected_layer(cfg, model=model)
    painter = Painter.from_dissection(model, result, units_per_concept=args.units)
    seg_name = args.seg or ("toy" if model.name.startswith("toy_") else "netpqc")
    if args.no_segmentation:
        segmenter = None
    limits = Limits(max_body=int(args.max_body_mb * (1 << 20)), read_timeout=args.read_timeout,
                    max_strokes=args.max_strokes)
    first = painter.render(np.zeros((1, int(model.z_dim)), np.float32))  # compile before the first request
    if segmenter is not None:
        segmentation_view(segmenter, np.concatenate([first, first]))
    try:
        server = make_server(painter, args.port, verbose=not args.quiet, segmenter=segmenter, segmenter_name=seg_name,
                             limits=limits)
    except OSError as e:
        raise UsageError(f"--port {args.port}: cannot listen on {HOST}:{args.port} ({e.strerror or e})") from None
    print(f"painting {model.name} {result.layer}: http://{HOST}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the way to stop the server
        pass
    finally:
        server.server_close()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        serve(args)
    except KeyboardInterrupt:
        return 130
    except (UsageError, KeyError, ValueError, FileNotFoundError, OSError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"paint.py: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sys.exit(main())
