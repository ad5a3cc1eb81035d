"""A memory-mapped cache of candidate patches, keyed by what produced it.

Reading a CT scan costs ~0.1-1 s; a cached patch costs microseconds. ``build_patch_cache`` reads
every scan once (in several processes), extracts the patches of all its samples and stores them in
one ``int16`` array that training memory-maps. The cache folder's name is a hash of the patch
geometry, the sample coordinates and the scan files (path, size, mtime), so any change rebuilds it.

Crash safety: work happens in ``<key>.partial/``; each scan's patches are written to a shard file
atomically, so an interrupted build resumes from the scans already done. Only a complete cache is
renamed to ``<key>/``, and only a folder with ``meta.json`` is ever read (a ``<key>/`` without it is
replaced by the next build). Runs that start the same build at once (parallel sweep jobs, two
terminals) take turns on a lock file ``.<key>.lock``: the first builds, the others wait and use its cache.

Disk space: the size of the cache is known before the build (patches x voxels x 2 bytes), so a build
that cannot fit (e.g. a ``data.patch.size`` typo) is refused before any scan is read, and every file's
blocks are reserved before it is written, so a full disk is a :class:`~lungexp.utils.atomic.DiskFullError`
naming the file, never a SIGBUS from a memory-mapped write.

Labels are never served from the cache: the key covers only what the patches depend on, so a
cache found by key serves the caller's own sample rows (labels, subsets, any extra column, freshly
read from the CSV) next to its patches; ``index.csv`` only records what the cache was built from.
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

from lungexp.data.fingerprint import content_key
from lungexp.data.names import COORD_COLUMNS
from lungexp.data.patches.extraction import PatchExtractor, PatchSpec
from lungexp.data.scans.reader import read_scan
from lungexp.utils.atomic import (
    DiskFullError,
    allocate_npy,
    atomic_file,
    disk_full_named,
    exclusive_lock,
    format_bytes,
    free_bytes,
    publish_folder,
)
from lungexp.utils.errors import LungexpError
from lungexp.utils.parallel import map_scans

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
PATCH_DTYPE = np.int16
FILE_OVERHEAD_BYTES = 4096  # an .npy header, rounded up to a file system block
DISK_FULL_HINT = "free some space there or set data.cache_dir to a folder on a larger disk"


class CacheError(LungexpError):
    """A patch cache folder that cannot be used as it is; the message names the file and how to rebuild it."""


class PatchCache:
    """A finished cache folder: ``patches.npy`` (N, C, D, H, W) int16 HU, ``index.csv`` and ``meta.json``.

    Args:
        folder: the cache folder.
        index: the sample rows to serve, one per patch in cache order (what :func:`build_patch_cache`
            passes: the caller's current rows); default: the ``index.csv`` the cache was built from.
    """

    def __init__(self, folder: str | Path, index: pd.DataFrame | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"{self.folder} is not a finished patch cache (no meta.json); delete it and rerun to "
                             "rebuild it")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise CacheError(f"{meta_path}: unreadable ({error}); delete {self.folder} and rerun to rebuild it") from None
        if index is None:
            index = pd.read_csv(self.folder / "index.csv", dtype={"seriesuid": str})
        self.index = index.reset_index(drop=True)
        self._patches: np.ndarray | None = None
        self._check_patches()

    def _check_patches(self) -> None:
        """Open the array once here, so a truncated or damaged one is named now, not in a DataLoader worker."""
        try:
            shape = np.load(self.patches_path, mmap_mode="r").shape
        except (OSError, ValueError) as error:
            raise CacheError(f"{self.patches_path}: truncated or damaged ({error}); delete {self.folder} and rerun "
                             "to rebuild the cache") from None
        if shape[0] != len(self.index) or shape[0] != self.meta.get("num_patches", shape[0]):
            raise CacheError(f"{self.patches_path} holds {shape[0]} patches but the cache lists {len(self.index)}; "
                             f"delete {self.folder} and rerun to rebuild it")

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
    with atomic_file(shard_path) as temporary:
        shard = allocate_npy(temporary, patches.shape, patches.dtype)
        shard[:] = patches
        shard.flush()
        del shard
    return uid


def find_patch_cache(
    samples: pd.DataFrame, scan_paths: Mapping[str, Path], spec: PatchSpec, cache_dir: str | Path
) -> PatchCache | None:
    """The finished cache of exactly these samples, if one was built (by this run or another), else None."""
    final = Path(cache_dir) / cache_key(samples, scan_paths, spec)
    return PatchCache(final, index=samples.reset_index(drop=True)) if (final / "meta.json").is_file() else None


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
        samples: rows with ``seriesuid, coordX, coordY, coordZ`` (world mm) plus any label columns;
            the returned cache serves these rows as its ``index`` (see the module doc).
        scan_paths: seriesuid -> scan file readable by :func:`lungexp.data.scans.reader.read_scan`.
        spec: patch geometry.
        cache_dir: parent folder of all caches.
        num_workers: processes reading scans in parallel (0 = in this process).
    """
    missing = sorted(set(samples["seriesuid"]) - set(scan_paths))
    if missing:
        raise LungexpError(f"no scan found for {len(missing)} seriesuid(s), e.g. {missing[:3]}; add their scans "
                           "under data.root or remove their rows from the labels CSV")
    finished = find_patch_cache(samples, scan_paths, spec, cache_dir)
    if finished is not None:
        return finished
    key = cache_key(samples, scan_paths, spec)
    lock = Path(cache_dir) / f".{key}.lock"
    waiting = f"Another process is building patch cache {key} in {cache_dir}; waiting for it to finish, then using it"
    with disk_full_named(cache_dir, DISK_FULL_HINT), exclusive_lock(lock, waiting):
        # The process that held the lock may have finished this very cache meanwhile.
        finished = find_patch_cache(samples, scan_paths, spec, cache_dir)
        return finished or _build(samples.reset_index(drop=True), scan_paths, spec, Path(cache_dir), key,
                                  num_workers, progress)


def _build(samples: pd.DataFrame, scan_paths: Mapping[str, Path], spec: PatchSpec, cache_dir: Path, key: str,
           num_workers: int, progress: bool) -> PatchCache:
    """Build (or resume) the cache ``key`` of ``samples``; the caller holds its lock."""
    final = cache_dir / key
    if final.exists():
        log.warning("%s has no meta.json (an unfinished or damaged cache): building it again", final)

    partial = cache_dir / f"{key}.partial"
    shards = partial / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    groups = samples.groupby("seriesuid", sort=True).indices
    todo = [
        (uid, str(scan_paths[uid]), samples.loc[rows, COORD_COLUMNS].to_numpy(np.float64), spec,
         str(shards / f"{uid}.npy"))
        for uid, rows in groups.items()
        if not (shards / f"{uid}.npy").is_file()
    ]
    if len(todo) < len(groups):
        log.info("Resuming patch cache %s: %d of %d scans already done", key, len(groups) - len(todo), len(groups))
    (partial / "patches.npy").unlink(missing_ok=True)  # left by a build that failed while assembling it
    check_space_for_build(cache_dir, spec, len(samples), sum(len(task[2]) for task in todo), len(todo))
    started = time.perf_counter()
    map_scans(_extract_scan, todo, num_workers, "Caching patches", progress=progress, done=len(groups) - len(todo))

    patches = allocate_npy(partial / "patches.npy", (len(samples), *spec.shape), PATCH_DTYPE)
    for uid, rows in groups.items():
        patches[rows] = np.load(shards / f"{uid}.npy")
    patches.flush()
    del patches
    samples.to_csv(partial / "index.csv", index=False)
    meta = {"version": CACHE_FORMAT_VERSION, "key": key, "spec": asdict(spec), "num_patches": len(samples),
            "num_scans": len(groups), "build_seconds": round(time.perf_counter() - started, 2)}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(shards)
    # A `final` without meta.json (an unfinished or damaged cache) is replaced; a complete one published by
    # another process in the meantime is used instead.
    stale = final.exists() and not (final / "meta.json").is_file()
    if not publish_folder(partial, final, replace_existing=stale):
        shutil.rmtree(partial, ignore_errors=True)
    log.info("Patch cache %s: %d patches from %d scans", final, len(samples), len(groups))
    return PatchCache(final, index=samples)


def check_space_for_build(cache_dir: Path, spec: PatchSpec, num_patches: int, patches_to_extract: int,
                          shards_to_write: int) -> None:
    """Refuse a build that cannot fit on the disk of ``cache_dir``, before any scan is read.

    While it is built a cache takes twice its size: the per-scan shards still to write, then the final
    array assembled from them (the shards are deleted after that).
    """
    patch_bytes = int(np.prod(spec.shape)) * np.dtype(PATCH_DTYPE).itemsize
    needed = (num_patches + patches_to_extract) * patch_bytes + (shards_to_write + 1) * FILE_OVERHEAD_BYTES
    free = free_bytes(cache_dir)
    if needed > free:
        shape = "x".join(map(str, spec.shape))
        raise DiskFullError(
            f"data.cache_dir={cache_dir}: the patch cache needs {format_bytes(needed)} while it is built "
            f"({num_patches} patches of {shape} voxels, {format_bytes(num_patches * patch_bytes)} when done) but "
            f"only {format_bytes(free)} are free there; check data.patch.size and data.patch.spacing_mm (the "
            f"cache grows with the cube of the size), {DISK_FULL_HINT}")
