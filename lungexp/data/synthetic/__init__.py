"""Synthetic chest CT written in the LUNA16 on-disk layout.

Why this exists: the real LUNA16 release (~120 GB) cannot live in CI or on a laptop, yet every stage of
the pipeline (MetaImage reading, world/voxel conversion, patch extraction, training, evaluation against
``candidates_V2.csv``) should run end to end on a fresh machine, offline. The generator therefore copies
the *format* of LUNA16 exactly (``subset*/<seriesuid>.mhd/.raw``, CSV names, columns and coordinate
conventions) and imitates the *content* closely enough that a model has to learn something real: a
chest with lungs and branching vessels, nodules of varied size, shape and density, and negative
candidates that mostly sit on vessels and pleura, like the real candidate detector's false positives.

One concept per module, in the order a scan is made:

* :mod:`.manifest`: the parameters and the manifest that mark a complete dataset;
* :mod:`.geometry`: the scan grid, millimetre offsets -> world coordinates, drawing regions;
* :mod:`.anatomy`: body wall, ribs, spine, mediastinum, lungs;
* :mod:`.vessels`: branching vessel trees;
* :mod:`.nodules`: nodule labels, placement, appearance and annotation rows;
* :mod:`.candidates`: the candidate list (one hit per nodule, false positives on vessels and pleura);
* :mod:`.acquisition`: series UID, scanner noise and blur;
* :mod:`.generator`: :func:`generate_luna16_dataset`, which runs them per scan and writes the files.

Coordinate conventions (the source of most LUNA16 bugs): numpy arrays from SimpleITK are indexed
``(z, y, x)``; world coordinates are millimetres in ``(x, y, z)`` order (identity direction, as in
LUNA16). Internally, positions are millimetre offsets ``(z, y, x)`` from the first voxel; they
become world coordinates only through :meth:`~.geometry.Geometry.to_world`.
"""

from lungexp.data.synthetic.acquisition import UID_PREFIX
from lungexp.data.synthetic.generator import generate_luna16_dataset
from lungexp.data.synthetic.manifest import MANIFEST_NAME, SyntheticDataset

__all__ = ["MANIFEST_NAME", "UID_PREFIX", "SyntheticDataset", "generate_luna16_dataset"]
