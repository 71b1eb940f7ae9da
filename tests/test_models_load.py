"""jaxdissect.models.load: every weights source, the cache, errors, labels."""
import dataclasses
import hashlib
import os
import pathlib
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

import jaxdissect  # noqa: E402
from jaxdissect import models  # noqa: E402
from jaxdissect.models import registry  # noqa: E402
from test_convert_cli import file_server, import_tiny, tiny_checkpoint, torch_forward, write_tiny_module  # noqa: E402,F401

X = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny model registered in this process, with the cache in tmp_path/home."""
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    (tmp_path / "mod").mkdir()
    spec = import_tiny(write_tiny_module(tmp_path / "mod"))
    yield spec
    registry._REGISTRY.pop("tiny_cli", None)


def _assert_matches(model, net):
    out, _ = jaxdissect.capture(model, X)
    ref = torch_forward(net, X)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_load_from_folder(tmp_path, tiny):
    from jaxdissect.models import convert_checkpoint

    pth, net = tiny_checkpoint(tmp_path / "t.pth")
    folder = convert_checkpoint("tiny_cli", pth, tmp_path / "w")
    model = models.load("tiny_cli", weights=folder)
    assert isinstance(model, models.LoadedModel)
    assert (model.name, model.kind, model.input_size) == ("tiny_cli", "classifier", (8, 8))
    assert model.default_layer == "conv1" and model.layer_names == ("conv1", "fc")
    assert model.normalization == registry.IMAGENET_NORMALIZATION
    assert model.labels == tuple(f"class{i}" for i in range(5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"
    _assert_matches(model, net)


def test_load_pth_cached_by_hash(tmp_path, tiny, monkeypatch):
    pth, net = tiny_checkpoint(tmp_path / "t.pth", legacy=True)
    model = models.load("tiny_cli", weights=pth)
    _assert_matches(model, net)
    sha = hashlib.sha256(pth.read_bytes()).hexdigest()
    folder = tmp_path / "home" / "weights" / f"tiny_cli-{sha[:16]}"
    assert (folder / "meta.json").is_file()
    # The second load reads the cache: no conversion.
    import jaxdissect.models.conversion as convert

    monkeypatch.setattr(convert, "convert_checkpoint", lambda *a, **k: pytest.fail("converted again"))
    _assert_matches(models.load("tiny_cli", weights=str(pth)), net)
    # Other weights, other cache entry.
    pth2, net2 = tiny_checkpoint(tmp_path / "t2.pth", seed=1)
    monkeypatch.undo()
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    _assert_matches(models.load("tiny_cli", weights=pth2), net2)
    assert len(os.listdir(tmp_path / "home" / "weights")) == 2


def test_load_pth_in_memory(tmp_path, tiny):
    pth, net = tiny_checkpoint(tmp_path / "t.pth")
    _assert_matches(models.load("tiny_cli", weights=pth, cache=False), net)
    assert not (tmp_path / "home").exists()


def test_load_default_downloads_once(tmp_path, tiny, file_server):
    base, handler = file_server
    pth, net = tiny_checkpoint(tmp_path / "tiny-1234abcd.pth")
    handler.files["m/tiny-1234abcd.pth"] = pth.read_bytes()
    sha = hashlib.sha256(pth.read_bytes()).hexdigest()
    models.register(dataclasses.replace(tiny, url=f"{base}/m/tiny-1234abcd.pth", sha256_prefix=sha[:10]))
    _assert_matches(models.load("tiny_cli"), net)
    assert handler.hits == ["/m/tiny-1234abcd.pth"]
    assert (tmp_path / "home" / "weights" / "tiny_cli" / "meta.json").is_file()
    _assert_matches(models.load("tiny_cli"), net)
    assert len(handler.hits) == 1  # converted weights reused, nothing downloaded again


def test_load_default_download_failure(tmp_path, tiny, file_server):
    from weight_conversion import DownloadError

    base, _ = file_server
    models.register(dataclasses.replace(tiny, url=f"{base}/m/absent.pth"))
    with pytest.raises(DownloadError, match="absent.pth.*weights=FILE"):
        models.load("tiny_cli")
    assert not (tmp_path / "home" / "weights" / "tiny_cli").exists()
    assert os.listdir(tmp_path / "home" / "downloads") == []


def test_packaged_weights(tmp_path, tiny):
    """spec.packaged_weights is a folder relative to the jaxdissect package."""
    from jaxdissect.models import convert_checkpoint

    pth, net = tiny_checkpoint(tmp_path / "t.pth")
    folder = convert_checkpoint("tiny_cli", pth, tmp_path / "packaged")
    package_dir = pathlib.Path(jaxdissect.__file__).resolve().parent
    rel = os.path.relpath(folder, package_dir)
    models.register(dataclasses.replace(tiny, packaged_weights=rel, url=None, convert=None))
    _assert_matches(models.load("tiny_cli"), net)


def test_errors(tmp_path, tiny):
    from jaxdissect.models.weights_io import save_weights
    from weight_conversion import KeyMapError

    with pytest.raises(KeyError, match="unknown model 'nope'.*tiny_cli"):
        models.load("nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        models.load("tiny_cli", weights=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a jaxdissect weights folder"):
        models.load("tiny_cli", weights=tmp_path)
    other = tmp_path / "other"
    save_weights(other, "some_other_model", {"params": {}}, {})
    with pytest.raises(ValueError, match="some_other_model"):
        models.load("tiny_cli", weights=other)
    bad = tmp_path / "bad"
    save_weights(bad, "tiny_cli", {"params": {"conv1": {"kernel": np.zeros((3, 3, 3, 4), np.float32),
                                                        "bias": np.zeros(4, np.float32)},
                                              "fc": {"kernel": np.zeros((4, 6), np.float32),
                                                     "bias": np.zeros(5, np.float32)}}}, {"num_classes": 5})
    with pytest.raises(KeyMapError, match="params/fc/kernel"):
        models.load("tiny_cli", weights=bad)
    models.register(dataclasses.replace(tiny, url=None, convert=None))
    with pytest.raises(ValueError, match="no packaged weights"):
        models.load("tiny_cli")


def test_extra_models_env(tmp_path, monkeypatch):
    """$JAXDISSECT_EXTRA_MODELS makes a user module's models known to get_spec/available."""
    from jaxdissect.models import catalog

    mod = tmp_path / "envmod"
    mod.mkdir()
    (mod / "jd_env_models.py").write_text(
        "import flax.linen as nn\nfrom jaxdissect.models import registry\n"
        "registry.register(registry.ModelSpec(name='env_model', kind='classifier', build=lambda c: nn.Dense(2),\n"
        "    default_config={}, input_size=(4, 4), normalization={}, default_layer='x', layer_names=('x',)))\n")
    monkeypatch.syspath_prepend(str(mod))
    monkeypatch.setenv("JAXDISSECT_EXTRA_MODELS", " jd_env_models , ")
    try:
        assert "env_model" in models.available()
        assert models.get_spec("env_model").input_size == (4, 4)
    finally:
        registry._REGISTRY.pop("env_model", None)
        catalog._imported_extras.discard("jd_env_models")
    monkeypatch.setenv("JAXDISSECT_EXTRA_MODELS", "no_such_module_xyz")
    with pytest.raises(ImportError, match="no_such_module_xyz.*JAXDISSECT_EXTRA_MODELS"):
        models.available()


def test_places365_labels():
    labels = models.places365_labels()
    assert len(labels) == 365 and len(set(labels)) == 365
    assert labels[0] == "airfield" and labels[-1] == "zen_garden"
    assert labels[304] == "ski_resort" and labels[351] == "volleyball_court-outdoor"
    assert all(" " not in name and "/" not in name for name in labels)
    assert labels[90] == "church-indoor" and labels[313] == "stadium-football"


def test_builtin_places_specs_use_labels():
    for name in ("vgg16_places", "alexnet_places", "resnet152_places"):
        if name not in models.available():
            continue
        spec = models.get_spec(name)
        assert tuple(spec.labels()) == models.places365_labels()


def test_file_supplied_by_hand(tmp_path, tiny, file_server):
    """A checkpoint put into <cache>/downloads by hand is used (no network) when its hash matches,
    and kept, with a clear error, when it does not."""
    from weight_conversion import DownloadError

    base, handler = file_server
    pth, net = tiny_checkpoint(tmp_path / "t.pth")
    sha = hashlib.sha256(pth.read_bytes()).hexdigest()
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "tiny-x.pth").write_bytes(pth.read_bytes())
    models.register(dataclasses.replace(tiny, url=f"{base}/m/tiny-x.pth", sha256_prefix=sha[:8]))
    _assert_matches(models.load("tiny_cli"), net)
    assert handler.hits == []
    models.register(dataclasses.replace(tiny, url=f"{base}/m/tiny-x.pth", sha256_prefix="00000000"))
    shutil.rmtree(tmp_path / "home" / "weights")
    with pytest.raises(DownloadError, match="delete it"):
        models.load("tiny_cli")
    assert (downloads / "tiny-x.pth").is_file() and handler.hits == []
