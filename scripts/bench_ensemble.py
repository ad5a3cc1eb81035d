"""What a fold ensemble and test-time flips cost per candidate, against one checkpoint, in one process.

    python scripts/bench_ensemble.py CKPT [--members 5] [--patches 256] [--repeats 3]

Scores the same random HU patches (the checkpoint's patch size) with one checkpoint, an ensemble of
``--members`` copies of it (each member runs its network, as a CV's folds would), and both with
``tta=flips``, alternating the four for each repeat and taking medians, so a busy machine slows all alike.
Prints ms per candidate and each as a ratio to the single checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    member = Predictor(args.checkpoint, device="cpu")
    patch = member.recipe.patch
    patches = np.random.default_rng(0).uniform(
        -1000, 400, (args.patches, patch.channels, patch.size, patch.size, patch.size)).astype(np.float32)
    sides = {"one checkpoint": Ensemble([member]), f"{args.members} members": Ensemble([member] * args.members),
             "one checkpoint, tta=flips": Ensemble([member], tta="flips"),
             f"{args.members} members, tta=flips": Ensemble([member] * args.members, tta="flips")}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, predictor in sides.items():
            start = time.perf_counter()
            predictor.patch_probabilities(patches, batch_size=64)
            seconds[name].append(time.perf_counter() - start)
    baseline = statistics.median(seconds["one checkpoint"])
    print(f"{args.checkpoint.name}: {member.recipe.net['_target_'].rsplit('.', 1)[-1]}, {patch.size}^3 patches, "
          f"{args.patches} candidates, {args.threads} thread(s), median of {args.repeats}")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"  {name:<28} {1000 * median / args.patches:8.2f} ms/candidate  {median / baseline:6.1f}x")


if __name__ == "__main__":
    main()
