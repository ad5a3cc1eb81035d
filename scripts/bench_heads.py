"""The cost of a target's heads per training step: each option of ``conf/target`` against the binary target,
in the same process, on the same network and batch.

A step is forward, the target's loss (``lungexp.training.losses.target_loss``), backward and an AdamW step of a
resnet3d-10 (widths 32-256, as the LIDC presets) on random 20³ patches, the network ending in one output per
logit of the target's heads. Example (the figures in docs/benchmarks.md):

    python scripts/bench_heads.py --steps 20 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lungexp.config.store import register_configs
from lungexp.data.labels.targets import TargetOptions
from lungexp.models import ResNet3D
from lungexp.models.heads import head_outputs
from lungexp.training.losses import target_loss
from lungexp.utils.dictconfig import CONFIG_DIR

TARGETS = ("binary", "multiclass", "ordinal", "lidc_attributes")


def target_options(name: str) -> TargetOptions:
    """The ``target`` group of the config composed with ``target=<name>``, as options."""
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        node = OmegaConf.to_container(compose("config", overrides=[f"target={name}"]).target, resolve=True)
    assert isinstance(node, dict)
    return TargetOptions.from_config(node)


def random_targets(target: TargetOptions, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Labels as the module hands them to the loss: float 0/1 for one binary head, class indices for another
    single head, and one column per head for several."""
    columns = [torch.randint(0, head.num_classes, (batch,), generator=generator) for head in target.heads]
    if len(columns) > 1:
        return torch.stack(columns, dim=1)
    return columns[0].float() if target.primary.kind == "binary" else columns[0]


def seconds_per_step(target: TargetOptions, batch: int, patch: int, warmup: int, steps: int) -> float:
    """The median wall time of a training step (after ``warmup`` untimed ones)."""
    torch.manual_seed(0)
    outputs = sum(head_outputs(head.kind, head.num_classes) for head in target.heads)
    net = ResNet3D(10, num_classes=outputs, widths=(32, 64, 128, 256))
    loss = target_loss(target)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, patch, patch, patch, generator=generator)
    labels = random_targets(target, batch, generator)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        logits = net(images)
        value = loss(logits.squeeze(-1) if outputs == 1 else logits, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    register_configs()
    baseline = None
    rows = []
    targets = {name: target_options(name) for name in TARGETS}
    for target in targets.values():  # one untimed round: the first network built pays for the allocator's growth
        seconds_per_step(target, args.batch_size, args.patch, args.warmup, 1)
    for name, target in targets.items():
        seconds = seconds_per_step(target, args.batch_size, args.patch, args.warmup, args.steps)
        baseline = baseline or seconds
        heads = ", ".join(f"{head.name} {head.kind} ({head_outputs(head.kind, head.num_classes)})"
                          for head in target.heads)
        rows.append((name, heads, seconds * 1000, seconds / baseline))
    if args.markdown:
        print("| target | heads (logits) | ms / step | vs binary |\n|---|---|---|---|")
        for name, heads, ms, ratio in rows:
            print(f"| `{name}` | {heads} | {ms:.1f} | {ratio:.3f}× |")
    else:
        for name, heads, ms, ratio in rows:
            print(f"{name:16s} {ms:8.1f} ms/step  {ratio:.3f}x  {heads}")


if __name__ == "__main__":
    main()
