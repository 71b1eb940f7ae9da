"""Verified downloads against a local HTTP server: success, wrong hash, 404, dropped connection."""
import hashlib
import http.server
import os
import threading

import pytest

from weight_conversion import DownloadError, cache, download
from weight_conversion import downloads
from weight_conversion.downloads import sha256_prefix_from_name

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # several chunks


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        if name.startswith("drop/"):  # promise the whole file, send half, close
            data = self.files[name[5:]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if name not in self.files:
            self.send_error(404, "Not Found")
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    _Handler.files = {"model-abc.pth": PAYLOAD}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_success_with_both_hashes(server, tmp_path):
    dest = tmp_path / "sub" / "model-abc.pth"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    out = download(f"{server}/model-abc.pth", dest, md5=hashlib.md5(PAYLOAD).hexdigest(),
                   sha256_prefix=sha[:8], progress=False)
    assert out == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["model-abc.pth"]


def test_package_function_is_the_module_function(server, tmp_path):
    """weight_conversion.download is the function of weight_conversion.downloads."""
    assert download is downloads.download
    dest = tmp_path / "f.pth"
    downloads.download(f"{server}/model-abc.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_wrong_hash_leaves_nothing(server, tmp_path, kind):
    dest = tmp_path / "model-abc.pth"
    kwargs = {"md5": "0" * 32} if kind == "md5" else {"sha256_prefix": "deadbeef"}
    url = f"{server}/model-abc.pth"
    with pytest.raises(DownloadError, match=kind) as err:
        download(url, dest, progress=False, **kwargs)
    msg = str(err.value)
    assert url in msg and str(dest) in msg and "--pth" in msg
    assert _leftovers(tmp_path) == []


def test_404_leaves_nothing(server, tmp_path):
    dest = tmp_path / "missing.pth"
    url = f"{server}/missing.pth"
    with pytest.raises(DownloadError, match="404") as err:
        download(url, dest, progress=False)
    assert url in str(err.value) and str(dest) in str(err.value)
    assert _leftovers(tmp_path) == []


def test_dropped_connection_leaves_nothing(server, tmp_path):
    dest = tmp_path / "model-abc.pth"
    url = f"{server}/drop/model-abc.pth"
    with pytest.raises(DownloadError) as err:
        download(url, dest, progress=False)
    assert url in str(err.value)
    assert _leftovers(tmp_path) == []


def test_unreachable_host(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        download(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", progress=False, timeout=5)
    assert _leftovers(tmp_path) == []


def test_existing_file_kept_when_download_fails(server, tmp_path):
    dest = tmp_path / "missing.pth"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download(f"{server}/missing.pth", dest, progress=False)
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["missing.pth"]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home"
    assert cache.weights_dir("vgg16_places") == tmp_path / "home" / "weights" / "vgg16_places"
    assert cache.download_path("https://x.org/models/a-0bafbc55.pth") == tmp_path / "home" / "downloads" / "a-0bafbc55.pth"
    monkeypatch.delenv("JAXDISSECT_HOME")
    assert cache.cache_dir() == __import__("pathlib").Path.home() / ".cache" / "jaxdissect"
    with pytest.raises(ValueError):
        cache.weights_dir("../evil")


def test_sha256_prefix_from_name():
    assert sha256_prefix_from_name("https://h/models/vgg16_places365-0bafbc55.pth") == "0bafbc55"
    assert sha256_prefix_from_name("resnet152_places365-f928166e5c.pth") == "f928166e5c"
    assert sha256_prefix_from_name("labels.json") is None
