"""Augmentation and loader cost per patch on one CPU core: TorchIO per patch against the batch augmentation.

In one process, on one thread (``torch.set_num_threads(1)``), alternating the sides for each repeat and
taking medians, so a busy machine slows both alike:

- per-patch cost of ``aug=light`` / ``aug=strong`` (TorchIO, one patch at a time, as DataLoader workers run
  it) against ``aug=batch_light`` / ``aug=batch_strong`` (batches of ``--batch``), with the presets' own
  probabilities and with every transform firing (every ``p`` set to 1);
- loader samples/s on one core (``num_workers=0``, no augmentation) for ``data.cache_memory=mmap`` and ``ram``.

    python scripts/bench_augment.py                     # 32³ and 48³
    python scripts/bench_augment.py --sizes 32 --patches 128 --repeats 3

Goal: the batch augmentation, with the presets' probabilities, >= 2x cheaper per patch than TorchIO light at
32³ and >= 3x at 48³.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_gpu import AUG_DIR, make_cache
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from lungexp.data.loading.dataset import PatchDataset
from lungexp.data.loading.memory_cache import read_into_memory
from lungexp.data.patches.normalization import HUWindow

PROBABILITY_KEYS = ("p", "flip_probability")


def always(node: DictConfig | ListConfig) -> None:
    """Set every transform's probability in ``node`` to 1, in place."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    for key, value in items:
        if isinstance(value, DictConfig | ListConfig):
            always(value)
        elif key in PROBABILITY_KEYS:
            node[key] = 1.0


def load_augmentation(option: str, every_transform: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    config = OmegaConf.load(AUG_DIR / f"{option}.yaml")
    node = config.batch if config.get("batch") else config.train
    if every_transform:
        always(node)
    return instantiate(node)


def per_patch_seconds(option: str, every_transform: bool, patches: torch.Tensor, batch: int) -> float:
    """Seconds per patch: one patch at a time for TorchIO options, ``batch`` patches at once for batch_* ones."""
    augment = load_augmentation(option, every_transform)
    start = time.perf_counter()
    if option.startswith("batch_"):
        for first in range(0, len(patches), batch):
            augment(patches[first:first + batch])
    else:
        for patch in patches:
            augment(patch)
    return (time.perf_counter() - start) / len(patches)


def loader_samples_per_second(dataset: PatchDataset, batch: int) -> float:
    start = time.perf_counter()
    count = sum(len(b["label"]) for b in DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,48")
    parser.add_argument("--patches", type=int, default=256, help="patches per timing")
    parser.add_argument("--batch", type=int, default=64, help="batch of the batch augmentation")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| patch | preset | probabilities | TorchIO ms/patch | batch ms/patch | TorchIO / batch |\n|---|---|---|---|---|---|")
    loader_rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        patches = torch.rand(args.patches, 1, size, size, size)
        for preset in ("light", "strong"):
            for every in (False, True):
                times: dict[str, list[float]] = {preset: [], f"batch_{preset}": []}
                for repeat in range(args.repeats):
                    for option in (list(times) if repeat % 2 == 0 else reversed(list(times))):
                        times[option].append(per_patch_seconds(option, every, patches, args.batch))
                torchio, batched = (statistics.median(t) * 1e3 for t in times.values())
                print(f"| {size}³ | {preset} | {'every transform' if every else 'preset'} | {torchio:.2f} | "
                      f"{batched:.2f} | {torchio / batched:.1f}x |", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            cache = make_cache(Path(workdir), args.patches * 8, size)
            rows = np.arange(len(cache))
            datasets = {"mmap": PatchDataset(cache, rows, HUWindow()),
                        "ram": PatchDataset(cache, rows, HUWindow(), patches=read_into_memory(cache))}
            rates: dict[str, list[float]] = {name: [] for name in datasets}
            for repeat in range(args.repeats):
                for name in (list(datasets) if repeat % 2 == 0 else reversed(list(datasets))):
                    rates[name].append(loader_samples_per_second(datasets[name], args.batch))
            loader_rows.append(f"| {size}³ | " + " | ".join(f"{statistics.median(r):,.0f}" for r in rates.values())
                               + " |")
    print("\nLoader, one core, no augmentation (samples/s):\n\n| patch | mmap | ram |\n|---|---|---|")
    print("\n".join(loader_rows))


if __name__ == "__main__":
    main()
