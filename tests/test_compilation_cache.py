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


def test_quick_compilations_are_kept_too(tmp_path):
    """A toy's steps compile in well under JAX's default one-second minimum; they are cached all the same."""
    import subprocess
    import sys

    code = ("import sys, jax, jax.numpy as jnp\n"
            "from jaxdissect.compilation_cache import enable_compilation_cache\n"
            "enable_compilation_cache(sys.argv[1])\n"
            "print(jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.ones(7)).sum())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cc")], check=True, env=env, timeout=300)
    assert any((tmp_path / "cc").iterdir())
