"""Pulmonary vessels: one tree per artery/vein trunk, grown from the hilum by binary branching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungexp.data.synthetic.anatomy import Anatomy
from lungexp.data.synthetic.geometry import Geometry, capsule_fraction, local_grid, unit

MIN_VESSEL_RADIUS_MM = 0.5
# Blood without contrast agent; each scan draws its value from this range.
UNENHANCED_BLOOD_HU = (25.0, 55.0)


@dataclass(frozen=True)
class VesselSegment:
    start: np.ndarray  # offset mm (z, y, x)
    end: np.ndarray
    radius_start: float
    radius_end: float
    bifurcates: bool


def grow_vessels(rng: np.random.Generator, anatomy: Anatomy, geometry: Geometry) -> list[VesselSegment]:
    columns = np.arange(geometry.shape_zyx[2])[None, None, :]
    segments = []
    for side in (-1.0, 1.0):
        side_lung = anatomy.lung & (
            (columns < anatomy.midline_x) if side < 0 else (columns >= anatomy.midline_x)
        )
        segments += _grow_tree(rng, side_lung, side, geometry.spacing_zyx)
    return segments


def _hilum(lung: np.ndarray, side: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """The medial lung voxel at mid-height, where the vessels enter (offset mm)."""
    nz = lung.shape[0]
    mid_height = np.exp(-((((np.arange(nz) / (nz - 1)) - 0.55) / 0.15) ** 2))
    slice_index = int(np.argmax(lung.sum(axis=(1, 2)) * mid_height))
    points = np.argwhere(lung[slice_index])
    medial_x = points[:, 1].max() if side < 0 else points[:, 1].min()
    target = np.array([points[:, 0].mean(), medial_x])
    nearest = points[np.argmin(((points - target) ** 2).sum(axis=1))]
    return np.array([slice_index, *nearest], dtype=np.float64) * spacing_zyx


def _grow_tree(
    rng: np.random.Generator, lung: np.ndarray, side: float, spacing_zyx: np.ndarray
) -> list[VesselSegment]:
    """Branch until the radius drops below 0.5 mm or the vessel reaches the pleura.

    Segment length scales with the lung's extent along the branch direction, so trees fill lungs of
    any aspect ratio; children are ~0.77x thinner (Murray's law) and bend outward from the hilum.
    """
    voxels = np.argwhere(lung)
    half_extent = (voxels.max(axis=0) - voxels.min(axis=0) + 1) * spacing_zyx / 2.0
    hilum = _hilum(lung, side, spacing_zyx)
    trunks = (
        (1.0, -0.2, 0.3 * side),  # upper lobe
        (0.6, 0.4, 0.5 * side),
        (-1.0, 0.2, 0.3 * side),  # lower lobe
        (-0.6, 0.6, 0.4 * side),
        (0.1, -0.7, side),  # anterior / middle lobe
        (-0.1, 0.7, side),  # posterior
    )
    trunk_radius = min(3.0, 0.16 * float(half_extent[1:].min()))  # thinner trees in small lungs
    stack = [
        (hilum, unit(np.array(d) + rng.normal(0.0, 0.15, 3)), trunk_radius * rng.uniform(0.75, 1.0), 0)
        for d in trunks
    ]
    segments = []
    while stack:
        start, direction, radius, generation = stack.pop()
        extent = 1.0 / np.sqrt(np.sum((direction / half_extent) ** 2))
        wanted = rng.uniform(0.2, 0.35) * extent * 0.88**generation
        length, reached_pleura = _length_inside(start, direction, wanted, lung, spacing_zyx)
        if length < 1.0:
            continue
        end = start + direction * length
        radius_end = radius * 0.93
        child_radii = radius_end * rng.uniform(0.75, 0.9, size=2)
        bifurcates = not reached_pleura and child_radii.min() >= MIN_VESSEL_RADIUS_MM
        segments.append(VesselSegment(start, end, radius, radius_end, bifurcates))
        if bifurcates:
            for child_direction, child_radius in zip(
                _branch_directions(rng, direction, unit(end - hilum)), child_radii, strict=True
            ):
                stack.append((end, child_direction, child_radius, generation + 1))
    return segments


def _length_inside(
    start: np.ndarray, direction: np.ndarray, length: float, lung: np.ndarray, spacing_zyx: np.ndarray
) -> tuple[float, bool]:
    """How far the vessel can run inside the lung (and whether it was stopped by the pleura)."""
    step = 0.5 * float(spacing_zyx.min())
    distances = np.arange(step, length + step, step)
    indices = np.rint((start + distances[:, None] * direction) / spacing_zyx).astype(int)
    in_volume = np.all((indices >= 0) & (indices < lung.shape), axis=1)
    inside = in_volume.copy()
    inside[in_volume] = lung[tuple(indices[in_volume].T)]
    if inside.all():
        return length, False
    return float(distances[np.argmin(inside)] - step), True


def _branch_directions(
    rng: np.random.Generator, direction: np.ndarray, outward: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two children rotated to opposite sides in a random plane, pulled outward from the hilum."""
    axis = unit(np.cross(direction, rng.normal(size=3)))
    children = []
    for angle in (np.deg2rad(rng.uniform(15.0, 40.0)), -np.deg2rad(rng.uniform(20.0, 45.0))):
        rotated = direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
        children.append(unit(rotated + 0.3 * outward))
    return children[0], children[1]


def render_vessels(segments: list[VesselSegment], geometry: Geometry) -> np.ndarray:
    """Vessel occupancy in [0, 1]; each capsule is drawn only in its own bounding box."""
    occupancy = np.zeros(geometry.shape_zyx, dtype=np.float32)
    edge = geometry.in_plane_spacing
    for segment in segments:
        reach = segment.radius_start + edge
        low = np.minimum(segment.start, segment.end) - reach
        high = np.maximum(segment.start, segment.end) + reach
        region, grid = local_grid(low, high, geometry)
        fraction = capsule_fraction(
            grid, segment.start, segment.end, segment.radius_start, segment.radius_end, edge
        )
        np.maximum(occupancy[region], fraction, out=occupancy[region])
    return occupancy
