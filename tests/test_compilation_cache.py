"""The scripts' persistent compilation cache: where it goes, and that a configured one wins."""
import jax
import pytest

from jaxdissect.compilation_cache import enable_compilation_cache


@pytest.fixture
def no_cache_configured(monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_default_folder_is_under_jaxdissect_home(no_cache_configured, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path))
    assert enable_compilation_cache() == str(tmp_path / "jax-compilation-cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax-compilation-cache")


def test_a_configured_cache_is_kept(no_cache_configured, tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert enable_compilation_cache(tmp_path / "other") == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir is None  # jax reads its env variable itself
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "set"))
    assert enable_compilation_cache() == str(tmp_path / "set")
