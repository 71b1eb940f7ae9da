"""The paint server (scripts/paint.py) under malformed, oversized, slow and random requests: a real
server on 127.0.0.1 (an ephemeral port), spoken to over raw sockets with timeouts. Every bad
request gets a 4xx answer naming what is wrong, and the server serves a normal request after it."""
import base64
import http.client
import io
import json
import socket
import struct
import time
import zlib

import numpy as np
import pytest

from jaxdissect.paint import z_for_seed
from paint_helpers import RuleSegmenter, RunningServer, load_script, png_url, small_generator, small_painter

READ_TIMEOUT = 1.5
MAX_BODY = 1 << 20
MAX_STROKES = 4
FULL = np.ones((32, 32))


@pytest.fixture(scope="module")
def painter():
    p = small_painter(small_generator())
    p.render(z_for_seed(0, 64))  # compile once, outside the timed requests
    return p


@pytest.fixture(scope="module")
def srv(painter):
    limits = load_script().Limits(max_body=MAX_BODY, read_timeout=READ_TIMEOUT, max_strokes=MAX_STROKES)
    s = RunningServer(painter, RuleSegmenter(), limits)
    yield s
    s.close()


def exchange(port, data: bytes, timeout: float = 30.0, trickle: float | None = None):
    """Send raw bytes (one at a time, `trickle` seconds apart, if given), read until the server
    closes: (status or None, body, seconds from the first byte sent to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        try:
            if trickle is None:
                s.sendall(data)
            else:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped listening to us; its answer (if any) is still to be read
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        elapsed = time.monotonic() - t0
    raw = b"".join(chunks)
    if not raw:
        return None, b"", elapsed
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, elapsed


def post_bytes(body: bytes, extra: str = "", length: str | None = None) -> bytes:
    length = str(len(body)) if length is None else length
    cl = f"Content-Length: {length}\r\n" if length != "" else ""
    return (f"POST /api/render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{cl}{extra}\r\n").encode() + body


def good_request() -> dict:
    return {"seed": 1, "strokes": [{"mask": png_url(FULL), "concept": "sky", "on": True}]}


def assert_still_serves(srv):
    """A normal render after whatever came before."""
    status, body, _ = exchange(srv.port, post_bytes(json.dumps(good_request()).encode()))
    assert status == 200, body[:300]
    data = json.loads(body)
    assert data["image"].startswith("data:image/png;base64,") and data["segmentation"]["legend"]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, bit_depth: int = 8, color_type: int = 6, idat: bytes | None = None) -> bytes:
    """A PNG written by hand: zero pixels (streamed through zlib, so a huge one stays small)."""
    if idat is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
        row = b"\0" * (1 + (width * channels * bit_depth + 7) // 8)
        z = zlib.compressobj(9)
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


DROP = object()  # stroke_with(key=DROP) leaves the key out


def stroke_with(**kw) -> dict:
    s = {"mask": png_url(FULL), "concept": "sky", "on": True}
    s.update(kw)
    return {k: v for k, v in s.items() if v is not DROP}


def test_bomb_png_is_really_over_pillows_limit():
    from PIL import Image

    bomb = png_bytes(14000, 14000, bit_depth=1, color_type=0)
    assert 14000 * 14000 > 2 * Image.MAX_IMAGE_PIXELS and len(data_url(bomb)) < MAX_BODY
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))


# (request body as a Python object, expected message fragment): all answered 400
BAD_JSON_REQUESTS = [
    ([1, 2], "the request must be a JSON object, got array"),
    ({"seed": 10 ** 12}, "seed must lie in 0 <= seed < 100000, got 1000000000000"),
    ({"seed": 2_000_000}, "seed must lie in 0 <= seed < 100000"),
    ({"seed": -1}, "seed must lie in 0 <= seed < 100000"),
    ({"seed": 1.0}, "seed must be an integer, got 1.0"),
    ({"seed": True}, "seed must be an integer, got true"),
    ({"seed": "3"}, 'seed must be an integer, got "3"'),
    ({"seed": None}, "seed must be an integer, got null"),
    ({"sed": 1}, "unknown key 'sed' in the request; known keys: layer, seed, strokes"),
    ({"seed": 1, "layer": "layer4"}, "unknown layer 'layer4': this server paints layer 'layer6'"),
    ({"strokes": {"a": 1}}, "strokes must be a list, got object"),
    ({"strokes": [stroke_with()] * (MAX_STROKES + 1)}, f"{MAX_STROKES + 1} strokes given; at most {MAX_STROKES}"),
    ({"strokes": [7]}, "stroke 0: must be an object, got integer"),
    ({"strokes": [stroke_with(on="false")]}, "stroke 0: 'on' must be true or false (a JSON boolean), got \"false\""),
    ({"strokes": [stroke_with(on=0)]}, "'on' must be true or false (a JSON boolean), got 0"),
    ({"strokes": [stroke_with(on=None)]}, "'on' must be true or false (a JSON boolean), got null"),
    ({"strokes": [stroke_with(colour="red")]}, "stroke 0: unknown key 'colour' in the stroke"),
    ({"strokes": [stroke_with(concept="unicorn")]}, "stroke 0: unknown concept 'unicorn'; concepts: sky, tree"),
    ({"strokes": [stroke_with(concept=3)]}, "'concept' must be a string, got integer"),
    ({"strokes": [stroke_with(units=[1])]}, "give either 'concept' (a name) or 'units'"),
    ({"strokes": [stroke_with(concept=DROP)]}, "give either 'concept' (a name) or 'units'"),
    ({"strokes": [stroke_with(concept=DROP, units=[99])]}, "unknown unit 99: layer layer6 has units 0..15"),
    ({"strokes": [stroke_with(concept=DROP, units=[1, 1])]}, "unit 1 is given twice"),
    ({"strokes": [stroke_with(concept=DROP, units=["1"])]}, "units must be integers, got '1'"),
    ({"strokes": [stroke_with(concept=DROP, units=3)]}, "'units' must be a list of unit indices, got integer"),
    ({"strokes": [stroke_with(mask=DROP)]}, "'mask' is missing"),
    ({"strokes": [stroke_with(mask=png_url(np.ones((1000, 1000))))]}, "mask is 1000x1000, the image is 32x32"),
    ({"strokes": [stroke_with(mask=data_url(png_bytes(14000, 14000, bit_depth=1, color_type=0)))]},
     "mask is 14000x14000, the image is 32x32"),
    ({"strokes": [stroke_with(mask=data_url(b"GIF89a" + b"\0" * 40))]}, "mask is not a PNG image"),
    ({"strokes": [stroke_with(mask="data:image/png;base64,!!!")]}, "mask is not valid base64"),
    ({"strokes": [stroke_with(mask=data_url(png_bytes(32, 32, idat=b"not zlib")))]}, "mask is not a readable PNG"),
    ({"strokes": [stroke_with(mask=data_url(png_bytes(32, 32)[:60]))]}, "mask is not a readable PNG"),
    ({"strokes": [stroke_with(mask=data_url(png_bytes(32, 32, bit_depth=16, color_type=0)))]},
     "mode 'I;16' is not supported"),
    ({"seed": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}, "request JSON is nested 18 levels deep; at most 16"),
]


@pytest.mark.parametrize("request_obj,message", BAD_JSON_REQUESTS, ids=[m[:40] for _, m in BAD_JSON_REQUESTS])
def test_bad_json_requests_get_400_naming_the_problem(srv, request_obj, message):
    status, body, _ = exchange(srv.port, post_bytes(json.dumps(request_obj).encode()))
    assert status == 400, body[:300]
    assert message in json.loads(body)["error"], body[:500]
    assert_still_serves(srv)


# (raw request bytes, status, message fragment)
BAD_HTTP_REQUESTS = [
    (post_bytes(b"{}", length="abc"), 400, "Content-Length must be a whole number of bytes, got 'abc'"),
    (post_bytes(b"{}", length="-5"), 400, "Content-Length must be a whole number of bytes, got '-5'"),
    (post_bytes(b"{}", length="1e3"), 400, "Content-Length must be a whole number"),
    (post_bytes(b"{}", length=""), 400, "a Content-Length header is required"),
    (post_bytes(b"", length="0"), 400, "the request body is empty"),
    (post_bytes(b"{}", extra="Content-Length: 3\r\n"), 400, "conflicting Content-Length headers"),
    (post_bytes(b"2\r\n{}\r\n0\r\n\r\n", length="", extra="Transfer-Encoding: chunked\r\n"), 400,
     "Transfer-Encoding is not accepted"),
    (post_bytes(b"{" * 1000, length=str(10 ** 9)), 413, f"the request body is 1000000000 bytes; at most {MAX_BODY}"),
    (post_bytes(b"x" * (MAX_BODY + 1)), 413, "at most"),
    (post_bytes(b"[" * 200_000 + b"]" * 200_000), 400, "request JSON is nested 200000 levels deep"),
    (post_bytes(b'{"seed": 1,'), 400, "request is not valid JSON"),
    (post_bytes(b'{"seed": NaN}'), 400, "NaN is not a JSON number"),
    (post_bytes(b'{"seed": -Infinity}'), 400, "-Infinity is not a JSON number"),
    (post_bytes(b'{"seed": ' + b"9" * 5000 + b"}"), 400, "request is not valid JSON"),
    (post_bytes(b'{"seed": "\xff\xfe"}'), 400, "request body is not UTF-8"),
    (post_bytes(b"{}").replace(b"/api/render", b"/api/other"), 404, "no such endpoint: /api/other"),
    (b"PUT /api/render HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405, "method PUT is not allowed"),
    (b"GET /api/render HTTP/1.1\r\nHost: x\r\n\r\n", 405, "use POST for /api/render"),
    (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no such page: /nothing"),
    (b"GET / HTTP/1.x\r\n\r\n", 400, "Bad request version"),
]


@pytest.mark.parametrize("raw,status,message", BAD_HTTP_REQUESTS, ids=[m[:40] for _, _, m in BAD_HTTP_REQUESTS])
def test_bad_http_requests_get_4xx_naming_the_problem(srv, raw, status, message):
    got, body, elapsed = exchange(srv.port, raw)
    assert got == status, body[:300]
    assert message in json.loads(body)["error"], body[:500]
    assert elapsed < READ_TIMEOUT + 3  # answered at once (the 413 without reading the body)
    assert_still_serves(srv)


def test_a_promised_body_that_never_comes_gets_408_in_time(srv):
    raw = post_bytes(b'{"seed": 1}', length="100")
    status, body, elapsed = exchange(srv.port, raw)
    assert status == 408 and "did not arrive within 1.5 s (11 of 100 body bytes received)" in json.loads(body)["error"]
    assert READ_TIMEOUT - 0.2 < elapsed < READ_TIMEOUT + 3
    assert_still_serves(srv)


def test_a_trickled_body_gets_408_at_the_deadline(srv):
    """One byte every 0.3 s never trips a per-read timeout; the request deadline stops it."""
    head = post_bytes(b"", length="40")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head)
        t0 = time.monotonic()
        answer = b""
        s.settimeout(0.3)
        while time.monotonic() - t0 < READ_TIMEOUT + 4:
            try:
                s.sendall(b" ")
            except OSError:
                pass
            try:
                b = s.recv(65536)
                if not b:
                    break
                answer += b
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]
    assert elapsed < READ_TIMEOUT + 3
    assert_still_serves(srv)


@pytest.mark.parametrize("trickle", [None, 0.3], ids=["stalled", "trickled"])
def test_an_unfinished_request_head_is_closed_in_time(srv, trickle):
    raw = b"POST /api/render HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (40 if trickle else 0)
    status, _, elapsed = exchange(srv.port, raw, trickle=trickle)
    assert status is None or status in (400, 408)
    assert elapsed < READ_TIMEOUT + 4 + (0 if trickle is None else 0)
    assert_still_serves(srv)


def test_a_slow_client_does_not_block_others(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as slow:
        slow.sendall(post_bytes(b"{", length="100"))  # holds a handler until its deadline
        t0 = time.monotonic()
        assert_still_serves(srv)
        assert time.monotonic() - t0 < READ_TIMEOUT  # served while the slow one still waits
        assert slow.recv(65536).startswith(b"HTTP/1.0 408")


def test_head_and_page(srv):
    status, body, _ = exchange(srv.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b""
    status, body, _ = exchange(srv.port, b"GET /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and b'id="seg-result"' in body and b'id="legend"' in body


# ---- fuzz ----------------------------------------------------------------------------------------
KEYS = ["seed", "strokes", "layer", "mask", "concept", "units", "on", "x", ""]


def random_value(rng, depth=0):
    kind = rng.integers(0, 12 if depth < 4 else 7)
    if kind == 0:
        return int(rng.choice([0, 1, -1, 15, 16, 99_999, 100_000, 2 ** 31, 10 ** 12, -(10 ** 30)]))
    if kind == 1:
        return float(rng.choice([0.0, 1.5, -2.0, 1e300, 3.0]))
    if kind == 2:
        return str(rng.choice(["", "sky", "tree", "false", "true", "layer6", "unicorn", "data:image/png;base64,",
                               "data:image/png;base64,AAAA", "\u2603", "0"]))
    if kind == 3:
        return bool(rng.integers(0, 2))
    if kind == 4:
        return None
    if kind == 5:
        return png_url(FULL if rng.integers(0, 2) else np.ones((8, 8)))
    if kind == 6:
        return [int(u) for u in rng.integers(-2, 18, rng.integers(0, 4))]
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    return {str(rng.choice(KEYS)): random_value(rng, depth + 1) for _ in range(rng.integers(0, 5))}


def random_request(rng):
    """A random body: mostly near-valid requests with random parts, sometimes byte-mutated."""
    req = {}
    if rng.random() < 0.8:
        req["seed"] = int(rng.integers(0, 50)) if rng.random() < 0.6 else random_value(rng)
    if rng.random() < 0.8:
        strokes = []
        for _ in range(rng.integers(0, 3)):
            s = {"mask": png_url(FULL), "concept": str(rng.choice(["sky", "tree"])), "on": bool(rng.integers(0, 2))}
            for _ in range(rng.integers(0, 3)):
                s[str(rng.choice(KEYS))] = random_value(rng, 2)
            if rng.random() < 0.2:
                s.pop(str(rng.choice(list(s) or ["mask"])), None)
            strokes.append(s)
        req["strokes"] = strokes if rng.random() < 0.9 else random_value(rng)
    if rng.random() < 0.2:
        req[str(rng.choice(KEYS))] = random_value(rng)
    body = json.dumps(req if rng.random() < 0.9 else random_value(rng)).encode()
    if rng.random() < 0.15:
        b = bytearray(body)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(0, len(b))] = int(rng.integers(0, 256))
        body = bytes(b)
    return body


def test_fuzz_random_bodies_get_200_or_4xx_never_5xx_or_a_dropped_connection(srv):
    rng = np.random.default_rng(20240615)
    end = time.monotonic() + 4.0
    seen, n = set(), 0
    while time.monotonic() < end:
        body = random_request(rng)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("POST", "/api/render", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()  # a dropped connection raises here and fails the test
            answer = r.read()
        finally:
            conn.close()
        assert r.status == 200 or 400 <= r.status < 500, (r.status, body[:300], answer[:300])
        data = json.loads(answer)
        assert ("error" in data) == (r.status != 200), (body[:300], answer[:300])
        seen.add(r.status)
        n += 1
    assert n >= 20 and 200 in seen and 400 in seen, (n, seen)  # both kinds were exercised
    assert_still_serves(srv)


class BrokenSegmenter(RuleSegmenter):
    """A segmenter with a bug: the server must say so (500) and keep serving."""

    def segment(self, images, downsample: int = 1):
        raise RuntimeError("segmenter exploded")


def test_an_internal_error_is_a_500_with_its_cause_and_the_server_keeps_serving(painter):
    broken = RunningServer(painter, BrokenSegmenter())
    try:
        status, body, _ = exchange(broken.port, post_bytes(b'{"seed": 0}'))
        assert status == 500 and json.loads(body)["error"] == "internal error: RuntimeError: segmenter exploded"
        status, body, _ = exchange(broken.port, b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and json.loads(body)["layer"] == "layer6"
    finally:
        broken.close()
