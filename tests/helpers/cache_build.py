"""A patch-cache build in a process of its own, for what two processes or a full disk do to a build.

``python -m tests.helpers.cache_build DATA_ROOT CACHE_DIR PATCH_SIZE [ROLE SIGNALS]`` builds the cache of
the dataset's ``candidates_V2.csv`` and prints its folder. Roles, for two builds of one cache at once
(``SIGNALS`` is a folder both see):

- ``first`` pauses at its first scan until the second has started, so both builds overlap;
- ``second`` starts once the first is building; after extracting (if it ever does: a build that waits for
  the first finds the finished cache instead) it waits until the first has published its cache, the moment
  at which a second build working in the first's folder finds it gone;
- ``no-estimate`` skips the free-space estimate, to meet a full disk while writing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lungexp.data.labels.sample_table import build_samples, read_labels
from lungexp.data.patches import cache
from lungexp.data.patches.extraction import PatchSpec
from lungexp.data.scans import index_scans

WAIT_S = 120


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S} s for {what}")
        time.sleep(0.05)


def main(data_root: str, cache_dir: str, patch_size: str, role: str = "", signals: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root, folder, flags = Path(data_root), Path(cache_dir), Path(signals or ".")
    scans = index_scans(root)
    samples = build_samples(read_labels("candidates", root / "candidates_V2.csv"), scans, source="candidates_V2.csv")
    paths = dict(zip(scans["seriesuid"], scans["path"], strict=True))
    extract, map_scans = cache._extract_scan, cache.map_scans
    if role == "first":
        def paused(task):
            if not (flags / "first_building").exists():
                (flags / "first_building").touch()
                wait_for((flags / "second_started").exists, "the second build")
                time.sleep(3)  # time for the second to reach the cache
            return extract(task)

        cache._extract_scan = paused
    elif role == "second":
        def then_wait_for_first(*args, **kwargs):
            done = map_scans(*args, **kwargs)
            wait_for(lambda: any(folder.glob("*/meta.json")), "the first build's cache")
            return done

        wait_for((flags / "first_building").exists, "the first build")
        cache.map_scans = then_wait_for_first
        (flags / "second_started").touch()
    elif role == "no-estimate":
        cache.free_bytes = lambda folder: 10**15
    built = cache.build_patch_cache(samples, paths, PatchSpec(size=int(patch_size)), folder, progress=False)
    print(built.folder)


if __name__ == "__main__":
    main(*sys.argv[1:])
