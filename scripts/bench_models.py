"""Size, compute and training throughput of every model option at default widths.

Throughput is a full training step (forward, BCE loss, backward, AdamW step) on random 32³ patches,
in fp32 and under bf16 autocast, on CPU and (if available) CUDA. Example:

    python scripts/bench_models.py --warmup 3 --steps 5 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from lungexp.models import (
    CNN3D,
    CBAMResNet3D,
    DenseNet3D,
    ResNet3D,
    SEResNet3D,
    count_flops,
    count_parameters,
)

MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn3d": CNN3D,
    "resnet3d-10": partial(ResNet3D, 10),
    "resnet3d-18": partial(ResNet3D, 18),
    "resnet3d-34": partial(ResNet3D, 34),
    "resnet3d-50": partial(ResNet3D, 50),
    "densenet3d": DenseNet3D,
    "se_resnet3d-18": partial(SEResNet3D, 18),
    "cbam_resnet3d-18": partial(CBAMResNet3D, 18),
}
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BenchConfig:
    batch_size: int
    patch: int
    warmup: int
    steps: int


def training_samples_per_second(
    build: Callable[[], nn.Module],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    config: BenchConfig,
) -> float:
    """Samples/s of full training steps: batch size / median step time, after ``warmup`` untimed steps
    (allocator, kernel selection). The median shrugs off steps slowed by other processes on a shared box."""
    torch.manual_seed(0)
    net = build().to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    inputs = torch.randn(config.batch_size, 1, config.patch, config.patch, config.patch, device=device)
    targets = (torch.arange(config.batch_size, device=device) % 2).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = nn.functional.binary_cross_entropy_with_logits(net(inputs).squeeze(1).float(), targets)
        loss.backward()
        optimizer.step()

    for _ in range(config.warmup):
        step()
    step_seconds = []
    for _ in range(config.steps):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        step_seconds.append(time.perf_counter() - start)
    return config.batch_size / statistics.median(step_seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(models: list[str], devices: list[torch.device], config: BenchConfig) -> list[dict[str, str]]:
    rows = []
    for name in models:
        build = MODELS[name]
        net = build()
        row = {
            "model": name,
            "params (M)": f"{count_parameters(net) / 1e6:.2f}",
            f"GFLOPs @{config.patch}³": f"{count_flops(net, (1, 1, config.patch, config.patch, config.patch)) / 1e9:.2f}",
        }
        for device in devices:
            for precision, dtype in PRECISIONS.items():
                print(f"{name}: {device.type} {precision} ...", file=sys.stderr, flush=True)
                throughput = training_samples_per_second(build, device, dtype, config)
                row[f"{device.type} {precision} samples/s"] = f"{throughput:.1f}"
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, str]], markdown: bool) -> str:
    columns = list(rows[0])
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[c]) for row in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(row[c].ljust(w) for c, w in zip(columns, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=32, help="cubic patch edge in voxels")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "cuda" in args.devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda given but CUDA is not available")
    config = BenchConfig(batch_size=args.batch_size, patch=args.patch, warmup=args.warmup, steps=args.steps)
    rows = benchmark(args.models, [torch.device(d) for d in args.devices], config)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in args.devices else "")
        + f"; batch {config.batch_size}, {config.patch}³, {config.warmup} warmup + median of {config.steps} timed steps\n"
    )
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
