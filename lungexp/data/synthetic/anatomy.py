"""The chest: body wall, ribs, spine, mediastinum and two lungs, in Hounsfield units.

Shapes are fractions of the array size, so that small test volumes still look like a chest;
vessels and nodules are drawn in millimetres (:mod:`.vessels`, :mod:`.nodules`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungexp.data.scans.hounsfield import AIR_HU
from lungexp.data.synthetic.geometry import Geometry

# Tissue HU: fixed values, or (low, high) ranges that each scan draws from.
SKIN_HU = 30.0
FAT_HU = -100.0
MUSCLE_HU = 50.0
SOFT_TISSUE_HU = 40.0  # mediastinum and the thoracic cavity around the lungs
MEDIASTINAL_FAT_HU = FAT_HU + 10.0
LUNG_HU = -870.0
RIB_HU = (450.0, 700.0)
CANCELLOUS_BONE_HU = (220.0, 320.0)
CORTICAL_BONE_HU = (650.0, 900.0)
VERTEBRAL_ARCH_HU = (500.0, 750.0)
DISC_HU = 80.0
CORD_AND_CSF_HU = 20.0


@dataclass(frozen=True)
class _Torso:
    """Broadcastable coordinates (voxels; t = 0 at the lung base, 1 at the apex) and body outline."""

    t: np.ndarray  # (nz, 1, 1)
    z_mm: np.ndarray  # (nz, 1, 1)
    y: np.ndarray  # (1, ny, 1)
    x: np.ndarray  # (1, 1, nx)
    centre_x: float
    centre_y: float
    cavity_x: np.ndarray  # semi-axes of the thoracic cavity inside the chest wall, per slice
    cavity_y: np.ndarray
    muscle: float  # chest-wall muscle thickness (voxels), where the ribs sit


@dataclass
class Anatomy:
    hu: np.ndarray  # float32 (z, y, x), drawn into by vessels and nodules
    body: np.ndarray
    lung: np.ndarray
    midline_x: float  # column separating the right lung (smaller x: LPS world) from the left


def build_anatomy(rng: np.random.Generator, geometry: Geometry) -> Anatomy:
    """Air, skin, subcutaneous fat, chest-wall muscle with ribs, spine, mediastinum and two lungs."""
    nz, ny, nx = geometry.shape_zyx
    t = np.linspace(0.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    widest_mid_chest = 1.0 + 0.04 * np.sin(np.pi * t)
    body_x = nx * rng.uniform(0.40, 0.46) * widest_mid_chest
    body_y = ny * rng.uniform(0.30, 0.36) * widest_mid_chest
    typical_half_width = 0.43 * nx  # wall layers are fractions of it, so they scale with the array
    skin = 0.02 * typical_half_width
    fat = rng.uniform(0.05, 0.11) * typical_half_width
    muscle = rng.uniform(0.06, 0.10) * typical_half_width
    torso = _Torso(
        t=t,
        z_mm=t * (nz - 1) * geometry.spacing_zyx[0],
        y=y,
        x=x,
        centre_x=nx * rng.uniform(0.48, 0.52),
        centre_y=ny * rng.uniform(0.47, 0.53),
        cavity_x=body_x - skin - fat - muscle,
        cavity_y=body_y - skin - fat - muscle,
        muscle=muscle,
    )
    cx, cy = torso.centre_x, torso.centre_y
    body = _ellipse(torso, cx, cy, body_x, body_y)
    inside_fat = _ellipse(torso, cx, cy, body_x - skin - fat, body_y - skin - fat)
    hu = np.full(geometry.shape_zyx, AIR_HU, dtype=np.float32)
    hu[body] = SKIN_HU
    hu[_ellipse(torso, cx, cy, body_x - skin, body_y - skin)] = FAT_HU + rng.uniform(-10.0, 15.0)
    hu[inside_fat] = MUSCLE_HU  # chest-wall muscle
    hu[_ellipse(torso, cx, cy, torso.cavity_x, torso.cavity_y)] = SOFT_TISSUE_HU
    _add_ribs(rng, hu, torso)
    spine_keep_out = _add_spine(rng, hu, torso, inside_fat)
    mediastinum = _add_mediastinum(rng, hu, torso)
    trachea = (torso.t > rng.uniform(0.55, 0.7)) & _ellipse(
        torso, cx, cy + 0.3 * torso.cavity_y, 0.07 * torso.cavity_x, 0.07 * torso.cavity_x
    )
    lung = _lung_mask(rng, torso) & ~(spine_keep_out | mediastinum | trachea)
    parenchyma = LUNG_HU + 35.0 * (torso.y - cy) / torso.cavity_y + 12.0 * _smooth_noise(rng, hu.shape)
    hu[lung] = parenchyma[lung]  # posterior (larger y) is denser: the dependent-lung gradient
    hu[trachea] = AIR_HU
    return Anatomy(hu=hu, body=body, lung=lung, midline_x=cx)


def _ellipse(
    torso: _Torso,
    centre_x: float | np.ndarray,
    centre_y: float | np.ndarray,
    half_x: float | np.ndarray,
    half_y: float | np.ndarray,
) -> np.ndarray:
    """Axial ellipse mask; per-slice parameters of shape (nz, 1, 1) make it vary along z."""
    return ((torso.x - centre_x) / half_x) ** 2 + ((torso.y - centre_y) / half_y) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Unit-variance low-frequency noise: a coarse random grid upsampled linearly (cheap and smooth)."""
    coarse_shape = (max(2, shape[0] // 8), max(2, shape[1] // 12), max(2, shape[2] // 12))
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.zoom(coarse, np.divide(shape, coarse_shape), order=1, mode="nearest")
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _add_ribs(rng: np.random.Generator, hu: np.ndarray, torso: _Torso) -> None:
    """Oblique rib cross-sections in the chest wall: each rib appears in a band of slices."""
    period_mm = rng.uniform(18.0, 26.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    rib_hu = rng.uniform(*RIB_HU)
    ring_x, ring_y = torso.cavity_x + 0.5 * torso.muscle, torso.cavity_y + 0.5 * torso.muscle
    radius = 0.4 * torso.muscle
    for angle in np.deg2rad(np.concatenate([np.linspace(110, 250, 6), np.linspace(-70, 70, 6)])):
        in_slice = np.sin(2.0 * np.pi * torso.z_mm / period_mm + phase + 1.5 * np.sin(angle)) > 0.1
        centre_x = torso.centre_x + ring_x * np.cos(angle)
        centre_y = torso.centre_y + ring_y * np.sin(angle)
        hu[in_slice & _ellipse(torso, centre_x, centre_y, radius, radius)] = rib_hu


def _add_spine(rng: np.random.Generator, hu: np.ndarray, torso: _Torso, inside_fat: np.ndarray) -> np.ndarray:
    """Vertebral body (cortex, cancellous bone, discs), canal and spinous process at the posterior midline.

    Returns the region the lungs must stay out of.
    """
    cx = torso.centre_x
    radius = 0.22 * torso.cavity_y
    body_y = torso.centre_y + torso.cavity_y - 0.5 * radius
    distance = np.sqrt((torso.x - cx) ** 2 + (torso.y - body_y) ** 2)
    vertebra = distance <= radius
    disc = (torso.z_mm + rng.uniform(0.0, 25.0)) % rng.uniform(20.0, 28.0) < 5.0
    hu[vertebra] = rng.uniform(*CANCELLOUS_BONE_HU)
    hu[vertebra & (distance >= 0.8 * radius)] = rng.uniform(*CORTICAL_BONE_HU)
    hu[vertebra & disc] = DISC_HU
    canal_radius = 0.45 * radius
    canal_y = body_y + radius + canal_radius
    canal_distance = np.sqrt((torso.x - cx) ** 2 + (torso.y - canal_y) ** 2)
    arch = (
        (canal_distance > canal_radius)
        & (canal_distance <= canal_radius + 0.3 * radius)
        & (torso.y >= canal_y)
    )
    spinous = _ellipse(torso, cx, canal_y + canal_radius + 0.8 * radius, 0.25 * radius, 0.8 * radius)
    hu[(arch | spinous) & inside_fat] = rng.uniform(*VERTEBRAL_ARCH_HU)
    hu[(canal_distance <= canal_radius) & inside_fat] = CORD_AND_CSF_HU
    return _ellipse(torso, cx, body_y + radius, 1.4 * radius, 2.2 * radius)


def _add_mediastinum(rng: np.random.Generator, hu: np.ndarray, torso: _Torso) -> np.ndarray:
    """Heart and great vessels between the lungs (widest low in the chest, bulging to the patient's left,
    i.e. larger x), with anterior mediastinal fat. Returns the mediastinum mask."""
    heart = np.exp(-(((torso.t - rng.uniform(0.25, 0.4)) / 0.22) ** 2))
    mediastinum = _ellipse(
        torso,
        torso.centre_x + 0.12 * torso.cavity_x * heart,
        torso.centre_y - 0.1 * torso.cavity_y,
        torso.cavity_x * (0.14 + 0.18 * heart),
        0.8 * torso.cavity_y,
    )
    anterior_fat = _ellipse(
        torso,
        torso.centre_x,
        torso.centre_y - 0.6 * torso.cavity_y,
        0.1 * torso.cavity_x,
        0.2 * torso.cavity_y,
    )
    hu[mediastinum & anterior_fat] = MEDIASTINAL_FAT_HU
    return mediastinum


def _lung_mask(rng: np.random.Generator, torso: _Torso) -> np.ndarray:
    """Two rounded-rectangle lungs with wavy outlines, narrowing to the apex and sitting on domed
    hemidiaphragms (the right one higher, over the liver), kept inside the pleura."""
    boundary_noise = _smooth_noise(rng, (torso.t.shape[0], torso.y.shape[1], torso.x.shape[2]))
    apex_taper = np.clip((rng.uniform(0.92, 0.98) - torso.t) / 0.3, 0.0, 1.0) ** 0.6
    lungs = np.zeros(boundary_noise.shape, dtype=bool)
    for side in (-1.0, 1.0):  # -1: patient right (smaller x), +1: patient left
        half_x = 0.47 * torso.cavity_x * apex_taper + 1e-3
        half_y = 0.88 * torso.cavity_y * np.sqrt(apex_taper) + 1e-3
        level = (np.abs(torso.x - torso.centre_x - side * 0.5 * torso.cavity_x) / half_x) ** 2.6
        level = level + (np.abs(torso.y - torso.centre_y - 0.03 * torso.cavity_y) / half_y) ** 2.6
        level = level * (1.0 + 0.12 * boundary_noise)
        dome = rng.uniform(0.12, 0.22) * (1.25 if side < 0 else 1.0)
        lungs |= (level < 1.0) & (torso.t > rng.uniform(0.02, 0.06) + dome * (1.0 - level))
    pleura = max(1.0, 0.02 * float(torso.cavity_x.min()))
    return lungs & _ellipse(
        torso, torso.centre_x, torso.centre_y, torso.cavity_x - pleura, torso.cavity_y - pleura
    )


def lung_clearance_mm(lung: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Distance (mm) from each lung voxel to the nearest non-lung voxel; computed on the lungs' bounding
    box (plus a background margin), which is several times cheaper than on the whole volume."""
    occupied = np.argwhere(lung)
    low = np.maximum(occupied.min(axis=0) - 1, 0)
    high = occupied.max(axis=0) + 2
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    clearance = np.zeros(lung.shape, dtype=np.float32)
    clearance[box] = ndimage.distance_transform_edt(np.pad(lung[box], 1), sampling=spacing_zyx)[
        1:-1, 1:-1, 1:-1
    ]
    return clearance
