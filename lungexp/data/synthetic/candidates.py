"""Candidates as a detector would list them: one hit per nodule and false positives, mostly on vessels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungexp.data.synthetic.anatomy import Anatomy
from lungexp.data.synthetic.geometry import Geometry, unit
from lungexp.data.synthetic.nodules import NEGATIVE_EXCLUSION_MARGIN_MM, Nodule
from lungexp.data.synthetic.vessels import VesselSegment

MIN_CANDIDATE_VESSEL_RADIUS_MM = 1.0  # thinner vessels fade into partial volume and would not fool a detector
# Where negatives come from: vessels (bifurcations and segments), pleura/chest wall, plain parenchyma.
NEGATIVE_SHARES = (0.6, 0.2, 0.2)


def place_false_positives(
    rng: np.random.Generator,
    count: int,
    segments: list[VesselSegment],
    occupancy: np.ndarray,
    anatomy: Anatomy,
    clearance_mm: np.ndarray,
    nodules: list[Nodule],
    geometry: Geometry,
) -> np.ndarray:
    """False-positive-like candidates (offset mm): mostly on vessels, some on the pleura, some in plain
    parenchyma, all farther than radius + 3 mm from every nodule. A short pool passes its quota on."""
    pools = (
        _vessel_sites(rng, segments, occupancy, geometry.spacing_zyx),
        np.argwhere(_pleural_shell(anatomy)),
        np.argwhere(anatomy.lung & (occupancy < 0.05) & (clearance_mm >= 2.0)),
    )
    quotas = [round(share * count) for share in NEGATIVE_SHARES[:-1]]
    quotas.append(count - sum(quotas))
    chosen, shortfall = [], 0
    for pool, quota in zip(pools, quotas, strict=True):
        picked = _pick_away_from_nodules(rng, pool, quota + shortfall, nodules, geometry.spacing_zyx)
        chosen.append(picked)
        shortfall = quota + shortfall - len(picked)
    return np.concatenate(chosen)


def _vessel_sites(
    rng: np.random.Generator, segments: list[VesselSegment], occupancy: np.ndarray, spacing_zyx: np.ndarray
) -> np.ndarray:
    """Voxels on visible vessels: bifurcations and points along segments, snapped to the most
    vessel-filled neighbour so the candidate lands on the bright tube, not beside it."""
    points = []
    for segment in segments:
        if segment.radius_end < MIN_CANDIDATE_VESSEL_RADIUS_MM:
            continue
        points.append(segment.start + rng.uniform(0.2, 0.8) * (segment.end - segment.start))
        if segment.bifurcates:
            points.append(segment.end)
    sites = []
    for point in points:
        centre = np.rint(point / spacing_zyx).astype(int)
        low = np.maximum(centre - 1, 0)
        neighbourhood = occupancy[tuple(slice(lo, c + 2) for lo, c in zip(low, centre, strict=True))]
        best = np.array(np.unravel_index(np.argmax(neighbourhood), neighbourhood.shape)) + low
        if occupancy[tuple(best)] >= 0.75:
            sites.append(best)
    return np.unique(np.array(sites, dtype=int).reshape(-1, 3), axis=0)


def _pleural_shell(anatomy: Anatomy) -> np.ndarray:
    """Chest-wall and mediastinal voxels touching the lung in-plane."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(anatomy.lung, in_plane) & ~anatomy.lung & anatomy.body


def _pick_away_from_nodules(
    rng: np.random.Generator, voxels: np.ndarray, wanted: int, nodules: list[Nodule], spacing_zyx: np.ndarray
) -> np.ndarray:
    """Up to ``wanted`` random voxels, jittered < 0.25 voxel, outside every nodule's exclusion zone."""
    offsets = voxels[rng.permutation(len(voxels))] * spacing_zyx
    offsets = offsets + rng.uniform(-0.25, 0.25, size=offsets.shape) * spacing_zyx
    keep = np.ones(len(offsets), dtype=bool)
    for nodule in nodules:
        keep &= (
            np.linalg.norm(offsets - nodule.centre, axis=1)
            > nodule.diameter_mm / 2.0 + NEGATIVE_EXCLUSION_MARGIN_MM
        )
    return offsets[keep][:wanted].reshape(-1, 3)


def scan_candidate_rows(
    rng: np.random.Generator,
    seriesuid: str,
    nodules: list[Nodule],
    negatives: np.ndarray,
    geometry: Geometry,
) -> list[dict]:
    """One class-1 candidate per nodule, off-centre by < radius/2 as a detector's hit would be, and the
    negatives, in shuffled order like the real candidate list."""
    positives = [
        nodule.centre + unit(rng.normal(size=3)) * rng.uniform(0.0, 0.4) * nodule.diameter_mm / 2.0
        for nodule in nodules
    ]
    labelled = [(p, 1) for p in positives] + [(n, 0) for n in negatives]
    rows = []
    for shuffled in rng.permutation(len(labelled)):
        offset, label = labelled[shuffled]
        world = geometry.to_world(offset)
        rows.append(
            {
                "seriesuid": seriesuid,
                "coordX": world[0],
                "coordY": world[1],
                "coordZ": world[2],
                "class": label,
            }
        )
    return rows
