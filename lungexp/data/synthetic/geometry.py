"""Where things are in a generated scan: its grid, millimetre offsets, and regions to draw shapes in.

Positions inside the generator are millimetre *offsets* from the first voxel in ``(z, y, x)`` order
(``offset = index_zyx * spacing_zyx``), so they index arrays directly. They become world ``(x, y, z)``
only when CSV rows are written, through :meth:`Geometry.to_world`, i.e. the one world mapping,
:meth:`lungexp.data.scans.scan.Scan.voxel_to_world`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungexp.data.scans.scan import Scan

SLICE_SPACINGS_MM = (1.25, 1.5, 2.0, 2.5)


@dataclass(frozen=True)
class Geometry:
    """A generated scan's grid; the direction is the identity, as in every LUNA16 scan."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx: np.ndarray  # mm, (z, y, x)
    origin_xyz: np.ndarray  # world mm of voxel (0, 0, 0), (x, y, z)

    @property
    def in_plane_spacing(self) -> float:
        return float(self.spacing_zyx[2])

    def scan(self, image: np.ndarray | None = None) -> Scan:
        """The :class:`Scan` of this geometry holding ``image`` ``(z, y, x)``; voxel-less without one."""
        spacing_xyz = self.spacing_zyx[::-1]
        if image is None:
            return Scan.without_voxels(self.shape_zyx, self.origin_xyz, spacing_xyz, np.eye(3))
        return Scan(image, self.origin_xyz, spacing_xyz, np.eye(3))

    def to_world(self, offsets_zyx: np.ndarray) -> np.ndarray:
        """World ``(x, y, z)`` mm of ``(z, y, x)`` mm offsets from the first voxel; ``(3,)`` or ``(N, 3)``."""
        return self.scan().voxel_to_world(np.asarray(offsets_zyx, dtype=np.float64) / self.spacing_zyx)


def sample_geometry(rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> Geometry:
    """Scanner-like geometry: in-plane spacing = FOV/512 (exact binary fractions such as 0.703125 mm),
    a standard slice spacing, and origins in the range real LUNA16 scans report."""
    in_plane = round(rng.uniform(0.6, 0.9) * 512) / 512
    slice_spacing = float(rng.choice(SLICE_SPACINGS_MM))
    origin_xy = np.round(rng.uniform(-170.0, -120.0, size=2), 2)
    origin_z = round(float(rng.uniform(-300.0, -100.0)), 2)
    return Geometry(
        shape_zyx=shape_zyx,
        spacing_zyx=np.array([slice_spacing, in_plane, in_plane]),
        origin_xyz=np.array([origin_xy[0], origin_xy[1], origin_z]),
    )


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def local_grid(
    low_mm: np.ndarray, high_mm: np.ndarray, geometry: Geometry
) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The array region covering a mm box, with broadcastable voxel-centre offsets (mm) per axis."""
    shape = np.array(geometry.shape_zyx)
    low = np.clip(np.floor(low_mm / geometry.spacing_zyx).astype(int), 0, shape - 1)
    high = np.clip(np.ceil(high_mm / geometry.spacing_zyx).astype(int) + 1, low + 1, shape)
    region = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    axes = [np.arange(lo, hi) * s for lo, hi, s in zip(low, high, geometry.spacing_zyx, strict=True)]
    return region, (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])


def capsule_fraction(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    start: np.ndarray,
    end: np.ndarray,
    radius_start: float,
    radius_end: float,
    edge_mm: float,
) -> np.ndarray:
    """Voxel fraction covered by a tapered capsule, with a one-voxel linear edge for partial volume."""
    relative = [axis - s for axis, s in zip(grid, start, strict=True)]
    direction = end - start
    along = sum(r * d for r, d in zip(relative, direction, strict=True)) / max(
        float(direction @ direction), 1e-12
    )
    along = np.clip(along, 0.0, 1.0)
    distance = np.sqrt(sum((r - along * d) ** 2 for r, d in zip(relative, direction, strict=True)))
    radius = radius_start + along * (radius_end - radius_start)
    return np.clip(0.5 + (radius - distance) / edge_mm, 0.0, 1.0)
