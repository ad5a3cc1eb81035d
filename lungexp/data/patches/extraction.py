"""Cubic patches around world coordinates, resampled to an isotropic grid.

A patch is sampled on its own grid: ``size`` voxels per side at ``spacing_mm``, axis-aligned with
the world (LPS) frame and centred on the candidate, with the candidate at voxel ``size // 2``.
Outside the scan the patch is filled with ``pad_hu`` (air).

Scans whose direction is a signed axis permutation (every LUNA16 and almost every clinical CT
scan) are resampled separably: trilinear interpolation is three small 1D interpolation matrices
applied to the block of voxels under the patch, about 3x faster than SimpleITK's resampler called
per patch (``python scripts/bench_data.py``; docs/benchmarks.md). Oblique scans fall back to
SimpleITK's resampler, which gives the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from lungexp.data.scans.hounsfield import AIR_HU
from lungexp.data.scans.scan import Scan
from lungexp.utils.errors import ArgumentError, check_int, check_number

MIN_SIZE = 4  # voxels per side; below this a patch holds no context around the candidate


@dataclass(frozen=True)
class PatchSpec:
    """Geometry of the patches fed to the network.

    Args:
        size: voxels per side of the cube.
        spacing_mm: voxel size of each channel; several values give a multi-scale patch
            (same voxel count, wider field of view per channel).
        size_mm: the cube's edge in mm (of the finest channel) instead of ``size``, which
            :meth:`from_config` computes from it.
        pad_hu: value used outside the scan.
    """

    size: int = 32
    spacing_mm: tuple[float, ...] = (1.0,)
    pad_hu: float = AIR_HU

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        if self.size < MIN_SIZE:
            raise ValueError(f"patch size must be at least {MIN_SIZE} voxels, got {self.size}")
        if not self.spacing_mm or min(self.spacing_mm) <= 0:
            raise ValueError(f"patch spacing_mm must be positive, got {self.spacing_mm}")

    @classmethod
    def from_config(  # each field's parameter defaults to the field above: one default per option
        cls, size: int | None = size, spacing_mm: Sequence[float] = spacing_mm, size_mm: float | None = None,
        pad_hu: float = pad_hu,
    ) -> PatchSpec:
        """Build from the patch options, where the size may be given in mm (of the finest channel) instead.

        Raises :class:`~lungexp.utils.errors.ArgumentError` naming the parameter of a value that cannot work.
        """
        if isinstance(spacing_mm, str) or not isinstance(spacing_mm, Sequence) or not spacing_mm:
            raise ArgumentError(f"spacing_mm={spacing_mm!r} must be a list of voxel sizes in mm, "
                                "e.g. [1.0] or [1.0, 2.0] for two scales")
        spacing = tuple(check_number("spacing_mm", s, low=0, low_open=True, error=ArgumentError) for s in spacing_mm)
        check_number("pad_hu", pad_hu, error=ArgumentError)
        if size_mm is not None:
            size_mm = check_number("size_mm", size_mm, low=0, low_open=True, error=ArgumentError)
            size = int(round(size_mm / min(spacing)))
            if size < MIN_SIZE:
                raise ArgumentError(f"size_mm={size_mm:g} is {size} voxel(s) at {min(spacing):g} mm; "
                                    f"a patch needs at least {MIN_SIZE} per side")
        elif size is None:
            raise ArgumentError("size=None: give the patch size in voxels (size) or millimetres (size_mm)", "size_mm")
        return cls(size=check_int("size", size, minimum=MIN_SIZE, error=ArgumentError), spacing_mm=spacing, pad_hu=pad_hu)

    @property
    def channels(self) -> int:
        return len(self.spacing_mm)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.size, self.size, self.size)

    def offsets_mm(self, spacing: float) -> np.ndarray:
        """Positions of the patch voxels along one axis, relative to the centre voxel ``size // 2``."""
        return (np.arange(self.size) - self.size // 2) * spacing


def _axis_permutation(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For a signed-permutation direction: (index axis, sign) of each world axis x, y, z; else None."""
    rounded = np.round(direction)
    if not np.allclose(direction, rounded, atol=1e-6) or sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1]:
        return None
    index_axis = np.abs(rounded).argmax(axis=1)
    if len(set(index_axis.tolist())) != 3:
        return None
    return index_axis, rounded[np.arange(3), index_axis]


def _interpolation_matrix(positions: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Linear-interpolation weights ``(len(positions), block)`` over voxels ``start..start+block``.

    As ITK does, positions within half a voxel beyond the edge take the edge value and positions
    farther out get no weight, so with values shifted by the pad value they come out as the pad.
    """
    inside = (positions >= -0.5) & (positions <= length - 0.5)
    clamped = np.clip(positions, 0, length - 1)
    low = np.minimum(np.floor(clamped).astype(np.int64), max(length - 2, 0))
    start = int(low[inside].min()) if inside.any() else 0
    stop = int(min(low[inside].max() + 2, length)) if inside.any() else 1
    weights = np.zeros((len(positions), stop - start), dtype=np.float32)
    rows = np.flatnonzero(inside)
    fraction = (clamped - low)[inside]
    np.add.at(weights, (rows, low[inside] - start), 1.0 - fraction)
    if length > 1:
        np.add.at(weights, (rows, low[inside] + 1 - start), fraction)
    return weights, start


class PatchExtractor:
    """Samples :class:`PatchSpec` patches from one scan with trilinear interpolation.

    Args:
        scan: the scan.
        spec: patch geometry.
        use_sitk: resample with SimpleITK even where the separable path applies: the reference the
            separable path is tested and benchmarked against.
    """

    def __init__(self, scan: Scan, spec: PatchSpec, use_sitk: bool = False) -> None:
        self.scan = scan
        self.spec = spec
        self._permutation = None if use_sitk else _axis_permutation(scan.direction)
        self._image: sitk.Image | None = None if self._permutation else scan.to_sitk()

    def extract(self, center_xyz: Sequence[float]) -> np.ndarray:
        """Patch ``(channels, z, y, x)`` in HU (float32) centred on a world point in mm."""
        center = np.asarray(center_xyz, dtype=np.float64)
        out = np.empty(self.spec.shape, dtype=np.float32)
        permutation = self._permutation
        for channel, spacing in enumerate(self.spec.spacing_mm):
            out[channel] = (self._separable(center, spacing, permutation) if permutation
                            else self._resampled(center, spacing))
        return out

    def extract_many(self, centers_xyz: np.ndarray) -> np.ndarray:
        """Patches ``(N, channels, z, y, x)`` rounded to int16 HU, for compact caching."""
        out = np.empty((len(centers_xyz), *self.spec.shape), dtype=np.int16)
        for i, center in enumerate(np.asarray(centers_xyz, dtype=np.float64)):
            np.rint(self.extract(center), out=out[i], casting="unsafe")
        return out

    def _separable(self, center: np.ndarray, spacing: float, permutation: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        index_axis, sign = permutation
        scan = self.scan
        offsets = self.spec.offsets_mm(spacing)
        matrices, blocks = [], []
        for world_axis in (2, 1, 0):  # patch axes z, y, x
            axis = index_axis[world_axis]
            start_index = (center[world_axis] - scan.origin[world_axis]) * sign[world_axis] / scan.spacing[axis]
            positions = start_index + sign[world_axis] * offsets / scan.spacing[axis]
            weights, start = _interpolation_matrix(positions, scan.size_xyz[axis])
            matrices.append(weights)
            blocks.append((2 - axis, slice(start, start + weights.shape[1])))  # array axis of index axis
        slices = [slice(None)] * 3
        for array_axis, index_range in blocks:
            slices[array_axis] = index_range
        block = scan.array[tuple(slices)].astype(np.float32) - self.spec.pad_hu
        block = block.transpose([array_axis for array_axis, _ in blocks])  # to patch axis order z, y, x
        weights_z, weights_y, weights_x = matrices
        patch = np.tensordot(weights_z, np.matmul(weights_y, block @ weights_x.T), axes=(1, 0))
        return patch + self.spec.pad_hu

    def _resampled(self, center: np.ndarray, spacing: float) -> np.ndarray:
        resampler = sitk.ResampleImageFilter()
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(float(self.spec.pad_hu))
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        resampler.SetSize([self.spec.size] * 3)
        resampler.SetOutputSpacing([spacing] * 3)
        resampler.SetOutputOrigin(tuple(center + self.spec.offsets_mm(spacing)[0]))
        resampler.SetNumberOfThreads(1)  # parallelism comes from worker processes
        resampled = resampler.Execute(self._image)
        return sitk.GetArrayFromImage(resampled)
