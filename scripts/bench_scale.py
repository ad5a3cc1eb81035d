"""A LUNA16-sized rehearsal: the data path, training and prediction at LUNA16's scale, extrapolated to 888 scans.

Generates N full-size scans (512 x 512 x 300, ~850 candidates each) with the project's synthetic generator,
and a candidates_V2.csv with LUNA16's 754,975 rows: the rows of the N scans plus rows of the other
888 - N series, which are not on disk and are skipped as ``data.missing_scans=skip`` does (a partial
LUNA16 download); an annotations_excluded.csv with ~1.7 findings per series (an assumption: about what
LUNA16's file has). Then, with ``experiment=luna16_fpr`` (3 x 20^3 multi-scale patches, cnn3d with 64
kernels, batch 128):

1. the sample table of the full CSV (read, duplicates, excluded findings, scans joined, points checked);
2. the patch cache of every candidate of the N scans with 1 and with 2 worker processes: seconds per
   scan, cache size;
3. the peak memory of every step, all processes together (proportional set size, so pages shared by
   processes count once), and its anonymous part (without file pages such as the memory-mapped cache,
   which the kernel can drop);
4. loader throughput (training split, aug=light, data.num_workers) and training throughput;
5. predicting a whole test fold (every candidate of subset0) from a checkpoint, as ``lungexp.predict``.

    python scripts/bench_scale.py --scans 20 [--workdir DIR] [--trainer cpu|gpu]

Goals (issue 10): sample table <= 10 s; cache <= 2 s per scan per core; peak memory <= 4 GB whatever the
number of scans; loader faster than training. Needs about 160 MB of disk per scan plus the caches.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import psutil
import pytorch_lightning as pl
from bench_train import StepTimer
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lungexp.config.store import register_configs
from lungexp.data.names import ANNOTATION_COLUMNS, CANDIDATE_COLUMNS, LABEL_KEY
from lungexp.data.patches.cache import build_patch_cache
from lungexp.data.synthetic import MANIFEST_NAME, generate_luna16_dataset
from lungexp.data.synthetic.acquisition import series_uid
from lungexp.inference.candidate_scoring import predict_candidates, read_candidates
from lungexp.inference.model import Predictor
from lungexp.inference.scans import open_scans
from lungexp.training.checkpoint import ModelRecipe, SaveRecipe
from lungexp.utils.dictconfig import CONFIG_DIR

LUNA16_SCANS = 888
LUNA16_CANDIDATES = 754_975
LUNA16_NODULE_CANDIDATES = 1_557  # class 1 rows of candidates_V2.csv
EXCLUDED_PER_SCAN = 1.7
SHAPE_ZYX = (300, 512, 512)
NEGATIVES_PER_SCAN = 849  # plus 1-2 nodules: ~850 candidates per scan, LUNA16's average
GIB = 1024**3


class PeakMemory:
    """Peak memory of this process and all its children, sampled every 50 ms while the block runs.

    Proportional set sizes (Linux ``smaps_rollup``): pages shared by several processes, such as a forked
    DataLoader worker's copy-on-write view of its parent, count once in all, not once per process as RSS
    would; ``anonymous`` leaves out file pages (the memory-mapped cache), which the kernel can drop.
    """

    def __init__(self) -> None:
        self.total = self.anonymous = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = anonymous = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    lines = Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines()
                except OSError:  # ended meanwhile
                    continue
                fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines[1:]}
                total += fields["Pss"]
                anonymous += fields["Pss_Anon"]
            self.total, self.anonymous = max(self.total, total), max(self.anonymous, anonymous)
            self._stop.wait(0.05)

    def describe(self) -> str:
        return f"{self.total / GIB:.2f} GiB ({self.anonymous / GIB:.2f} GiB anonymous)"


def generate(root: Path, scans: int, seed: int) -> float | None:
    """The N scans, in a child process (the generator's own memory is not what is measured); seconds, or None
    when an earlier run generated them."""
    if (root / MANIFEST_NAME).is_file():
        return None
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(generate_luna16_dataset, root, num_scans=scans, num_subsets=10, shape_zyx=SHAPE_ZYX,
                    nodules_per_scan=(1, 2), negatives_per_scan=NEGATIVES_PER_SCAN, seed=seed).result()
    return time.perf_counter() - started


def luna16_sized_tables(root: Path, workdir: Path, seed: int) -> tuple[Path, Path]:
    """candidates_V2.csv with 754,975 rows and annotations_excluded.csv over 888 series (see module doc)."""
    rng = np.random.default_rng(seed)
    on_disk = pd.read_csv(root / "candidates_V2.csv", dtype={"seriesuid": str})
    absent = [series_uid(rng) for _ in range(LUNA16_SCANS - on_disk["seriesuid"].nunique())]
    rows = LUNA16_CANDIDATES - len(on_disk)
    filler = pd.DataFrame({
        "seriesuid": np.sort(rng.choice(absent, rows)),
        "coordX": rng.uniform(-150, 150, rows).round(2), "coordY": rng.uniform(-150, 150, rows).round(2),
        "coordZ": rng.uniform(-300, 0, rows).round(2),
        "class": (rng.random(rows) < (LUNA16_NODULE_CANDIDATES - on_disk["class"].sum()) / rows).astype(int),
    })
    candidates = pd.concat([on_disk, filler])[CANDIDATE_COLUMNS].sort_values("seriesuid", kind="stable")
    candidates_csv = workdir / "candidates_V2.csv"
    candidates.to_csv(candidates_csv, index=False)

    # excluded findings: some on negative candidates of the scans on disk (so some are dropped), the rest elsewhere
    findings = candidates.sample(int(EXCLUDED_PER_SCAN * LUNA16_SCANS), random_state=seed)
    excluded = findings.assign(diameter_mm=rng.uniform(3, 10, len(findings)).round(2))[ANNOTATION_COLUMNS]
    excluded_csv = workdir / "annotations_excluded.csv"
    excluded.sort_values("seriesuid").to_csv(excluded_csv, index=False)
    return candidates_csv, excluded_csv


def bench_config(root: Path, workdir: Path, candidates_csv: Path, excluded_csv: Path, trainer: str) -> DictConfig:
    overrides = ["experiment=luna16_fpr", f"trainer={trainer}", f"data.root={root}", f"data.labels_csv={candidates_csv}",
                 f"data.excluded_csv={excluded_csv}", f"data.cache_dir={workdir / 'cache2'}",
                 "data.split.fold=0", "data.split.val_fold=1",  # subsets 0 and 1 exist from 2 scans on
                 "data.max_negatives_per_scan=null",  # one cache of every candidate, as cross-validation builds
                 f"paths.root_dir={workdir}", f"paths.output_dir={workdir / 'output'}"]
    register_configs()  # as the entry points do before composing
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def row(name: str, value: str, goal: str = "") -> None:
    print(f"| {name} | {value} | {goal} |", flush=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=20,
                        help="full-size scans to generate, at least 3 (test, validation, training); the issue asks >= 20")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, deleted at the end")
    parser.add_argument("--trainer", default="cpu", help="trainer option: cpu (bf16-mixed) or gpu")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps (after 2 warm-up steps)")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches (after the first)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.scans < 3:
        parser.error("--scans must be at least 3: one scan each for the test, validation and training splits")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lungexp-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    root = workdir / f"luna16_{args.scans}_scans"  # reused by a rerun with the same number of scans
    generation_s = generate(root, args.scans, args.seed)
    scan_bytes = folder_bytes(root) / args.scans
    candidates_csv, excluded_csv = luna16_sized_tables(root, workdir, args.seed)
    cfg = bench_config(root, workdir, candidates_csv, excluded_csv, args.trainer)
    generated = "reused" if generation_s is None else f"generated in {generation_s / args.scans:.0f} s per scan"
    print(f"{args.scans} scans of {SHAPE_ZYX[2]}x{SHAPE_ZYX[1]}x{SHAPE_ZYX[0]} voxels ({generated}); "
          f"experiment=luna16_fpr, trainer={args.trainer}")
    print("| measurement | value | goal |\n|---|---|---|", flush=True)

    # 1. the sample table of the full CSV
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    with PeakMemory() as memory:
        started = time.perf_counter()
        samples, scan_paths = datamodule.sample_table()
        table_s = time.perf_counter() - started
    row(f"sample table of the {LUNA16_CANDIDATES:,}-row CSV ({len(samples):,} samples on disk)",
        f"{table_s:.1f} s, peak {memory.describe()}", "<= 10 s")

    # 2. the patch cache with 1 and 2 worker processes
    per_scan, cache = {}, None
    for workers in (1, 2):
        cache_dir = workdir / f"cache{workers}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        with PeakMemory() as memory:
            started = time.perf_counter()
            cache = build_patch_cache(samples, scan_paths, datamodule.options.patch, cache_dir, num_workers=workers,
                                      progress=False)
            per_scan[workers] = (time.perf_counter() - started) / args.scans
        row(f"patch cache, {workers} worker(s): per scan ({len(samples) / args.scans:.0f} patches)",
            f"{per_scan[workers]:.2f} s, peak {memory.describe()}", "<= 2 s per core" if workers == 1 else "")
    cache_bytes_per_patch = folder_bytes(cache.folder) / len(cache)

    # 3. loader and training throughput (the cache of step 2 with 2 workers is this config's cache)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    with PeakMemory() as memory:
        batches = iter(loader)
        next(batches)  # workers started
        started, seen = time.perf_counter(), 0
        for _, batch in zip(range(args.loader_batches), batches, strict=False):
            seen += len(batch[LABEL_KEY])
        loader_rate = seen / (time.perf_counter() - started)
    row(f"loader, training split, aug=light, {datamodule.options.num_workers} workers",
        f"{loader_rate:.0f} samples/s, peak {memory.describe()}")

    model = hydra.utils.instantiate(cfg.model, evaluation=cfg.eval, _convert_="partial")
    timer = StepTimer(warmup=2)
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision, max_epochs=1,
                         limit_train_batches=args.train_steps + 2, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[timer, SaveRecipe(ModelRecipe.from_config(cfg))])
    with PeakMemory() as memory:
        trainer.fit(model, datamodule=datamodule)
    train_rate = args.train_steps * datamodule.options.batch_size / (timer.ended - timer.started)
    row(f"training, {cfg.trainer.precision}, batch {datamodule.options.batch_size}",
        f"{train_rate:.1f} samples/s, peak {memory.describe()}")
    row("loader / training throughput", f"{loader_rate / train_rate:.1f}x", "> 1x")

    # 4. a whole test fold through lungexp.predict's code
    checkpoint = workdir / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    fold_scans = open_scans(root / "subset0")
    fold_csv = workdir / "fold_candidates.csv"
    full = pd.read_csv(candidates_csv, dtype={"seriesuid": str})
    full[full["seriesuid"].isin(fold_scans.seriesuids)].to_csv(fold_csv, index=False)
    with PeakMemory() as memory:
        started = time.perf_counter()
        predictor = Predictor(checkpoint, device="auto")
        scored = predict_candidates(predictor, fold_scans, read_candidates(fold_csv, fold_scans), source=fold_csv)
        predict_s = (time.perf_counter() - started) / len(fold_scans.seriesuids)
    row(f"predict a test fold ({len(fold_scans.seriesuids)} scan(s), {len(scored):,} candidates): per scan",
        f"{predict_s:.2f} s, peak {memory.describe()}")

    epoch_s = cfg.data.balance.samples_per_epoch / train_rate
    print(f"\nExtrapolated to LUNA16 ({LUNA16_SCANS} scans, {LUNA16_CANDIDATES:,} candidates):")
    print(f"| scans on disk (int16 .raw) | {scan_bytes * LUNA16_SCANS / GIB:.0f} GiB |")
    print(f"| patch cache of every candidate | {cache_bytes_per_patch * LUNA16_CANDIDATES / GIB:.1f} GiB |")
    for workers, seconds in per_scan.items():
        print(f"| cache build, {workers} worker(s) | {seconds * LUNA16_SCANS / 3600:.2f} h |")
    print(f"| one training epoch ({cfg.data.balance.samples_per_epoch:,} draws) | {epoch_s / 60:.1f} min; "
          f"{cfg.trainer.max_epochs} epochs x 10 folds: {epoch_s * cfg.trainer.max_epochs * 10 / 3600:.1f} h |")
    print(f"| predicting every fold's test scans | {predict_s * LUNA16_SCANS / 3600:.2f} h |")
    if generation_s is not None:
        print(f"| generating the scans (this script) | {generation_s / args.scans * LUNA16_SCANS / 3600:.1f} h |")


if __name__ == "__main__":
    main()
