"""Training speed on one GPU: compute alone against the full training loop with each data path.

For each network and patch size, in bf16-mixed at batch 256 (halved until it fits), samples/s of

    (a) compute alone: random tensors already on the device; also the fraction of peak,
        3 x forward FLOPs x samples/s / --peak-tflops (790 TFLOP/s: H200 dense bf16);
    (b) the full loop: memory-mapped cache, TorchIO aug=light in --workers DataLoader workers;
    (c) data.cache_memory=ram, aug=batch_light on the device (DataLoader workers only read patches);
    (d) data.cache_memory=device, aug=batch_light: batches gathered on the device, no workers;
    (e) (d) with torch.compile (model.compile=true), at one patch size (--compile-size, default the first);
    (f) (d) with cudnn.benchmark (+trainer.benchmark=true);
    (g) (d) in channels-last-3D (model.channels_last=true);

then the top kernels of one profiled step of (d). The loops are plain PyTorch around the project's own
pieces (PatchDataset, DeviceBatches, the aug configs, the balanced sampler): bench_train.py measured
Lightning's own overhead at <= 3%. Patches are random int16 HU in a cache folder made for the run.

    python scripts/bench_gpu.py                 # on one H200: about 6 minutes
    python scripts/bench_gpu.py --smoke         # the same code on the CPU, tiny, in well under a minute
    python scripts/bench_gpu.py --models cnn3d --sizes 32 --variants a,d,e
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from lungexp.data.loading.balance import BalanceSpec
from lungexp.data.loading.dataset import PatchDataset
from lungexp.data.loading.memory_cache import DeviceBatches, read_into_memory
from lungexp.data.names import IMAGE_KEY, LABEL_KEY
from lungexp.data.patches.cache import PatchCache
from lungexp.data.patches.normalization import HUWindow
from lungexp.models import CNN3D, DenseNet3D, ResNet3D
from lungexp.models.complexity import count_flops

AUG_DIR = Path(__file__).resolve().parents[1] / "conf" / "aug"
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn3d": partial(CNN3D, in_channels=1, num_classes=1),
    "resnet3d-18": partial(ResNet3D, depth=18, in_channels=1, num_classes=1),
    "densenet3d": partial(DenseNet3D, in_channels=1, num_classes=1),
}
TINY: dict[str, dict] = {  # --smoke: the same classes, a few channels
    "cnn3d": {"widths": [4, 8]},
    "resnet3d-18": {"widths": [4, 8, 8, 8]},
    "densenet3d": {"growth_rate": 4, "block_config": [1, 1], "num_init_features": 8},
}
VARIANTS = {
    "a": "compute alone", "b": "mmap + TorchIO light, workers", "c": "ram + batch_light",
    "d": "device + batch_light", "e": "(d) + torch.compile", "f": "(d) + cudnn.benchmark", "g": "(d) + channels-last",
}


@dataclass
class Settings:
    device: torch.device
    batch_size: int
    warmup: int
    steps: int
    workers: int
    patches: int
    peak_tflops: float
    compile_backend: str
    compile_size: int
    tiny: bool


def make_cache(folder: Path, count: int, size: int) -> PatchCache:
    """A cache folder of ``count`` random int16 HU patches, one in four positive."""
    folder.mkdir(parents=True, exist_ok=True)
    patches = np.lib.format.open_memmap(folder / "patches.npy", mode="w+", dtype=np.int16, shape=(count, 1, size, size, size))
    rng = np.random.default_rng(0)
    for start in range(0, count, 1024):
        stop = min(count, start + 1024)
        patches[start:stop] = rng.integers(-1000, 400, size=(stop - start, 1, size, size, size), dtype=np.int16)
    patches.flush()
    index = pd.DataFrame({"seriesuid": "bench", "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0,
                          "label": (np.arange(count) % 4 == 0).astype(int)})
    index.to_csv(folder / "index.csv", index=False)
    (folder / "meta.json").write_text(json.dumps({"num_patches": count}))
    return PatchCache(folder)


def augmentation(option: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The augmentation of ``conf/aug/<option>.yaml``: its ``batch`` (on the device) or its ``train`` (TorchIO)."""
    config = OmegaConf.load(AUG_DIR / f"{option}.yaml")
    return instantiate(config.batch if config.get("batch") else config.train)


def build_net(name: str, settings: Settings, variant: str) -> nn.Module:
    net = MODELS[name](**(TINY[name] if settings.tiny else {})).to(settings.device).train()
    if variant == "g":
        net.to(memory_format=torch.channels_last_3d)
    if variant == "e":
        net.compile(backend=settings.compile_backend)
    return net


def batches(variant: str, cache: PatchCache, settings: Settings) -> Iterator[torch.Tensor]:
    """Endless training batches of ``variant`` on the device (normalised, augmented), as training sees them."""
    device, window = settings.device, HUWindow()
    rows = np.arange(len(cache))
    dataset = PatchDataset(cache, rows, window)
    sampler = BalanceSpec.from_config("balanced").sampler_for(dataset.labels, seed=0)
    if variant == "a":
        image = torch.rand(settings.batch_size, *cache.patches.shape[1:], device=device)
        while True:
            yield image, (torch.arange(settings.batch_size, device=device) % 2).float()
    if variant == "b":
        dataset.transform = augmentation("light")
    elif variant == "c":
        dataset.patches = read_into_memory(cache)
    if variant in ("b", "c"):
        loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.workers,
                            pin_memory=device.type == "cuda", persistent_workers=settings.workers > 0, drop_last=True)
    else:
        collate = DeviceBatches.load(cache.patches, rows, dataset.labels, window, device)
        loader = DataLoader(range(len(rows)), batch_size=settings.batch_size, sampler=sampler, collate_fn=collate,
                            drop_last=True)
    augment = augmentation("batch_light") if variant != "b" else None
    while True:
        for batch in loader:
            image = batch[IMAGE_KEY].to(device, non_blocking=True)
            if augment is not None:
                image = augment(image)
            if variant == "g":
                image = image.contiguous(memory_format=torch.channels_last_3d)
            yield image, batch[LABEL_KEY].to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(net: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor,
                  device: torch.device) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = nn.functional.binary_cross_entropy_with_logits(net(image).squeeze(-1).float(), label)
    loss.backward()
    optimizer.step()


def samples_per_second(name: str, variant: str, cache: PatchCache, settings: Settings) -> float:
    """Training samples/s: batch size / median of ``steps`` timed steps (data included), after ``warmup``."""
    torch.backends.cudnn.benchmark = variant == "f"
    torch.manual_seed(0)
    net = build_net(name, settings, variant)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    stream = batches(variant, cache, settings)
    seconds = []
    for step in range(settings.warmup + settings.steps):
        synchronize(settings.device)
        start = time.perf_counter()
        training_step(net, optimizer, *next(stream), settings.device)
        synchronize(settings.device)
        if step >= settings.warmup:
            seconds.append(time.perf_counter() - start)
    stream.close()  # ends its DataLoader workers
    torch.backends.cudnn.benchmark = False
    return settings.batch_size / statistics.median(seconds)


def fitting(run: Callable[[], float], settings: Settings) -> tuple[float, int]:
    """``run()`` at the largest batch size (halving from ``settings.batch_size``) that fits in GPU memory."""
    requested = settings.batch_size
    try:
        while True:
            try:
                return run(), settings.batch_size
            except torch.OutOfMemoryError:
                if settings.batch_size == 1:
                    raise
                settings.batch_size //= 2
                torch.cuda.empty_cache()
    finally:
        settings.batch_size = requested


def profile_step(name: str, cache: PatchCache, settings: Settings, top: int = 12) -> str:
    """The top kernels (by device time; CPU ops on the CPU) of one training step of variant (d)."""
    from torch.profiler import ProfilerActivity, profile

    net = build_net(name, settings, "d")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    stream = batches("d", cache, settings)
    training_step(net, optimizer, *next(stream), settings.device)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        training_step(net, optimizer, *next(stream), settings.device)
        synchronize(settings.device)
    stream.close()
    key = "cuda_time_total" if settings.device.type == "cuda" else "cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=top)


def bench(models: list[str], sizes: list[int], variants: list[str], settings: Settings, workdir: Path) -> list[dict]:
    rows = []
    for size in sizes:
        cache = make_cache(workdir / f"cache{size}", settings.patches, size)
        for name in models:
            flops = count_flops(MODELS[name](**(TINY[name] if settings.tiny else {})), (1, 1, size, size, size))
            row = {"model": name, "patch": f"{size}³", "GFLOPs": f"{flops / 1e9:.3g}"}
            for variant in variants:
                if variant == "e" and size != settings.compile_size:
                    continue  # compiling takes a minute or more per network and shape
                print(f"{name} {size}³ ({variant}) {VARIANTS[variant]} ...", file=sys.stderr, flush=True)
                throughput, batch = fitting(partial(samples_per_second, name, variant, cache, settings), settings)
                row[f"({variant}) samples/s"] = f"{throughput:,.0f}" + ("" if batch == settings.batch_size else
                                                                        f" (batch {batch})")
                if variant == "a":
                    row["(a) of peak"] = f"{3 * flops * throughput / (settings.peak_tflops * 1e12):.1%}"
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # kept if the run is cut short
    return rows


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny networks, 16³ patches, batch 8, on the CPU, compile with the eager backend")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="32,48")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=15, help="DataLoader workers of (b) and (c)")
    parser.add_argument("--patches", type=int, default=8192, help="patches in the generated cache")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-size", type=int, default=None, help="the one patch size of (e); default the first")
    parser.add_argument("--profile-model", default="resnet3d-18")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch_size, args.warmup, args.steps = "16", 8, 1, 2
        args.workers, args.patches, args.compile_backend = 1, 64, "eager"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    models, sizes, variants = args.models.split(","), [int(s) for s in args.sizes.split(",")], args.variants.split(",")
    settings = Settings(device, args.batch_size, args.warmup, args.steps, args.workers, args.patches,
                        args.peak_tflops, args.compile_backend, args.compile_size or sizes[0], tiny=args.smoke)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as workdir:
        rows = bench(models, sizes, variants, settings, Path(workdir))
        name = args.profile_model if args.profile_model in models else models[0]
        profile = profile_step(name, make_cache(Path(workdir) / "profile", args.patches, sizes[0]), settings)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{device_name}, bf16-mixed, batch {args.batch_size}, {args.workers} workers for (b) and (c), "
          f"{time.perf_counter() - started:.0f} s\n")
    print("\n".join(f"- ({key}) {text}" for key, text in VARIANTS.items() if key in variants) + "\n")
    print(markdown_table(rows))
    print(f"\nTop kernels of one step of (d), {name} at {sizes[0]}³:\n")
    print(profile)


if __name__ == "__main__":
    main()
