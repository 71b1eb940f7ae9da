"""`python -m weight_conversion` as a new user runs it, with a tiny model registered from a
module file (--register / $JAXDISSECT_EXTRA_MODELS), and convert_checkpoint's checks."""
import dataclasses
import hashlib
import http.server
import importlib
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MODULE = "jd_tiny_models"
TINY_SOURCE = '''"""A tiny classifier registered for the conversion tests, as a user's own model module would be."""
import os

import flax.linen as nn

from jaxdissect.models import registry
from weight_conversion.errors import KeyMapError


class TinyNet(nn.Module):
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv1")(x))
        return nn.Dense(self.num_classes, name="fc")(x.mean(axis=(1, 2)))


def _shapes(nc):
    return {"conv1.weight": (4, 3, 3, 3), "conv1.bias": (4,), "fc.weight": (nc, 4), "fc.bias": (nc,)}


def config_from_torch(state):
    return {"num_classes": int(state["fc.weight"].shape[0])} if "fc.weight" in state else {"num_classes": 5}


def convert(state, config):
    want = _shapes(config["num_classes"])
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    bad = sorted(k for k in want if k in state and tuple(state[k].shape) != want[k])
    if missing or unexpected or bad:
        raise KeyMapError(f"tiny_cli: missing {missing}, unexpected {unexpected}, mis-shaped {bad}")
    return {"params": {"conv1": {"kernel": state["conv1.weight"].transpose(2, 3, 1, 0), "bias": state["conv1.bias"]},
                       "fc": {"kernel": state["fc.weight"].T, "bias": state["fc.bias"]}}}


SPEC = registry.register(registry.ModelSpec(
    name="tiny_cli", kind="classifier", build=lambda c: TinyNet(int(c.get("num_classes", 5))),
    default_config={"num_classes": 5}, input_size=(8, 8), normalization=registry.IMAGENET_NORMALIZATION,
    default_layer="conv1", layer_names=("conv1", "fc"), labels=lambda: [f"class{i}" for i in range(5)],
    url=os.environ.get("TINY_URL") or None, sha256_prefix=os.environ.get("TINY_SHA256") or None,
    config_from_torch=config_from_torch, convert=convert))
'''


class TorchTiny(torch.nn.Module):
    """The PyTorch original of TinyNet (NCHW)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(x)).mean((2, 3)))


def write_tiny_module(folder: pathlib.Path) -> pathlib.Path:
    """Write the tiny model module into `folder` (to be put on PYTHONPATH)."""
    (folder / f"{TINY_MODULE}.py").write_text(TINY_SOURCE)
    return folder


def tiny_checkpoint(path: pathlib.Path, legacy: bool = False, seed: int = 0, num_classes: int = 5):
    """Random TorchTiny weights saved with torch.save; returns (path, the torch module)."""
    torch.manual_seed(seed)
    net = TorchTiny(num_classes).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return path, net


def import_tiny(folder: pathlib.Path):
    """Import (or re-import) the tiny model module in this process; returns its spec."""
    sys.path.insert(0, str(folder))
    try:
        if TINY_MODULE in sys.modules:
            return importlib.reload(sys.modules[TINY_MODULE]).SPEC
        return importlib.import_module(TINY_MODULE).SPEC
    finally:
        sys.path.remove(str(folder))


def torch_forward(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    hits: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.hits.append(self.path)
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def file_server():
    """A local HTTP server; tests put bytes into .files; yields (base url, handler class)."""
    _Files.files, _Files.hits = {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Files
    srv.shutdown()
    srv.server_close()


def _run_cli(args, env_extra, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(p) for p in env_extra.pop("_path", [])] + [str(REPO), os.environ.get("PYTHONPATH", "")]), **env_extra}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "weight_conversion", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_lists_models(tmp_path):
    write_tiny_module(tmp_path)
    res = _run_cli(["--help", "--register", TINY_MODULE], {"_path": [tmp_path]}, tmp_path)
    assert res.returncode == 0, res.stderr
    for word in ("--model", "--pth", "--out", "--register", "JAXDISSECT_HOME", "tiny_cli"):
        assert word in res.stdout
    if (REPO / "jaxdissect" / "models" / "vgg.py").exists():
        assert "vgg16_places" in res.stdout


def _check_converted(out_dir, pth, net, tmp_path):
    from jaxdissect.models import load
    from jaxdissect.models.weights_io import read_meta

    import jaxdissect

    import_tiny(tmp_path)
    meta = read_meta(out_dir)
    assert meta["model"] == "tiny_cli" and meta["source"] == pth.name
    assert meta["source_sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    model = load("tiny_cli", weights=out_dir)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float32)
    out, _ = jaxdissect.capture(model, x)
    ref = torch_forward(net, x)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_end_to_end_register_flag(tmp_path):
    write_tiny_module(tmp_path)
    pth, net = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "converted"
    res = _run_cli(["--register", TINY_MODULE, "--model", "tiny_cli", "--pth", str(pth), "--out", str(out)],
                   {"_path": [tmp_path], "JAXDISSECT_HOME": str(tmp_path / "home")}, tmp_path)
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout
    _check_converted(out, pth, net, tmp_path)


def test_end_to_end_env_and_download(tmp_path, file_server):
    """No --pth: the official file is downloaded (here from a local server), verified, converted
    into <cache>/weights/<name>; the model module comes from $JAXDISSECT_EXTRA_MODELS."""
    base, handler = file_server
    write_tiny_module(tmp_path)
    pth, net = tiny_checkpoint(tmp_path / "tiny-legacy.pth", legacy=True)
    handler.files["models/tiny-legacy.pth"] = pth.read_bytes()
    home = tmp_path / "home"
    env = {"_path": [tmp_path], "JAXDISSECT_HOME": str(home), "JAXDISSECT_EXTRA_MODELS": TINY_MODULE,
           "TINY_URL": f"{base}/models/tiny-legacy.pth",
           "TINY_SHA256": hashlib.sha256(pth.read_bytes()).hexdigest()[:8]}
    res = _run_cli(["--model", "tiny_cli"], dict(env), tmp_path)
    assert res.returncode == 0, res.stderr
    assert (home / "downloads" / "tiny-legacy.pth").read_bytes() == pth.read_bytes()
    _check_converted(home / "weights" / "tiny_cli", pth, net, tmp_path)
    # A wrong checksum: error names the URL, nothing is left in the downloads folder.
    (home / "downloads" / "tiny-legacy.pth").unlink()
    res = _run_cli(["--model", "tiny_cli"], {**env, "TINY_SHA256": "deadbeef"}, tmp_path)
    assert res.returncode == 1
    assert f"{base}/models/tiny-legacy.pth" in res.stderr and "--pth" in res.stderr
    assert os.listdir(home / "downloads") == []


@pytest.fixture
def tiny_spec(tmp_path):
    """The tiny model registered in this process (removed again afterwards)."""
    from jaxdissect.models import registry

    write_tiny_module(tmp_path)
    spec = import_tiny(tmp_path)
    yield spec
    registry._REGISTRY.pop("tiny_cli", None)


def test_cli_errors_in_process(tmp_path, tiny_spec, capsys):
    from weight_conversion.__main__ import main

    pth, _ = tiny_checkpoint(tmp_path / "tiny.pth")
    # Truncated checkpoint.
    bad = tmp_path / "cut.pth"
    bad.write_bytes(pth.read_bytes()[:300])
    assert main(["--model", "tiny_cli", "--pth", str(bad), "--out", str(tmp_path / "o1")]) == 1
    assert "cut.pth" in capsys.readouterr().err
    # Key map mismatch: an extra key and a mis-shaped one are named.
    sd = {k: v.clone() for k, v in torch.load(pth, weights_only=True).items()}
    sd["extra.weight"] = torch.zeros(2)
    sd["conv1.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "odd.pth")
    assert main(["--model", "tiny_cli", "--pth", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "extra.weight" in err and "conv1.bias" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    # Unknown model, missing file, no model.
    assert main(["--model", "nope", "--pth", str(pth)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["--model", "tiny_cli", "--pth", str(tmp_path / "missing.pth")]) == 2
    with pytest.raises(SystemExit):
        main([])
    assert main(["--list"]) == 0
    assert "tiny_cli" in capsys.readouterr().out


def test_shape_check_against_module(tmp_path, tiny_spec):
    """A key map that produces a wrong tree is caught by the check against module.init's shapes."""
    from jaxdissect.models import registry
    from jaxdissect.models import convert_checkpoint
    from weight_conversion import KeyMapError

    pth, _ = tiny_checkpoint(tmp_path / "tiny.pth")

    def bad_convert(state, config):
        tree = tiny_spec.convert(state, config)
        tree["params"]["fc"]["kernel"] = tree["params"]["fc"]["kernel"][:2]  # mis-shaped
        del tree["params"]["conv1"]["bias"]  # missing
        tree["params"]["extra"] = {"w": np.zeros(3, np.float32)}  # unexpected
        return tree

    registry.register(dataclasses.replace(tiny_spec, convert=bad_convert))
    with pytest.raises(KeyMapError) as err:
        convert_checkpoint("tiny_cli", pth, tmp_path / "out")
    msg = str(err.value)
    assert "params/conv1/bias" in msg and "params/extra/w" in msg and "params/fc/kernel" in msg
    assert not (tmp_path / "out").exists()


def test_config_from_checkpoint(tmp_path, tiny_spec):
    """config_from_torch decides the module config (7 classes here, default 5)."""
    from jaxdissect.models.weights_io import load_weights
    from jaxdissect.models import convert_checkpoint

    pth, _ = tiny_checkpoint(tmp_path / "tiny7.pth", num_classes=7)
    out = convert_checkpoint("tiny_cli", pth, tmp_path / "out")
    variables, config, _ = load_weights(out)
    assert config == {"num_classes": 7}
    assert variables["params"]["fc"]["kernel"].shape == (4, 7)


@pytest.mark.slow
def test_vgg16_places_cli_end_to_end(tmp_path):
    """The real vgg16_places spec: a torch.save'd random VGG16 converted by the CLI matches torch."""
    if not (REPO / "jaxdissect" / "models" / "vgg.py").exists():
        pytest.skip("vgg16_places is not written yet")
    sys.path.insert(0, str(REPO / "tests"))
    try:
        torch_reference = importlib.import_module("torch_reference")
    finally:
        sys.path.remove(str(REPO / "tests"))
    import jaxdissect
    from jaxdissect.models import load

    net = torch_reference.randomize_(torch_reference.vgg16(), seed=0)
    pth = tmp_path / "vgg16_random.pth"
    torch.save(net.state_dict(), pth, _use_new_zipfile_serialization=False)  # the published files are legacy
    out = tmp_path / "vgg_weights"
    res = _run_cli(["--model", "vgg16_places", "--pth", str(pth), "--out", str(out)],
                   {"JAXDISSECT_HOME": str(tmp_path / "home")}, tmp_path)
    assert res.returncode == 0, res.stderr
    model = load("vgg16_places", weights=out)
    assert len(model.labels) == 365 and model.labels[0] == "airfield"
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    y, acts = jaxdissect.capture(model, x, layers=("features.conv5_3",))
    ref = torch_forward(net, x)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert acts["features.conv5_3"].shape == (1, 14, 14, 512)
