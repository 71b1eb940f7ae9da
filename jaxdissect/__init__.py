"""jaxdissect: network dissection in JAX."""
from jaxdissect.capturing import capture  # jaxdissect.capture(model, x, layers=..., edits=...)

__all__ = ["capture"]
