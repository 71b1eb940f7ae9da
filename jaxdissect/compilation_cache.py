"""JAX's persistent compilation cache for the command-line scripts: a repeated command loads its
compiled steps from disk instead of compiling them again (seconds per model on a CPU)."""
from __future__ import annotations

import os

import jax

from weight_conversion.cache import cache_dir

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"  # jax's own setting wins when given


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turn the cache on at `path` (default $JAXDISSECT_HOME/jax-compilation-cache) unless a
    cache folder is already configured; returns the folder in use. Call before compiling."""
    # Every compiled step is kept, however quick its compilation: JAX's default minimum of one
    # second would leave out most of the small models' steps, and a run compiles dozens of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    current = jax.config.jax_compilation_cache_dir or os.environ.get(ENV_VAR)
    if current:
        return str(current)
    if path is None:
        path = cache_dir() / "jax-compilation-cache"
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
