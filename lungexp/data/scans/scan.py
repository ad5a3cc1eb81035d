"""A CT volume with its physical geometry, and the world <-> voxel mapping.

Conventions (those of LUNA16, ITK and SimpleITK):

* world coordinates are ``(x, y, z)`` in millimetres (LPS, the frame of the scan's origin);
* ``origin``, ``spacing`` and the ITK index are ``(x, y, z)``;
* the voxel array is indexed ``(z, y, x)``, as ``sitk.GetArrayFromImage`` returns it.

``world = origin + direction @ (spacing * index_xyz)``, so
``index_xyz = (direction^-1 @ (world - origin)) / spacing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Scan:
    """A CT volume in Hounsfield units with its origin, spacing and direction.

    Args:
        array: voxel values indexed ``(z, y, x)``, usually int16 HU.
        origin: world position (mm) of voxel ``(0, 0, 0)``, ``(x, y, z)``.
        spacing: voxel size (mm), ``(x, y, z)``.
        direction: 3x3 direction cosines (columns are the index axes in world space).
        source: the file or folder the scan was read from, for error messages.
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    source: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(3))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))
        if self.array.ndim != 3:
            raise ValueError(f"{self.source}: expected a 3D volume, got shape {self.array.shape}")
        if np.any(self.spacing <= 0):
            raise ValueError(f"{self.source}: spacing must be positive, got {self.spacing.tolist()}")

    @classmethod
    def without_voxels(
        cls,
        shape_zyx: tuple[int, int, int],
        origin: np.ndarray,
        spacing: np.ndarray,
        direction: np.ndarray,
        source: Path | None = None,
    ) -> Scan:
        """A scan of this geometry whose array is a zero-byte broadcast view, for world <-> voxel maths
        where the voxels are not read (a header) or not made yet (a generated scan)."""
        return cls(np.broadcast_to(np.int16(0), tuple(shape_zyx)), origin, spacing, direction, source)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> np.ndarray:
        return np.array(self.array.shape[::-1], dtype=np.int64)

    def world_to_index(self, world_xyz: np.ndarray) -> np.ndarray:
        """Continuous ITK index ``(x, y, z)`` of world points; accepts ``(3,)`` or ``(N, 3)``."""
        world = np.atleast_2d(np.asarray(world_xyz, dtype=np.float64))
        index = (np.linalg.inv(self.direction) @ (world - self.origin).T).T / self.spacing
        return index.reshape(np.shape(world_xyz))

    def world_to_voxel(self, world_xyz: np.ndarray) -> np.ndarray:
        """Continuous array position ``(z, y, x)`` of world points; accepts ``(3,)`` or ``(N, 3)``."""
        return self.world_to_index(world_xyz)[..., ::-1]

    def voxel_to_world(self, voxel_zyx: np.ndarray) -> np.ndarray:
        """World ``(x, y, z)`` mm of (possibly fractional) array positions ``(z, y, x)``."""
        voxel = np.atleast_2d(np.asarray(voxel_zyx, dtype=np.float64))
        world = self.origin + (self.direction @ (voxel[:, ::-1] * self.spacing).T).T
        return world.reshape(np.shape(voxel_zyx))

    def contains_world(self, world_xyz: np.ndarray) -> np.ndarray:
        """Whether world points fall inside the scan's voxel grid (voxel centres at integer index)."""
        index = np.atleast_2d(self.world_to_index(world_xyz))
        inside = np.all((index >= -0.5) & (index <= self.size_xyz - 0.5), axis=1)
        return inside if np.ndim(world_xyz) == 2 else inside[0]

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(tuple(self.origin))
        image.SetSpacing(tuple(self.spacing))
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, source: Path | None = None) -> Scan:
        if image.GetDimension() != 3:
            raise ValueError(f"{source}: expected a 3D image, got {image.GetDimension()}D")
        return cls(
            array=sitk.GetArrayFromImage(image),
            origin=image.GetOrigin(),
            spacing=image.GetSpacing(),
            direction=image.GetDirection(),
            source=source,
        )
