"""Nodules: labels, placement in the lungs, size, density and shape by class, the readers' ratings, and
their CSV rows.

Malignancy is learnable but not trivial: malignant-looking nodules are larger, less dense, more
often part-solid, lobulated and spiculated, but a share of nodules looks like the other class. The
ratings of texture, spiculation and calcification follow what the nodule looks like, with some
reader noise, so multiclass and ordinal targets have something in the image to learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungexp.data.synthetic.geometry import Geometry, capsule_fraction, local_grid, unit

MIN_NODULE_DIAMETER_MM = 3.0  # LUNA16 annotates nodules of 3 mm and more
MAX_NODULE_DIAMETER_MM = 30.0
MALIGNANT_FRACTION = 0.4
GOLDEN_RATIO_FRACTION = (np.sqrt(5.0) - 1.0) / 2.0  # steps that spread evenly over [0, 1)
# Share of nodules that look like the other class, so that malignancy is learnable but not trivial.
MISLEADING_LOOK_FRACTION = 0.15
# Nodules keep this far (mm) beyond their radius from each other, and negative candidates from them.
NEGATIVE_EXCLUSION_MARGIN_MM = 3.0
# Share of texture and spiculation ratings one level below, and as many one above, what the nodule shows.
READER_NOISE = 0.1
# LIDC calcification codes: 3 = solid (the generated calcified nodules are dense throughout), 6 = absent.
SOLID_CALCIFICATION, NO_CALCIFICATION = 3, 6


@dataclass(frozen=True)
class _Appearance:
    kind: str  # "solid", "part_solid" or "calcified"
    solid_hu: float
    ground_glass_hu: float
    core_fraction: float  # solid-core size relative to the whole nodule (1 unless part-solid)
    axes: np.ndarray  # relative ellipsoid semi-axes, the largest is 1
    rotation: np.ndarray  # 3x3 orthonormal, nodule frame -> (z, y, x)
    lobulation: float  # relative amplitude of the surface modulation
    lobe_waves: np.ndarray  # (k, 3) spatial frequencies of the modulation on the unit sphere
    lobe_phases: np.ndarray  # (k,)
    lobe_weights: np.ndarray  # (k,), sum 1, so the modulation stays within [-1, 1]
    spicule_directions: np.ndarray  # (n, 3) unit vectors
    spicule_lengths: np.ndarray  # (n,) mm beyond the nominal radius


@dataclass(frozen=True)
class Nodule:
    centre: np.ndarray  # offset mm (z, y, x)
    diameter_mm: float  # largest extent of the nodule body, ground-glass halo included
    malignant: bool
    ratings: tuple[int, ...]
    appearance: _Appearance


def malignancy_labels(seed: int, first: int, count: int) -> list[bool]:
    """Labels of nodules ``first .. first + count - 1`` of the dataset.

    A golden-ratio sequence from a seed-dependent start instead of coin flips: any run of consecutive
    nodules (a scan, a few scans, the dataset) is malignant in close to ``MALIGNANT_FRACTION`` of cases,
    so even a 10-scan dataset is balanced; which nodules are malignant still changes with the seed.
    """
    start = np.random.default_rng(seed).random()
    return [
        bool((start + n * GOLDEN_RATIO_FRACTION) % 1.0 < MALIGNANT_FRACTION)
        for n in range(first, first + count)
    ]


def place_nodules(
    rng: np.random.Generator,
    labels: list[bool],
    lung: np.ndarray,
    clearance_mm: np.ndarray,
    geometry: Geometry,
) -> list[Nodule]:
    """Centres on lung voxels with room for the nodule, 3 mm apart; sizes shrink where lungs are small.

    The centre is jittered < 0.2 voxel from a voxel centre, so it always rounds to a voxel inside it.
    """
    voxels = np.argwhere(lung)
    sites = voxels * geometry.spacing_zyx
    site_clearance = clearance_mm[tuple(voxels.T)]
    nodules: list[Nodule] = []
    for malignant in labels:
        looks_malignant = malignant != bool(rng.random() < MISLEADING_LOOK_FRACTION)
        diameter = _draw_diameter(rng, looks_malignant)
        allowed = _nodule_sites(diameter, sites, site_clearance, nodules)
        while not allowed.any():
            if diameter <= MIN_NODULE_DIAMETER_MM:
                raise RuntimeError(
                    "no room left for a nodule: use a larger shape_zyx or fewer nodules_per_scan"
                )
            diameter = max(MIN_NODULE_DIAMETER_MM, 0.8 * diameter)
            allowed = _nodule_sites(diameter, sites, site_clearance, nodules)
        centre = sites[rng.choice(np.flatnonzero(allowed))] + rng.uniform(-0.2, 0.2, 3) * geometry.spacing_zyx
        nodules.append(
            Nodule(
                centre=centre,
                diameter_mm=diameter,
                malignant=malignant,
                ratings=_draw_ratings(rng, malignant),
                appearance=_draw_appearance(rng, looks_malignant, diameter),
            )
        )
    return nodules


def _draw_diameter(rng: np.random.Generator, looks_malignant: bool) -> float:
    """Log-normal sizes: malignant-looking nodules are typically about twice as large."""
    median = 13.0 if looks_malignant else 6.0
    return float(np.clip(rng.lognormal(np.log(median), 0.45), MIN_NODULE_DIAMETER_MM, MAX_NODULE_DIAMETER_MM))


def _draw_ratings(rng: np.random.Generator, malignant: bool) -> tuple[int, ...]:
    """1-4 LIDC reader scores (1-5) whose mean is > 3 exactly when the nodule is malignant."""
    readers = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.2, 0.25, 0.4]))
    if malignant:
        ratings = rng.choice([3, 4, 5], size=readers, p=[0.25, 0.45, 0.3])
        if ratings.mean() <= 3:  # all readers said "indeterminate": make one lean malignant
            ratings[0] = 4
    else:
        ratings = rng.choice([1, 2, 3], size=readers, p=[0.3, 0.45, 0.25])
    return tuple(int(r) for r in ratings)


def _draw_appearance(rng: np.random.Generator, looks_malignant: bool, diameter_mm: float) -> _Appearance:
    """Malignant-looking: less dense, more often part-solid, lobulated, elongated and spiculated.
    Benign-looking: smooth, round, denser, sometimes calcified. Small nodules look round either way."""
    irregularity = min(1.0, diameter_mm / 10.0)
    can_be_part_solid = diameter_mm >= 8.0
    if looks_malignant:
        kind = "part_solid" if can_be_part_solid and rng.random() < 0.4 else "solid"
        solid_hu = rng.uniform(-10.0, 60.0)
        lobulation = rng.uniform(0.18, 0.4) * irregularity
        flattest_axis = 1.0 - 0.4 * irregularity
        spicule_count = int(rng.integers(3, 10)) if rng.random() < 0.6 else 0
    else:
        roll = rng.random()
        kind = "calcified" if roll < 0.2 else ("part_solid" if roll < 0.25 and can_be_part_solid else "solid")
        solid_hu = rng.uniform(200.0, 400.0) if kind == "calcified" else rng.uniform(30.0, 110.0)
        lobulation = rng.uniform(0.0, 0.08) * irregularity
        flattest_axis = 1.0 - 0.2 * irregularity
        spicule_count = 0
    axes = np.sort(rng.uniform(flattest_axis, 1.0, size=3))[::-1]
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    body_radius = diameter_mm / 2.0 / (1.0 + lobulation)
    core_fraction = max(rng.uniform(0.35, 0.6), min(1.0, 2.0 / body_radius)) if kind == "part_solid" else 1.0
    lobe_weights = rng.uniform(0.5, 1.0, size=4)
    return _Appearance(
        kind=kind,
        solid_hu=float(solid_hu),
        ground_glass_hu=float(rng.uniform(-600.0, -400.0)),
        core_fraction=float(core_fraction),
        axes=axes / axes[0],
        rotation=q * np.sign(np.diag(r)),
        lobulation=float(lobulation),
        lobe_waves=np.array([unit(v) for v in rng.normal(size=(4, 3))]) * rng.uniform(2.0, 5.0, size=(4, 1)),
        lobe_phases=rng.uniform(0.0, 2.0 * np.pi, size=4),
        lobe_weights=lobe_weights / lobe_weights.sum(),
        spicule_directions=np.array([unit(v) for v in rng.normal(size=(spicule_count, 3))]).reshape(-1, 3),
        spicule_lengths=np.minimum(rng.uniform(0.3, 0.8, size=spicule_count) * diameter_mm / 2.0, 8.0),
    )


def reader_ratings(rng: np.random.Generator, nodule: Nodule) -> dict[str, int]:
    """The LIDC ratings of ``nodule`` under lidc-crops' column names (lungexp.data.names.DEMO_RATING_COLUMNS):

    * ``malignancy``: the readers' mean rating rounded half up (4-5 always malignant, 1-2 benign, 3 either);
    * ``texture`` (1 ground glass … 5 solid): 5 for solid and calcified nodules; a part-solid one by its solid
      core's share of the radius: 2 below 1/2 (under 1/8 of the volume solid), 3 below 0.6, else 4;
    * ``spiculation`` (1 none … 5 marked): 1, or 2 when lobulated; with spicules 3 (3-5 of them), 4 (6-8), 5;
    * ``calcification`` (LIDC codes): 3 (solid) for calcified nodules, 6 (absent) for the others.

    Texture and spiculation are one level off in :data:`READER_NOISE` of cases each way (within 1-5). ``rng``
    is drawn twice per nodule, whatever it shows."""
    look = nodule.appearance
    if look.kind == "part_solid":
        texture = 2 if look.core_fraction < 0.5 else 3 if look.core_fraction < 0.6 else 4
    else:
        texture = 5
    spicules = len(look.spicule_lengths)
    spiculation = (2 if look.lobulation > 0.15 else 1) if spicules == 0 else min(5, 2 + spicules // 3)
    texture_noise, spiculation_noise = rng.choice([-1, 0, 1], size=2, p=[READER_NOISE, 1 - 2 * READER_NOISE,
                                                                         READER_NOISE])
    return {
        "malignancy": int(np.floor(np.mean(nodule.ratings) + 0.5)),
        "texture": int(np.clip(texture + texture_noise, 1, 5)),
        "spiculation": int(np.clip(spiculation + spiculation_noise, 1, 5)),
        "calcification": SOLID_CALCIFICATION if look.kind == "calcified" else NO_CALCIFICATION,
    }


def _nodule_sites(
    diameter: float, sites: np.ndarray, clearance: np.ndarray, placed: list[Nodule]
) -> np.ndarray:
    radius = diameter / 2.0
    allowed = clearance >= 0.8 * radius
    for other in placed:
        gap = radius + other.diameter_mm / 2.0 + NEGATIVE_EXCLUSION_MARGIN_MM
        allowed &= np.linalg.norm(sites - other.centre, axis=1) > gap
    return allowed


def render_nodule(hu: np.ndarray, nodule: Nodule, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Blend a lobulated ellipsoid (ground-glass halo + solid core if part-solid) and its spicules into
    ``hu``; returns the (z, y, x) offset bounding box of the nodule body's voxels (outer voxel faces)."""
    look = nodule.appearance
    radius = nodule.diameter_mm / 2.0
    edge = geometry.in_plane_spacing
    reach = radius + look.spicule_lengths.max(initial=0.0) + 2.0 * float(geometry.spacing_zyx.max())
    region, grid = local_grid(nodule.centre - reach, nodule.centre + reach, geometry)
    relative = [axis - c for axis, c in zip(grid, nodule.centre, strict=True)]
    local = [sum(relative[j] * look.rotation[j, i] for j in range(3)) for i in range(3)]
    distance = np.sqrt(sum(u**2 for u in local)) + 1e-6
    scaled = np.sqrt(sum((u / a) ** 2 for u, a in zip(local, look.axes, strict=True)))
    modulation = sum(
        w * np.cos(sum(u * k for u, k in zip(local, wave, strict=True)) / distance + phase)
        for wave, phase, w in zip(look.lobe_waves, look.lobe_phases, look.lobe_weights, strict=True)
    )
    surface = radius / (1.0 + look.lobulation) * (1.0 + look.lobulation * modulation)
    body = np.clip(0.5 - (scaled - surface) / edge, 0.0, 1.0)
    view = hu[region]
    if look.kind == "part_solid":
        view += body * (np.maximum(view, look.ground_glass_hu) - view)  # vessels stay visible through GGO
        solid = np.clip(0.5 - (scaled - look.core_fraction * surface) / edge, 0.0, 1.0)
    else:
        solid = body
    for direction, length in zip(look.spicule_directions, look.spicule_lengths, strict=True):
        tip = nodule.centre + direction * (radius + length)
        solid = np.maximum(solid, capsule_fraction(grid, nodule.centre, tip, 0.6, 0.2, edge))
    view += solid * (look.solid_hu - view)
    inside = np.argwhere(body >= 0.5) + [s.start for s in region]
    low_face = (inside.min(axis=0) - 0.5) * geometry.spacing_zyx
    high_face = (inside.max(axis=0) + 0.5) * geometry.spacing_zyx
    return low_face, high_face


def malignancy_row(
    seriesuid: str, nodule: Nodule, bbox: tuple[np.ndarray, np.ndarray], geometry: Geometry
) -> dict:
    centre = geometry.to_world(nodule.centre)
    low, high = (geometry.to_world(corner) for corner in bbox)
    return {
        "seriesuid": seriesuid,
        "coordX": centre[0],
        "coordY": centre[1],
        "coordZ": centre[2],
        "diameter_mm": nodule.diameter_mm,
        "mal_bool": nodule.malignant,
        "mal_details": str(list(nodule.ratings)),
        "bboxLowX": low[0],
        "bboxLowY": low[1],
        "bboxLowZ": low[2],
        "bboxHighX": high[0],
        "bboxHighY": high[1],
        "bboxHighZ": high[2],
        "len_mal_details": len(nodule.ratings),
    }
