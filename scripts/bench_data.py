"""Data-pipeline speed, as ratios against a baseline measured in the same process.

1. cached patch read (memory-mapped cache + HU window) vs the naive per-candidate
   SimpleITK read of the whole scan + crop;
2. whole-scan preprocessing on one core: read a 512x512x300 scan, check its HU values are
   plausible CT, resample ~850 candidate patches to 1 mm, write them to the cache; and the HU
   check's share of it;
3. patch resampling on one core: the separable resampler vs SimpleITK's resampler (the path
   oblique scans take), the same ~850 patches from the same scan;
4. loader throughput (cache + aug=light, 2 workers) vs resnet3d-18 training throughput at 32^3.

    python scripts/bench_data.py [--candidates 850] [--train-steps 6]

Goals: (1) >= 100x, (2) <= 2 s, (4) >= 3x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lungexp.data.loading.dataset import PatchDataset
from lungexp.data.names import COORD_COLUMNS, LABEL_KEY
from lungexp.data.patches.cache import build_patch_cache
from lungexp.data.patches.extraction import PatchExtractor, PatchSpec
from lungexp.data.patches.normalization import HUWindow
from lungexp.data.scans import write_mhd
from lungexp.data.scans.hounsfield_check import check_hounsfield
from lungexp.data.scans.scan import Scan
from lungexp.models import ResNet3D

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPEC = PatchSpec(size=32, spacing_mm=(1.0,))


def make_scan(folder: Path, shape_zyx=(300, 512, 512)) -> tuple[Path, Scan]:
    """A CT-sized volume (smooth random structure, int16 HU) written as LUNA16 .mhd/.raw."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(-500, 400, size=(shape_zyx[0] // 10, shape_zyx[1] // 16, shape_zyx[2] // 16))
    array = np.kron(coarse, np.ones((10, 16, 16))).astype(np.int16)
    scan = Scan(array, origin=(-180.0, -180.0, -350.0), spacing=(0.703, 0.703, 1.25), direction=np.eye(3))
    return write_mhd(scan, folder / "subset0" / "1.2.3.bench.mhd"), scan


def candidates(scan: Scan, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    voxels = rng.uniform([20, 40, 40], np.array(scan.shape_zyx) - [20, 40, 40], size=(n, 3))
    world = scan.voxel_to_world(voxels)
    return pd.DataFrame({"seriesuid": "1.2.3.bench", "coordX": world[:, 0], "coordY": world[:, 1],
                         "coordZ": world[:, 2], "label": rng.integers(0, 2, n)})


def naive_read_and_crop(path: Path, center_xyz: np.ndarray) -> np.ndarray:
    """What a notebook does: read the scan, crop around the voxel (no resampling even)."""
    image = sitk.ReadImage(str(path))
    z, y, x = np.rint(Scan.from_sitk(image).world_to_voxel(center_xyz)).astype(int)
    return sitk.GetArrayFromImage(image)[z - 16:z + 16, y - 16:y + 16, x - 16:x + 16]


def timed(function, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def time_resamplers(scan: Scan, centres: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median seconds to extract the patches at ``centres`` separably and with SimpleITK, alternating.

    A function, so that SimpleITK's copy of the scan is freed before the loader is measured.
    """
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for use_sitk in seconds:
            extractor = PatchExtractor(scan, SPEC, use_sitk=use_sitk)
            seconds[use_sitk].append(timed(lambda e=extractor: e.extract_many(centres), 1))
    return float(np.median(seconds[False])), float(np.median(seconds[True]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=850, help="per scan; LUNA16 candidates_V2 averages ~850")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="of the resampler comparison (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, scan = make_scan(tmp)
        samples = candidates(scan, args.candidates)

        # 2. whole-scan preprocessing on one core (includes reading the .mhd/.raw)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        torch.set_num_threads(1)
        started = time.perf_counter()
        cache = build_patch_cache(samples, {"1.2.3.bench": path}, SPEC, tmp / "cache", num_workers=0, progress=False)
        preprocess_seconds = time.perf_counter() - started
        hu_check_seconds = timed(lambda: check_hounsfield(scan), 5)

        # 3. the same patches through the separable resampler and through SimpleITK's
        separable, general = time_resamplers(scan, samples[COORD_COLUMNS].to_numpy(float), args.repeats)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(0)
        torch.set_num_threads(2)

        # 1. cached read vs naive read + crop
        dataset = PatchDataset(cache, np.arange(len(cache)), HUWindow())
        rows = np.random.default_rng(2).integers(0, len(cache), 2000)
        cached = timed(lambda: [dataset[int(i)] for i in rows], 1) / len(rows)
        center = samples.loc[0, COORD_COLUMNS].to_numpy(float)
        naive = timed(lambda: naive_read_and_crop(path, center), 5)

        # 3. loader throughput with aug=light vs resnet3d-18 training throughput
        aug = hydra.utils.instantiate(OmegaConf.load(PROJECT_ROOT / "conf" / "aug" / "light.yaml").train)
        loader = DataLoader(PatchDataset(cache, np.arange(len(cache)), HUWindow(), aug), batch_size=32,
                            shuffle=True, num_workers=2, persistent_workers=True)
        iterator = iter(loader)
        next(iterator)  # workers started
        started, seen = time.perf_counter(), 0
        for batch in iterator:
            seen += len(batch[LABEL_KEY])
        loader_rate = seen / (time.perf_counter() - started)

        net = ResNet3D(depth=18, in_channels=1, num_classes=1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        images = torch.rand(args.batch_size, 1, 32, 32, 32)
        labels = torch.randint(0, 2, (args.batch_size,)).float()

        def train_step(precision: str) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                logits = net(images).squeeze(-1)
            torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
            optimizer.step()
            optimizer.zero_grad()

        train_rates = {}
        for precision in ("32-true", "bf16-mixed"):
            train_step(precision)
            train_rates[precision] = args.batch_size / timed(lambda p=precision: train_step(p), args.train_steps)

    fastest_training = max(train_rates.values())
    print(f"torch {torch.__version__}; scan 512x512x300 int16; {args.candidates} candidates; patch 32^3 at 1 mm")
    print("| measurement | value | goal |")
    print("|---|---|---|")
    print(f"| naive SimpleITK read + crop per candidate | {naive * 1e3:.1f} ms | |")
    print(f"| cached patch read (memmap + HU window) | {cached * 1e6:.1f} µs | |")
    print(f"| **cached / naive speed-up** | **{naive / cached:,.0f}x** | >= 100x |")
    print(f"| **whole-scan preprocessing, 1 core** (read + {args.candidates} patches + cache write) "
          f"| **{preprocess_seconds:.2f} s** | <= 2 s |")
    print(f"| HU plausibility check of the scan, 1 core | {hu_check_seconds * 1e3:.0f} ms "
          f"({hu_check_seconds / preprocess_seconds:.1%} of preprocessing) | |")
    print(f"| separable resampling, 1 core, {args.candidates} patches | {separable:.2f} s | |")
    print(f"| SimpleITK resampling, 1 core, {args.candidates} patches | {general:.2f} s | |")
    print(f"| **SimpleITK / separable resampling time** | **{general / separable:.1f}x** | |")
    print(f"| loader throughput, aug=light, 2 workers | {loader_rate:.0f} samples/s | |")
    for precision, rate in train_rates.items():
        print(f"| resnet3d-18 training at 32^3, batch {args.batch_size}, {precision} | {rate:.1f} samples/s | |")
    print(f"| **loader / fastest training throughput** | **{loader_rate / fastest_training:.1f}x** | >= 3x |")


if __name__ == "__main__":
    main()
