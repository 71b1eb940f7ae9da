"""MaskAgreement: how far each unit's firing region agrees across paired images.

For image pairs (e.g. a scene and its stylized twin, same geometry), each unit has a mask on
each image (its activation above that set's threshold). Summed over the pairs: the pixels where
the mask is on in the first image, in the second, and in both, so the unit's agreement is the
IoU of its masks, I / (A + B - I). Plain integer sums: merging (a psum across devices) is exact.
Counts are int32, so one state holds fewer than 2**31 pixels (e.g. 500k pairs at 64x64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdissect.stats._util import row_mask


@struct.dataclass
class MaskAgreement:
    """Per-unit areas and intersections of masks on paired images."""

    first_area: jax.Array  # (units,) int32 pixels where the unit is on in the first image
    second_area: jax.Array  # (units,) int32 pixels where it is on in the partner
    intersection: jax.Array  # (units,) int32 pixels where it is on in both
    pixels: jax.Array  # () int32 pixel positions seen (per image of a pair)

    @classmethod
    def create(cls, num_units: int) -> "MaskAgreement":
        z = jnp.zeros((num_units,), jnp.int32)
        return cls(first_area=z, second_area=z, intersection=z, pixels=jnp.zeros((), jnp.int32))

    @property
    def num_units(self) -> int:
        return self.first_area.shape[0]

    def update(self, first: jax.Array, second: jax.Array, mask: jax.Array | None = None) -> "MaskAgreement":
        """Add pairs: unit masks (N, H, W, units) bool of the first images and of their partners,
        pixel-aligned; pairs where `mask` (N,) is False are ignored."""
        first, second = jnp.asarray(first), jnp.asarray(second)
        if first.ndim != 4 or first.shape[-1] != self.num_units:
            raise ValueError(f"MaskAgreement.update: masks must be (N, H, W, {self.num_units}), got {first.shape}")
        if second.shape != first.shape:
            raise ValueError(f"MaskAgreement.update: the partner masks {second.shape} must have the first "
                             f"masks' shape {first.shape}")
        return _update(self, first.astype(bool), second.astype(bool), row_mask(mask, first.shape[0]))

    def merge(self, other: "MaskAgreement") -> "MaskAgreement":
        return jax.tree.map(jnp.add, self, other)

    def all_reduce(self, axis_name) -> "MaskAgreement":
        return jax.tree.map(lambda a: jax.lax.psum(a, axis_name), self)

    def iou(self) -> jax.Array:
        """(units,) I / (A + B - I); NaN for a unit on nowhere in either set (no region to compare)."""
        inter = self.intersection.astype(jnp.float32)
        union = self.first_area.astype(jnp.float32) + self.second_area.astype(jnp.float32) - inter
        return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), jnp.nan)

    def chance_iou(self) -> jax.Array:
        """(units,) the IoU two independent masks with the same coverage would have on average,
        ab / (a + b - ab) with a, b the fractions of pixels each mask covers: the agreement of a
        unit whose region moves at random (NaN: never on)."""
        n = jnp.maximum(self.pixels, 1).astype(jnp.float32)
        a, b = self.first_area.astype(jnp.float32) / n, self.second_area.astype(jnp.float32) / n
        union = a + b - a * b
        return jnp.where(union > 0, a * b / jnp.where(union > 0, union, 1.0), jnp.nan)

    def both_fraction(self) -> jax.Array:
        """(units,) fraction of pixels where the unit is on in both images (the original's
        'intersect_99' P(both))."""
        return self.intersection.astype(jnp.float32) / jnp.maximum(self.pixels, 1).astype(jnp.float32)


@jax.jit
def _update(state: MaskAgreement, first, second, mask) -> MaskAgreement:
    valid = mask[:, None, None, None]
    a, b = first & valid, second & valid
    count = lambda x: x.sum(axis=(0, 1, 2), dtype=jnp.int32)  # noqa: E731
    return MaskAgreement(first_area=state.first_area + count(a), second_area=state.second_area + count(b),
                         intersection=state.intersection + count(a & b),
                         pixels=state.pixels + mask.sum(dtype=jnp.int32) * first.shape[1] * first.shape[2])
