"""A generated dataset's identity: its parameters, the manifest that marks it complete, its file names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Bump whenever the same parameters would produce different files, so stale datasets are detected.
GENERATOR_VERSION = 1
MANIFEST_NAME = ".synthetic.json"
ANNOTATIONS_NAME = "annotations.csv"
CANDIDATES_NAME = "candidates_V2.csv"
MALIGNANCY_NAME = "annotations_with_malignancy.csv"
MIN_SHAPE_ZYX = (16, 48, 48)  # below this the lungs cannot hold a vessel tree and a 3 mm nodule


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a generated dataset; file names and CSV columns are those of the LUNA16 release."""

    root: Path
    series_uids: tuple[str, ...]
    annotations_csv: Path
    candidates_csv: Path
    malignancy_csv: Path

    def mhd_path(self, seriesuid: str) -> Path:
        """Find a scan as LUNA16 readers do: by series UID across the ``subset*`` folders."""
        matches = sorted(self.root.glob(f"subset*/{seriesuid}.mhd"))
        if not matches:
            raise FileNotFoundError(f"no scan {seriesuid} under {self.root}")
        return matches[0]


@dataclass(frozen=True)
class GeneratorParams:
    """Everything that determines the dataset's bytes; kept in the manifest to recognise a dataset."""

    num_scans: int
    num_subsets: int
    shape_zyx: tuple[int, int, int]
    nodules_per_scan: tuple[int, int]
    negatives_per_scan: int
    seed: int

    @classmethod
    def from_arguments(
        cls,
        num_scans: int,
        num_subsets: int,
        shape_zyx: Sequence[int],
        nodules_per_scan: Sequence[int],
        negatives_per_scan: int,
        seed: int,
    ) -> GeneratorParams:
        """Normalise (lists from Hydra become tuples of int) and reject values that cannot work.

        Each ``ValueError`` message starts with the argument's name.
        """
        shape = tuple(int(n) for n in shape_zyx)
        nodule_range = tuple(int(n) for n in nodules_per_scan)
        if len(shape) != 3 or any(n < m for n, m in zip(shape, MIN_SHAPE_ZYX, strict=True)):
            raise ValueError(f"shape_zyx={list(shape)} must be 3 sizes of at least {list(MIN_SHAPE_ZYX)}")
        if len(nodule_range) != 2 or not 0 <= nodule_range[0] <= nodule_range[1]:
            raise ValueError(f"nodules_per_scan={list(nodule_range)} must be an inclusive range [low, high]")
        for name, value, minimum in (("num_scans", num_scans, 1), ("num_subsets", num_subsets, 1),
                                     ("negatives_per_scan", negatives_per_scan, 0), ("seed", seed, 0)):
            if int(value) < minimum:
                raise ValueError(f"{name}={value} must be >= {minimum}")
        return cls(int(num_scans), int(num_subsets), shape, nodule_range, int(negatives_per_scan), int(seed))

    def as_json(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "num_scans": self.num_scans,
            "num_subsets": self.num_subsets,
            "shape_zyx": list(self.shape_zyx),
            "nodules_per_scan": list(self.nodules_per_scan),
            "negatives_per_scan": self.negatives_per_scan,
            "seed": self.seed,
        }


def existing_dataset(root: Path, params: GeneratorParams) -> SyntheticDataset | None:
    """Return the complete dataset at ``root`` if it matches ``params``; None if there is nothing there."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileExistsError(
            f"{root} exists but holds no complete synthetic dataset ({MANIFEST_NAME} is missing); "
            "delete it or pass overwrite=True"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest["params"] != params.as_json():
        raise ValueError(
            f"{root} holds a synthetic dataset made with different parameters:\n"
            f"  on disk:   {manifest['params']}\n  requested: {params.as_json()}\n"
            "delete the folder or pass overwrite=True to regenerate it"
        )
    return _dataset_from_manifest(root, manifest)


def _dataset_from_manifest(root: Path, manifest: dict) -> SyntheticDataset:
    return SyntheticDataset(
        root=root,
        series_uids=tuple(scan["seriesuid"] for scan in manifest["scans"]),
        annotations_csv=root / ANNOTATIONS_NAME,
        candidates_csv=root / CANDIDATES_NAME,
        malignancy_csv=root / MALIGNANCY_NAME,
    )


def write_manifest(directory: Path, params: GeneratorParams, scans: list[dict]) -> None:
    """Write the manifest; written last, it marks the dataset in ``directory`` complete."""
    manifest = {"generator": "lungexp.data.synthetic", "params": params.as_json(), "scans": scans}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
