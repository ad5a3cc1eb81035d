"""Lightning overhead: training-step time of ``NoduleClassifier`` + Trainer vs a plain PyTorch loop.

Same network, batch, data and precision, in one process; runs alternate (plain then Lightning, then
Lightning then plain, ...) and the medians of the repeats are compared, so machine noise and warm-up
order hit both sides alike.

    python scripts/bench_train.py                       # cnn3d and resnet3d-10, fp32 and bf16-mixed
    python scripts/bench_train.py --models resnet3d-18 --precision 32-true --steps 20

Goal: ratio (Lightning / plain) <= 1.03.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lungexp.models import CNN3D, ResNet3D
from lungexp.training.module import NoduleClassifier

MODELS = {
    "cnn3d": lambda: CNN3D(in_channels=1, num_classes=1),
    "resnet3d-10": lambda: ResNet3D(depth=10, in_channels=1, num_classes=1),
    "resnet3d-18": lambda: ResNet3D(depth=18, in_channels=1, num_classes=1),
}


class RandomPatches(Dataset):
    """Fixed random patches in memory, so data loading is the same negligible cost on both sides."""

    def __init__(self, n: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, size, size, size, generator=generator)
        self.labels = (torch.rand(n, generator=generator) > 0.5).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


def loader(args: argparse.Namespace) -> DataLoader:
    return DataLoader(RandomPatches(args.batch_size * (args.warmup + args.steps), args.size),
                      batch_size=args.batch_size, shuffle=False, num_workers=0)


def plain_loop(model_name: str, precision: str, args: argparse.Namespace) -> float:
    """Seconds per training step of a hand-written loop (after warm-up)."""
    torch.manual_seed(0)
    net = MODELS[model_name]()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    autocast = precision == "bf16-mixed"
    started = 0.0
    for step, batch in enumerate(loader(args)):
        if step == args.warmup:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = net(batch["image"]).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / args.steps


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = 0.0
        self.ended = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ended = time.perf_counter()


def lightning_loop(model_name: str, precision: str, args: argparse.Namespace) -> float:
    """Seconds per training step of NoduleClassifier under pl.Trainer (after warm-up)."""
    torch.manual_seed(0)
    module = NoduleClassifier(MODELS[model_name](), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=1, logger=False,
                         callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader(args))
    return (timer.ended - timer.started) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn3d", "resnet3d-10"], choices=sorted(MODELS))
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.size}^3, {args.steps} timed steps after {args.warmup} warm-up, median of {args.repeats}")
    print("| model | precision | plain step (ms) | Lightning step (ms) | ratio |")
    print("|---|---|---|---|---|")
    for model_name in args.models:
        for precision in args.precision:
            plain, lightning = [], []
            for repeat in range(args.repeats):
                runs = [(plain, plain_loop), (lightning, lightning_loop)]
                for times, loop in runs if repeat % 2 == 0 else runs[::-1]:  # alternate who goes first
                    times.append(loop(model_name, precision, args))
            p, lt = statistics.median(plain), statistics.median(lightning)
            print(f"| {model_name} | {precision} | {p * 1e3:.1f} | {lt * 1e3:.1f} | {lt / p:.3f} |", flush=True)


if __name__ == "__main__":
    main()
