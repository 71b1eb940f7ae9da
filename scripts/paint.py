"""Paint units into a generator: a small local web page to switch concepts on or off in a region.

It dissects the layer first if needed (or reuses the results folder), then serves on
http://127.0.0.1:PORT/ a generated image, a brush to paint a region, a concept menu, on/off,
and the regenerated image. Only the local machine can reach it.

    python scripts/paint.py                                  (embedded toy_generator)
    python scripts/paint.py --model proggan_church --layer layer4 --port 8765

The page also takes its settings from the URL hash, which lets scripts drive it:
    #seed=3&concept=tree&on=0&rect=x0,y0,x1,y1&apply=1
paints the rectangle (image pixels) and applies the stroke once the page has loaded.

JSON API: GET /api/info; POST /api/render {"seed": int, "strokes": [{"mask": PNG data URL
(alpha or brightness > 50% = painted), "concept": str, "on": bool}]} -> {"original", "image"}
as PNG data URLs.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

HOST = "127.0.0.1"
MAX_BODY = 32 << 20

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jaxdissect paint</title>
<style>
body{font-family:sans-serif;margin:16px;color:#222}
.row{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.stack{position:relative;display:inline-block}
.stack img,.stack canvas{display:block;image-rendering:pixelated}
.stack canvas{position:absolute;left:0;top:0;opacity:.55;cursor:crosshair}
figure{margin:0}figcaption{font-size:12px;color:#555}
#controls>*{margin:0 8px 8px 0}#status{font-size:12px;color:#555}
</style></head>
<body>
<h1 style="font-size:18px">Paint units: <span id="model"></span> <span id="layer"></span></h1>
<div id="controls">
 <label>sample <input id="seed" type="number" min="0" value="0" style="width:6em"></label>
 <label>concept <select id="concept"></select></label>
 <label><input type="radio" name="onoff" id="on" value="on" checked> on</label>
 <label><input type="radio" name="onoff" id="off" value="off"> off</label>
 <label>brush <input id="brush" type="range" min="2" max="40" value="10"></label>
 <button id="apply">apply</button> <button id="reset">reset</button>
 <span id="status">loading</span>
</div>
<div class="row">
 <figure><div class="stack"><img id="original" alt="generated image"><canvas id="mask"></canvas></div>
  <figcaption>paint here</figcaption></figure>
 <figure><img id="result" alt="regenerated image"><figcaption>regenerated (<span id="nstrokes">0</span> strokes)</figcaption></figure>
</div>
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

async function render() {
  setStatus("rendering");
  try {
    const data = await api("/api/render", {seed: state.seed, strokes: state.strokes});
    $("original").src = data.original;
    $("result").src = data.image;
    $("nstrokes").textContent = String(state.strokes.length);
    setStatus("done");
  } catch (e) { setStatus("error: " + e.message); }
}

async function apply() {
  state.strokes.push({mask: canvas.toDataURL("image/png"), concept: $("concept").value, on: $("on").checked});
  clearMask();
  await render();
}

function hashParams() {
  const p = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(p.entries());
}

async function main() {
  const info = state.info = await api("/api/info");
  $("model").textContent = info.model; $("layer").textContent = info.layer;
  const [h, w] = info.image_size;
  state.scale = Math.max(1, Math.floor(256 / w));
  canvas.width = w; canvas.height = h;
  for (const el of [canvas, $("original"), $("result")]) {
    el.style.width = (w * state.scale) + "px"; el.style.height = (h * state.scale) + "px";
  }
  for (const c of info.concepts) {
    const o = document.createElement("option");
    o.value = c.name; o.textContent = c.name + " (" + c.category + ")";
    $("concept").appendChild(o);
  }
  canvas.addEventListener("mousedown", (ev) => { state.drawing = true; brushAt(ev); });
  canvas.addEventListener("mousemove", (ev) => { if (state.drawing) brushAt(ev); });
  window.addEventListener("mouseup", () => { state.drawing = false; });
  $("apply").addEventListener("click", apply);
  $("reset").addEventListener("click", () => { state.strokes = []; clearMask(); render(); });
  $("seed").addEventListener("change", () => { state.seed = Number($("seed").value); state.strokes = []; render(); });

  const hp = hashParams();
  if (hp.seed !== undefined) { state.seed = Number(hp.seed); $("seed").value = hp.seed; }
  if (hp.concept !== undefined) $("concept").value = hp.concept;
  if (hp.on !== undefined) { const on = hp.on === "1" || hp.on === "true"; $("on").checked = on; $("off").checked = !on; }
  if (hp.rect !== undefined) {
    const [x0, y0, x1, y1] = hp.rect.split(",").map(Number);
    ctx.fillStyle = "#fff"; ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
  }
  if (hp.apply === "1") await apply(); else await render();
}
main().catch((e) => setStatus("error: " + e.message));
</script>
</body></html>
"""


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_mask(data_url: str, image_hw: tuple[int, int]) -> np.ndarray:
    """A PNG data URL -> (H, W) 0/1 mask: painted where alpha (or, without alpha, brightness) > 50%."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data_url, str) or not data_url.startswith("data:image/png;base64,"):
        raise ValueError("mask must be a PNG data URL (data:image/png;base64,...)")
    try:
        img = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1], validate=True)))
        img.load()
    except (ValueError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"mask is not a readable PNG: {e}") from None
    if (img.height, img.width) != tuple(image_hw):
        raise ValueError(f"mask is {img.width}x{img.height}, the image is {image_hw[1]}x{image_hw[0]}")
    arr = np.asarray(img.convert("RGBA"), np.float32)
    channel = arr[..., 3] if "A" in img.getbands() else arr[..., :3].mean(-1)
    return (channel > 127.5).astype(np.float32)


class PaintApp:
    """The server's state: a Painter behind a lock (one render at a time)."""

    def __init__(self, painter):
        self.painter = painter
        self.lock = threading.Lock()

    def info(self) -> dict:
        p = self.painter
        return {"model": p.model.name, "layer": p.layer, "image_size": list(p.image_hw),
                "layer_size": list(p.layer_hw), "concepts": p.concepts()}

    def render(self, request: dict) -> dict:
        from jaxdissect.paint import Stroke, z_for_seed

        if not isinstance(request, dict):
            raise ValueError("the request must be a JSON object")
        seed = request.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        raw = request.get("strokes", [])
        if not isinstance(raw, list):
            raise ValueError("strokes must be a list")
        strokes = []
        for i, s in enumerate(raw):
            if not isinstance(s, dict) or not isinstance(s.get("concept"), str):
                raise ValueError(f"stroke {i} must be an object with a 'concept' string")
            try:
                self.painter.units_for(s["concept"])
            except KeyError as e:
                raise ValueError(f"stroke {i}: {e.args[0]}") from None
            try:
                mask = decode_mask(s.get("mask"), self.painter.image_hw)
            except ValueError as e:
                raise ValueError(f"stroke {i}: {e}") from None
            strokes.append(Stroke(mask, s["concept"], bool(s.get("on", True))))
        z = z_for_seed(seed, int(self.painter.model.z_dim))
        with self.lock:
            original = self.painter.render(z)[0]
            image = self.painter.render(z, strokes)[0] if strokes else original
        return {"original": png_data_url(original), "image": png_data_url(image), "strokes": len(strokes)}


def make_handler(app: PaintApp):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict) -> None:
            self._send(code, json.dumps(data).encode(), "application/json")

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._json(200, app.info())
            else:
                self._json(404, {"error": f"no such page: {path}"})

        def do_POST(self):  # noqa: N802
            if self.path != "/api/render":
                return self._json(404, {"error": f"no such endpoint: {self.path}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                return self._json(400, {"error": f"request body must be 1 to {MAX_BODY} bytes, got {length}"})
            try:
                request = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self._json(400, {"error": f"request is not valid JSON: {e}"})
            try:
                self._json(200, app.render(request))
            except ValueError as e:
                self._json(400, {"error": str(e)})

        def log_message(self, fmt, *args):  # quiet by default
            if getattr(self.server, "verbose", False):
                super().log_message(fmt, *args)

    return Handler


def make_server(painter, port: int = 0, verbose: bool = False) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0: any free port; see server.server_address)."""
    server = ThreadingHTTPServer((HOST, port), make_handler(PaintApp(painter)))
    server.verbose = verbose
    server.daemon_threads = True
    return server


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy_generator")
    p.add_argument("--layer", default=None, help="default: the model's default layer (layer4 for Progressive GANs)")
    p.add_argument("--seg", default=None, help="segmenter for the dissection (default: toy / netpqc)")
    p.add_argument("--outdir", default="results")
    p.add_argument("--dissect-sample-size", type=int, default=None)
    p.add_argument("--units", type=int, default=20, help="units switched per concept")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--weights", default=None)
    args = p.parse_args(argv)

    from jaxdissect.experiments.generator_intervention import InterventionConfig, dissected_layer
    from jaxdissect.paint import Painter

    cfg = InterventionConfig(model=args.model, layer=args.layer, seg=args.seg, outdir=args.outdir,
                             dissect_sample_size=args.dissect_sample_size, weights=args.weights)
    model, _, result, _ = dissected_layer(cfg)
    painter = Painter.from_dissection(model, result, units_per_concept=args.units)
    painter.render(np.zeros((1, int(model.z_dim)), np.float32))  # compile before the first request
    server = make_server(painter, args.port, verbose=True)
    print(f"painting {model.name} {result.layer}: http://{HOST}:{server.server_address[1]}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    from jaxdissect.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    main()
