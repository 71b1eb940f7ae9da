"""jaxdissect: network dissection in JAX."""
from jaxdissect import capture  # a callable module: jaxdissect.capture(model, x, layers=..., edits=...)

__all__ = ["capture"]
