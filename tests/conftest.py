"""Test setup: several simulated CPU devices, so multi-device code is tested everywhere."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_MADE_HERE = []  # temporary folders this process created for the run; removed when it ends

# One persistent compilation cache for the whole test run, in-process tests and the scripts and
# workers they launch alike (they inherit the variables): a step compiled once, by any test, is
# loaded from disk by the next test that builds the same computation. It starts empty (a new
# folder per run unless the caller names one, as .ci/run does to share it between its steps).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdissect-test-jit-cache-")
    _MADE_HERE.append(os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Segmentation caches and converted weights go to $JAXDISSECT_HOME: keep the tests' out of the
# user's home (a test that needs its own sets it with monkeypatch).
if "JAXDISSECT_HOME" not in os.environ:
    import tempfile

    os.environ["JAXDISSECT_HOME"] = tempfile.mkdtemp(prefix="jaxdissect-test-home-")
    _MADE_HERE.append(os.environ["JAXDISSECT_HOME"])


def pytest_unconfigure(config):
    """Remove the temporary compilation cache and home this process made (the xdist controller,
    or a run on one process; workers inherit the folders and leave them alone)."""
    import shutil

    for folder in _MADE_HERE:
        shutil.rmtree(folder, ignore_errors=True)
