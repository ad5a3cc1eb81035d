"""A memory-mapped cache of candidate patches, keyed by what produced it.

Reading a CT scan costs ~0.1-1 s; a cached patch costs microseconds. ``build_patch_cache`` reads
every scan once (in several processes), extracts the patches of all its samples and stores them in
one ``int16`` array that training memory-maps. The cache folder's name is a hash of the patch
geometry, the sample coordinates and the scan files (path, size, mtime), so any change rebuilds it.

Crash safety: work happens in ``<key>.partial/``; each scan's patches are written to a shard file
atomically, so an interrupted build resumes from the scans already done. Only a complete cache is
renamed to ``<key>/``, and only a folder with ``meta.json`` is ever read.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.atomic import atomic_file, publish_folder
from lungexp.data.fingerprint import content_key
from lungexp.data.io.reader import read_scan
from lungexp.data.names import COORD_COLUMNS
from lungexp.data.parallel import map_scans
from lungexp.data.patches import PatchExtractor, PatchSpec

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


class PatchCache:
    """A finished cache folder: ``patches.npy`` (N, C, D, H, W) int16 HU, ``index.csv`` and ``meta.json``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a finished patch cache (no meta.json); rebuild it")
        self.meta = json.loads(meta_path.read_text())
        self.index = pd.read_csv(self.folder / "index.csv", dtype={"seriesuid": str})
        self._patches: np.ndarray | None = None

    @property
    def patches_path(self) -> Path:
        return self.folder / "patches.npy"

    @property
    def patches(self) -> np.ndarray:
        """The memory-mapped patch array, opened lazily so each DataLoader worker maps its own view."""
        if self._patches is None:
            self._patches = np.load(self.patches_path, mmap_mode="r")
        return self._patches

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Never pickle the memory map (that would copy the whole array into every worker).
        return {**self.__dict__, "_patches": None}


def cache_key(samples: pd.DataFrame, scan_paths: Mapping[str, Path], spec: PatchSpec) -> str:
    """Hash of everything that determines the cached patches."""
    points = samples[["seriesuid", *COORD_COLUMNS]].copy()
    points[COORD_COLUMNS] = points[COORD_COLUMNS].round(4)
    scans = {uid: scan_paths[uid] for uid in samples["seriesuid"].unique()}
    return content_key({"version": CACHE_FORMAT_VERSION, "spec": asdict(spec)}, points, scans)


def _extract_scan(task: tuple[str, str, np.ndarray, PatchSpec, str]) -> str:
    """Worker: read one scan, extract its patches, write the shard atomically."""
    uid, scan_path, centers, spec, shard_path = task
    scan = read_scan(scan_path)
    patches = PatchExtractor(scan, spec).extract_many(centers)
    with atomic_file(shard_path) as temporary, temporary.open("wb") as handle:
        np.save(handle, patches)
    return uid


def find_patch_cache(
    samples: pd.DataFrame, scan_paths: Mapping[str, Path], spec: PatchSpec, cache_dir: str | Path
) -> PatchCache | None:
    """The finished cache of exactly these samples, if one was built (by this run or another), else None."""
    final = Path(cache_dir) / cache_key(samples, scan_paths, spec)
    return PatchCache(final) if (final / "meta.json").is_file() else None


def build_patch_cache(
    samples: pd.DataFrame,
    scan_paths: Mapping[str, Path],
    spec: PatchSpec,
    cache_dir: str | Path,
    num_workers: int = 0,
    progress: bool = True,
) -> PatchCache:
    """Return the cache for ``samples`` (one row per patch), building or resuming it if needed.

    Args:
        samples: rows with ``seriesuid, coordX, coordY, coordZ`` (world mm) plus any label columns,
            which are kept in the cache's ``index.csv``.
        scan_paths: seriesuid -> scan file readable by :func:`lungexp.data.io.reader.read_scan`.
        spec: patch geometry.
        cache_dir: parent folder of all caches.
        num_workers: processes reading scans in parallel (0 = in this process).
    """
    missing = sorted(set(samples["seriesuid"]) - set(scan_paths))
    if missing:
        raise KeyError(f"no scan found for {len(missing)} seriesuid(s), e.g. {missing[:3]}")
    finished = find_patch_cache(samples, scan_paths, spec, cache_dir)
    if finished is not None:
        return finished
    cache_dir = Path(cache_dir)
    key = cache_key(samples, scan_paths, spec)
    final = cache_dir / key

    partial = cache_dir / f"{key}.partial"
    shards = partial / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    samples = samples.reset_index(drop=True)
    groups = samples.groupby("seriesuid", sort=True).indices
    todo = [
        (uid, str(scan_paths[uid]), samples.loc[rows, COORD_COLUMNS].to_numpy(np.float64), spec,
         str(shards / f"{uid}.npy"))
        for uid, rows in groups.items()
        if not (shards / f"{uid}.npy").is_file()
    ]
    if len(todo) < len(groups):
        log.info("Resuming patch cache %s: %d of %d scans already done", key, len(groups) - len(todo), len(groups))
    started = time.perf_counter()
    map_scans(_extract_scan, todo, num_workers, "Caching patches", progress=progress, done=len(groups) - len(todo))

    patches = np.lib.format.open_memmap(partial / "patches.npy", mode="w+", dtype=np.int16,
                                        shape=(len(samples), *spec.shape))
    for uid, rows in groups.items():
        patches[rows] = np.load(shards / f"{uid}.npy")
    patches.flush()
    del patches
    samples.to_csv(partial / "index.csv", index=False)
    meta = {"version": CACHE_FORMAT_VERSION, "key": key, "spec": asdict(spec), "num_patches": len(samples),
            "num_scans": len(groups), "build_seconds": round(time.perf_counter() - started, 2)}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(shards)
    if not publish_folder(partial, final):  # another process finished the same cache first
        shutil.rmtree(partial, ignore_errors=True)
    log.info("Patch cache %s: %d patches from %d scans", final, len(samples), len(groups))
    return PatchCache(final)
