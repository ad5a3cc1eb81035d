"""Cost of the evaluation layer: LUNA16 CPM on a LUNA16-sized candidate set, and Grad-CAM per sample.

CPM: 750,000 generated candidates on 888 scans with 1,186 nodules in 601 of them (LUNA16's sizes),
about 4 candidates on each nodule and the rest spread through the scan. The baseline is scikit-learn's
``roc_curve`` on the same number of scores (one sort, the core of any FROC). Grad-CAM: maps of a batch
of 32³ patches against a plain forward pass of the same batch, per model. Example:

    python scripts/bench_eval.py --repeats 3 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve
from torch import nn

from lungexp.metrics.luna16_froc import compute_froc
from lungexp.models import CNN3D, DenseNet3D, ResNet3D
from lungexp.visualize.gradcam import gradcam_heatmaps, last_conv3d

LUNA16_SCANS, LUNA16_SCANS_WITH_NODULES, LUNA16_NODULES = 888, 601, 1186
MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn3d": CNN3D,
    "resnet3d-18": partial(ResNet3D, 18),
    "densenet3d": DenseNet3D,
}


def luna16_sized(candidates: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, annotations) with LUNA16's numbers of scans and nodules."""
    rng = np.random.default_rng(seed)
    scans = np.array([f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{i:030d}" for i in range(LUNA16_SCANS)])
    nodule_scans = rng.choice(scans[: LUNA16_SCANS_WITH_NODULES], LUNA16_NODULES)
    nodule_xyz = rng.uniform(-150, 150, (LUNA16_NODULES, 3))
    annotations = pd.DataFrame({"seriesuid": nodule_scans, "coordX": nodule_xyz[:, 0], "coordY": nodule_xyz[:, 1],
                                "coordZ": nodule_xyz[:, 2], "diameter_mm": rng.uniform(3, 30, LUNA16_NODULES)})
    near = 4 * LUNA16_NODULES
    which = rng.integers(LUNA16_NODULES, size=near)
    xyz = np.concatenate([nodule_xyz[which] + rng.normal(0, 2, (near, 3)),
                          rng.uniform(-150, 150, (candidates - near, 3))])
    uids = np.concatenate([nodule_scans[which], rng.choice(scans, candidates - near)])
    probability = np.concatenate([rng.beta(5, 2, near), rng.beta(1, 20, candidates - near)])
    predictions = pd.DataFrame({"seriesuid": uids, "coordX": xyz[:, 0], "coordY": xyz[:, 1], "coordZ": xyz[:, 2],
                                "probability": probability})
    return predictions, annotations


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cpm(candidates: int, repeats: int, markdown: bool) -> None:
    predictions, annotations = luna16_sized(candidates)
    labels = np.random.default_rng(1).integers(0, 2, candidates)
    result = compute_froc(predictions, annotations)
    froc = median_seconds(lambda: compute_froc(predictions, annotations), repeats)
    baseline = median_seconds(lambda: roc_curve(labels, predictions["probability"]), repeats)
    print(f"CPM of {candidates:,} candidates, {LUNA16_SCANS} scans, {LUNA16_NODULES} nodules "
          f"(CPM {result.cpm:.3f}, {result.num_found} nodules hit)")
    rows = [("compute_froc (match + curve + CPM)", froc), ("sklearn roc_curve, same scores", baseline)]
    if markdown:
        print("\n| measurement | seconds |\n|---|---|")
        print("\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in rows))
        print(f"| **ratio compute_froc / roc_curve** | **{froc / baseline:.1f}×** |")
    else:
        for name, seconds in rows:
            print(f"  {name:<40} {seconds:.2f} s")
        print(f"  ratio {froc / baseline:.1f}x   goal: compute_froc <= 5 s")


def bench_gradcam(batch: int, patch: int, repeats: int, markdown: bool) -> None:
    images = torch.rand(batch, 1, patch, patch, patch)
    rows = []
    for name, build in MODELS.items():
        torch.manual_seed(0)
        net = build().eval()
        layer = last_conv3d(net, images.shape[1:])

        def forward(net: nn.Module = net) -> None:
            with torch.no_grad():
                net(images)

        forward()
        gradcam_heatmaps(net, images[:1], layer)  # warm-up
        plain = median_seconds(forward, repeats)
        cam = median_seconds(lambda net=net, layer=layer: gradcam_heatmaps(net, images, layer), repeats)
        rows.append((name, layer, plain / batch * 1e3, cam / batch * 1e3, cam / plain))
    print(f"\nGrad-CAM on {patch}³ patches, batch {batch}, fp32 on CPU, {torch.get_num_threads()} threads")
    if markdown:
        print("\n| model | explained layer | forward (ms/sample) | Grad-CAM (ms/sample) | ratio |\n|---|---|---|---|---|")
        print("\n".join(f"| {m} | `{layer}` | {f:.1f} | {c:.1f} | {r:.1f}× |" for m, layer, f, c, r in rows))
    else:
        for model, layer, plain, cam, ratio in rows:
            print(f"  {model:<13} {layer:<24} forward {plain:7.1f} ms  Grad-CAM {cam:7.1f} ms/sample  ({ratio:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=750_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="Grad-CAM batch")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    bench_cpm(args.candidates, args.repeats, args.markdown)
    bench_gradcam(args.batch, args.patch, args.repeats, args.markdown)


if __name__ == "__main__":
    main()
