"""Patch cache: same values as direct extraction, keyed by its inputs, atomic, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data import cache as cache_module
from lungexp.data.cache import CacheError, PatchCache, build_patch_cache
from lungexp.data.io import index_scans, read_scan
from lungexp.data.patches import PatchExtractor, PatchSpec
from lungexp.data.samples import build_samples, read_labels
from lungexp.utils.errors import LungexpError

SPEC = PatchSpec(size=12, spacing_mm=(1.0,))


@pytest.fixture(scope="module")
def samples_and_paths(synthetic_root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    scans = index_scans(synthetic_root)
    samples = build_samples(read_labels("candidates", synthetic_root / "candidates_V2.csv"), scans,
                            source="candidates_V2.csv")
    return samples, dict(zip(scans["seriesuid"], scans["path"], strict=True))


def test_cached_patches_equal_direct_extraction(samples_and_paths, tmp_path: Path) -> None:
    samples, paths = samples_and_paths
    cache = build_patch_cache(samples, paths, SPEC, tmp_path, num_workers=2, progress=False)
    assert isinstance(cache.patches, np.memmap)
    assert cache.patches.shape == (len(samples), 1, 12, 12, 12)
    pd.testing.assert_frame_equal(cache.index[["seriesuid", "label"]], samples[["seriesuid", "label"]])
    for row in (0, len(samples) // 2, len(samples) - 1):
        scan = read_scan(paths[samples.seriesuid[row]])
        expected = PatchExtractor(scan, SPEC).extract_many(samples.loc[[row], ["coordX", "coordY", "coordZ"]].to_numpy())
        np.testing.assert_array_equal(cache.patches[row], expected[0])


def test_cache_is_reused_and_rebuilt_when_inputs_change(samples_and_paths, tmp_path: Path, monkeypatch) -> None:
    samples, paths = samples_and_paths
    first = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr(cache_module, "_extract_scan", lambda task: calls.append(task[0]))
    again = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    assert again.folder == first.folder and calls == []  # reused, nothing extracted
    monkeypatch.undo()
    other_geometry = build_patch_cache(samples, paths, PatchSpec(size=12, spacing_mm=(2.0,)), tmp_path,
                                       progress=False)
    fewer_samples = build_patch_cache(samples.iloc[:-1], paths, SPEC, tmp_path, progress=False)
    assert len({first.folder, other_geometry.folder, fewer_samples.folder}) == 3


def test_interrupted_build_leaves_no_cache_and_resumes(samples_and_paths, tmp_path: Path, monkeypatch) -> None:
    samples, paths = samples_and_paths
    real_extract = cache_module._extract_scan
    done: list[str] = []

    def killed_after_two(task):
        if len(done) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
        done.append(real_extract(task))

    monkeypatch.setattr(cache_module, "_extract_scan", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".partial")], "a partial cache was published"

    resumed: list[str] = []
    monkeypatch.setattr(cache_module, "_extract_scan", lambda task: resumed.append(real_extract(task)))
    cache = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    assert set(resumed) == set(samples.seriesuid) - set(done)  # the two finished scans were not redone
    reference = build_patch_cache(samples, paths, SPEC, tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(np.asarray(cache.patches), np.asarray(reference.patches))


def test_unfinished_folder_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    with pytest.raises(CacheError, match="not a finished patch cache"):
        PatchCache(tmp_path / "abc")


def test_published_folder_without_marker_is_rebuilt_once_and_used(samples_and_paths, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A ``<key>/`` that lost its meta.json used to be rebuilt, then refused, on every run."""
    samples, paths = samples_and_paths
    first = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    (first.folder / "meta.json").unlink()
    rebuilt = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    assert rebuilt.folder == first.folder and (rebuilt.folder / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.folder.name]  # no .partial left behind
    calls = []
    monkeypatch.setattr(cache_module, "_extract_scan", lambda task: calls.append(task[0]))
    assert build_patch_cache(samples, paths, SPEC, tmp_path, progress=False).folder == first.folder
    assert calls == []  # the rebuilt cache is used from then on


def test_labels_are_served_from_the_callers_rows_not_the_cache(samples_and_paths, tmp_path: Path) -> None:
    """The key covers only what patches depend on, so a relabelled CSV must not get the old labels back."""
    samples, paths = samples_and_paths
    first = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    flipped = samples.assign(label=1 - samples["label"], extra="x")
    again = build_patch_cache(flipped, paths, SPEC, tmp_path, progress=False)
    assert again.folder == first.folder  # same points: the patches are reused ...
    np.testing.assert_array_equal(again.index["label"], 1 - samples["label"])  # ... the labels are not
    assert (again.index["extra"] == "x").all()


def test_truncated_patch_array_is_named(samples_and_paths, tmp_path: Path) -> None:
    samples, paths = samples_and_paths
    cache = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    size = cache.patches_path.stat().st_size
    with open(cache.patches_path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(CacheError, match=f"{cache.patches_path}: truncated or damaged.*delete {cache.folder}"):
        build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)


def test_sample_without_scan_is_an_error(samples_and_paths, tmp_path: Path) -> None:
    samples, paths = samples_and_paths
    with pytest.raises(LungexpError, match="no scan found"):
        build_patch_cache(samples, {}, SPEC, tmp_path, progress=False)
