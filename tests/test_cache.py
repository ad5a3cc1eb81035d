"""Patch cache: same values as direct extraction, keyed by its inputs, atomic, resumable, one build at a time,
and a full disk named (refused up front when the estimate does not fit, never a SIGBUS)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data.labels.sample_table import build_samples, read_labels
from lungexp.data.patches import cache as cache_module
from lungexp.data.patches.cache import CacheError, PatchCache, build_patch_cache
from lungexp.data.patches.extraction import PatchExtractor, PatchSpec
from lungexp.data.scans import index_scans, read_scan
from lungexp.utils import atomic
from lungexp.utils.atomic import DiskFullError
from lungexp.utils.errors import LungexpError
from tests.helpers.config import PROJECT_ROOT

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


def _build_process(role: str, root: Path, cache_dir: Path, patch_size: int, signals: Path) -> subprocess.Popen:
    """``tests/helpers/cache_build.py`` in a process of its own (see its roles)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.cache_build", str(root), str(cache_dir),
                             str(patch_size), role, str(signals)], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def test_two_processes_building_one_new_cache_take_turns(synthetic_root: Path, tmp_path: Path) -> None:
    """The second run used to crash on the first's ``.partial`` folder; now it waits and uses the first's cache."""
    signals = tmp_path / "signals"
    signals.mkdir()
    first = _build_process("first", synthetic_root, tmp_path / "cache", 12, signals)
    second = _build_process("second", synthetic_root, tmp_path / "cache", 12, signals)
    (first_rc, first_out, first_err), (second_rc, second_out, second_err) = _finish(first), _finish(second)
    assert first_rc == 0, first_err[-3000:]
    assert second_rc == 0, second_err[-3000:]
    assert "Another process is building patch cache" in second_err and "waiting for it" in second_err
    assert first_out.strip() == second_out.strip()  # the same cache folder ...
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(first_out.strip()).name]  # ... and nothing else


def test_a_cache_that_cannot_fit_is_refused_before_any_scan_is_read(samples_and_paths, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """A ``data.patch.size=512`` typo asked for ~37 GB and failed only after writing 6 GB."""
    samples, paths = samples_and_paths
    needed = 2 * len(samples) * 12**3 * 2  # shards, then the array: twice the 12^3 int16 patches
    monkeypatch.setattr(cache_module, "free_bytes", lambda folder: needed // 2)
    calls = []
    monkeypatch.setattr(cache_module, "_extract_scan", lambda task: calls.append(task[0]))
    with pytest.raises(DiskFullError, match=rf"data.cache_dir={re.escape(str(tmp_path))}: the patch cache needs .* "
                                            r"while it is built "
                                            rf"\({len(samples)} patches of 1x12x12x12 voxels.*data.patch.size"):
        build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    assert calls == []


@pytest.mark.parametrize("full_at", ["shard", "array"])
def test_a_full_disk_while_writing_is_named(samples_and_paths, tmp_path: Path, monkeypatch, full_at: str) -> None:
    """The file system fills up after the estimate (another writer): ENOSPC when a file's blocks are reserved.

    Before, a shard failed with numpy's "753664 requested and 90048 written" (no path) and the memory-mapped
    array with a SIGBUS that ended the process without a word."""
    samples, paths = samples_and_paths
    reserve = os.posix_fallocate

    def full(fd: int, offset: int, length: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if (name.endswith("patches.npy") if full_at == "array" else "/shards/" in name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        reserve(fd, offset, length)

    monkeypatch.setattr(atomic.os, "posix_fallocate", full)
    expected = "patches.npy" if full_at == "array" else "/shards/"
    with pytest.raises(DiskFullError, match=rf"{re.escape(str(tmp_path))}\S*{expected}\S*: No space left on device "
                                            r"\(.* free on that file system\); free some space there or set "
                                            "data.cache_dir"):
        build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)
    monkeypatch.undo()
    assert not list(tmp_path.glob("*/meta.json")) and not list(tmp_path.rglob("patches.npy"))
    cache = build_patch_cache(samples, paths, SPEC, tmp_path, progress=False)  # with space again: resumes
    assert len(cache) == len(samples)


@pytest.fixture
def small_file_system(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(size_bytes)``: a tmpfs of that size under ``tmp_path``; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        folder = tmp_path / f"small{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_small_file_system_refuses_the_build_up_front(samples_and_paths, small_file_system) -> None:
    samples, paths = samples_and_paths
    spec = PatchSpec(size=32)
    folder = small_file_system(len(samples) * 32**3 * 2 // 2)  # half of the finished cache
    with pytest.raises(DiskFullError, match=rf"data.cache_dir={re.escape(str(folder))}: the patch cache needs .* "
                                            "but only"):
        build_patch_cache(samples, paths, spec, folder, progress=False)
    assert not list(folder.rglob("*.npy"))


def test_a_small_file_system_full_while_mapping_is_named_not_sigbus(synthetic_root: Path, small_file_system,
                                                                     tmp_path: Path) -> None:
    """The shards fit but the assembled array does not: it used to die of SIGBUS (exit 135 in a shell)."""
    patches = len(pd.read_csv(synthetic_root / "candidates_V2.csv"))
    folder = small_file_system(int(1.5 * patches * 32**3 * 2))
    code, out, err = _finish(_build_process("no-estimate", synthetic_root, folder, 32, tmp_path))
    assert code == 1, f"exit {code}\n{err[-3000:]}"
    assert f"DiskFullError: {folder}/" in err and "patches.npy: No space left on device" in err, err[-3000:]
