"""Negative (non-nodule) sample points drawn from a scan's own lungs.

LUNA16 ships a candidates file whose non-nodule rows are the negatives; datasets with only nodule
annotations (LIDC-IDRI, in-house CT) have none. Here negatives are drawn inside a threshold-based
lung mask, away from every annotated nodule: a share on bright structures inside the lungs (vessels,
airway walls, pleura: the hard negatives a classifier confuses with nodules), the rest on parenchyma.

Points are world ``(x, y, z)`` mm and go through :class:`~lungexp.data.scans.scan.Scan`'s own world <-> voxel
mapping, so any spacing and direction is honoured.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungexp.data.scans.scan import Scan

# Air-like voxels lie below this: lung parenchyma (about -850 HU) and air; soft tissue, vessels and
# nodules above.
AIR_THRESHOLD_HU = -400
# Inside the lungs, vessels, airway walls and nodules are brighter than this; parenchyma is darker.
BRIGHT_HU = -500
# The mask is computed at about this in-plane spacing (mm): finer detail is not needed and costs time.
MASK_SPACING_MM = 1.4
# A second air component is the other lung only if it holds at least this fraction of the largest's
# voxels; smaller ones are bowel gas, air pockets in the table or under the arms.
SECOND_LUNG_MIN_FRACTION = 0.15
# Radius (mm) of the in-plane closing that pulls vessels and small nodules on the lung wall into the mask.
CLOSING_RADIUS_MM = 3.0
# Candidate voxels are checked against the nodules this many at a time, to bound memory.
_CHUNK_VOXELS = 65_536

# Neighbourhood linking voxels within one slice only (axis 0 is z): slice-wise operations in one call.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def lung_mask(scan: Scan) -> np.ndarray:
    """Boolean ``(z, y, x)`` mask of the lungs, by threshold and connected components.

    Steps, on a copy subsampled in-plane to about ``MASK_SPACING_MM`` (a 512x512 slice at 0.7 mm
    becomes 256x256), for speed:

    1. air-like voxels: HU < ``AIR_THRESHOLD_HU`` (-400);
    2. drop, slice by slice, the air connected to the slice border: the air around the body. The
       padding outside the reconstruction circle (about -2000 HU) is air-like too and fills the slice
       corners, so it goes with it, as does the air it encloses. Working per slice keeps a leak
       through the body in one slice from removing the lungs everywhere;
    3. keep the largest 3D component of the remaining (in-body) air, and the second largest if it is
       at least ``SECOND_LUNG_MIN_FRACTION`` of it: the two lungs, whether or not they touch;
       bowel gas and other small pockets go. The trachea and main bronchi stay where they connect
       to the lungs (a few percent of the volume at most);
    4. close each slice with a disc of ``CLOSING_RADIUS_MM``, so vessels and small nodules on the
       lung wall are inside, then fill each slice's holes (vessels, nodules inside the lungs);
    5. upsample to the scan's grid by nearest neighbour.
    """
    step_y, step_x = (max(1, round(MASK_SPACING_MM / s)) for s in scan.spacing[1::-1])
    hu = scan.array[:, ::step_y, ::step_x]
    air = hu < AIR_THRESHOLD_HU
    body_air = air & ~_connected_to_slice_border(air)
    lungs = _largest_components(body_air)
    mask_spacing = min(scan.spacing[1] * step_y, scan.spacing[0] * step_x)
    lungs = ndimage.binary_closing(lungs, structure=_in_plane_disc(round(CLOSING_RADIUS_MM / mask_spacing)))
    lungs = ndimage.binary_fill_holes(lungs, structure=_IN_PLANE)  # the holes each slice's lungs enclose
    return _nearest_upsample(lungs, scan.shape_zyx, step_y, step_x)


def sample_negatives(
    scan: Scan,
    nodules_xyz: np.ndarray,
    diameters_mm: np.ndarray,
    count: int,
    vessel_fraction: float = 0.5,
    margin_mm: float = 10.0,
    seed: int = 0,
) -> np.ndarray:
    """``(count, 3)`` world ``(x, y, z)`` mm negatives inside the lungs, away from every nodule.

    Each point is the centre of a distinct voxel of :func:`lung_mask`, farther than
    ``diameter / 2 + margin_mm`` from every nodule centre (``nodules_xyz``: ``(N, 3)`` world mm,
    possibly empty; ``diameters_mm``: ``(N,)``). The first ``round(count * vessel_fraction)`` points
    are on bright structures (HU > ``BRIGHT_HU``: vessels, the hard negatives), the rest on darker
    parenchyma anywhere in the mask. The same ``seed`` gives the same points.

    Raises:
        ValueError: the lungs hold too few eligible voxels; the message names the scan and says
            how many points could be placed.
    """
    nodules = np.asarray(nodules_xyz, dtype=np.float64).reshape(-1, 3)
    exclusion_radii = np.asarray(diameters_mm, dtype=np.float64).reshape(-1) / 2 + margin_mm
    if len(exclusion_radii) != len(nodules):
        raise ValueError(f"{scan.source}: {len(nodules)} nodule centres but {len(exclusion_radii)} diameters")
    if count < 0 or not 0.0 <= vessel_fraction <= 1.0:
        raise ValueError(f"{scan.source}: need count >= 0 and 0 <= vessel_fraction <= 1, "
                         f"got count={count}, vessel_fraction={vessel_fraction}")
    lungs = lung_mask(scan)
    bright = scan.array > BRIGHT_HU
    vessel_count = round(count * vessel_fraction)
    rng = np.random.default_rng(seed)
    on_vessels = _draw_far_from_nodules(scan, lungs & bright, vessel_count, nodules, exclusion_radii, rng)
    on_parenchyma = _draw_far_from_nodules(scan, lungs & ~bright, count - vessel_count, nodules,
                                           exclusion_radii, rng)
    if len(on_vessels) + len(on_parenchyma) < count:
        raise ValueError(
            f"{scan.source}: only {len(on_vessels) + len(on_parenchyma)} of {count} negatives could be placed: "
            f"{len(on_vessels)} of {vessel_count} on bright structures (HU > {BRIGHT_HU}) and "
            f"{len(on_parenchyma)} of {count - vessel_count} on parenchyma, inside the lung mask "
            f"({int(lungs.sum())} voxels) and farther than diameter/2 + {margin_mm} mm from "
            f"{len(nodules)} nodule(s); ask for fewer negatives or a smaller margin"
        )
    return np.concatenate([on_vessels, on_parenchyma])


def _connected_to_slice_border(region: np.ndarray) -> np.ndarray:
    """Voxels of ``region`` whose in-slice connected component touches the slice border.

    In-slice connectivity makes this a per-slice operation done in one labelling call.
    """
    labels, _ = ndimage.label(region, structure=_IN_PLANE)
    touching = np.zeros(labels.max() + 1, dtype=bool)
    for border in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        touching[border] = True
    touching[0] = False
    return touching[labels]


def _largest_components(region: np.ndarray) -> np.ndarray:
    """The largest 3D component of ``region``, plus the second largest if it is lung-sized too."""
    labels, count = ndimage.label(region)
    if count == 0:
        return np.zeros_like(region)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest, second = np.argsort(sizes)[::-1][:2]
    keep = np.zeros(count + 1, dtype=bool)
    keep[largest] = True
    keep[second] = count > 1 and sizes[second] >= SECOND_LUNG_MIN_FRACTION * sizes[largest]
    return keep[labels]


def _in_plane_disc(radius_voxels: int) -> np.ndarray:
    """A ``(1, 2r+1, 2r+1)`` disc structuring element (radius at least 1), for slice-wise morphology."""
    radius = max(1, radius_voxels)
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (y**2 + x**2 <= radius**2)[np.newaxis]


def _nearest_upsample(mask: np.ndarray, shape_zyx: tuple[int, int, int], step_y: int, step_x: int) -> np.ndarray:
    """``mask``, subsampled by ``[:, ::step_y, ::step_x]``, back on the full grid (nearest sample)."""
    rows = np.minimum((np.arange(shape_zyx[1]) + step_y // 2) // step_y, mask.shape[1] - 1)
    columns = np.minimum((np.arange(shape_zyx[2]) + step_x // 2) // step_x, mask.shape[2] - 1)
    return mask[:, rows[:, np.newaxis], columns[np.newaxis, :]]


def _draw_far_from_nodules(
    scan: Scan,
    pool: np.ndarray,
    count: int,
    nodules: np.ndarray,
    exclusion_radii: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """World centres of up to ``count`` distinct random voxels of ``pool`` outside every exclusion sphere.

    Fewer only when ``pool`` holds fewer eligible voxels. Voxels are visited in a random order and
    checked in chunks, so a few points from a large pool cost little.
    """
    candidates = rng.permutation(np.flatnonzero(pool))
    accepted = [np.empty((0, 3))]
    placed = 0
    for start in range(0, len(candidates), _CHUNK_VOXELS):
        if placed >= count:
            break
        voxels = np.column_stack(np.unravel_index(candidates[start : start + _CHUNK_VOXELS], pool.shape))
        world = scan.voxel_to_world(voxels)
        distances = np.linalg.norm(world[:, np.newaxis, :] - nodules[np.newaxis, :, :], axis=2)
        far = world[np.all(distances > exclusion_radii, axis=1)]
        accepted.append(far)
        placed += len(far)
    return np.concatenate(accepted)[:count]
