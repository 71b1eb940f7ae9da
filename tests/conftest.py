"""Test setup: several simulated CPU devices, so multi-device code is tested everywhere."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Segmentation caches and converted weights go to $JAXDISSECT_HOME: keep the tests' out of the
# user's home (a test that needs its own sets it with monkeypatch).
if "JAXDISSECT_HOME" not in os.environ:
    import tempfile

    os.environ["JAXDISSECT_HOME"] = tempfile.mkdtemp(prefix="jaxdissect-test-home-")
