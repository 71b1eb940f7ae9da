"""jaxdissect: network dissection in JAX."""
