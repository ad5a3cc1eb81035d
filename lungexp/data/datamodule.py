"""The LightningDataModule: scans + label CSV -> patch cache -> series-level splits -> loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from lungexp.data.annotations import read_excluded_annotations
from lungexp.data.cache import PatchCache, build_patch_cache, find_patch_cache
from lungexp.data.candidates import drop_excluded, sampled_candidates
from lungexp.data.dataset import HUWindow, PatchDataset
from lungexp.data.io import index_scans
from lungexp.data.patches import PatchSpec
from lungexp.data.samples import build_samples, limit_negatives, read_labels
from lungexp.data.splits import check_splits, split_by_folds, split_by_series, split_by_subset

log = logging.getLogger(__name__)


class NoduleDataModule(pl.LightningDataModule):
    """Candidate patches around world coordinates, for nodule / malignancy classification.

    Args:
        root: folder of scans (``subsetK/<seriesuid>.mhd`` for LUNA16; any nesting of
            ``.mhd``/``.nii``/``.nii.gz``/``.nrrd`` files named by seriesuid otherwise).
        labels_csv: the task's CSV (see :func:`lungexp.data.samples.read_labels`).
        task: ``candidates`` | ``malignancy`` | ``points``.
        cache_dir: where patch caches live.
        patch: :meth:`PatchSpec.from_config` arguments (size, spacing_mm, size_mm, pad_hu).
        hu_window: ``[low, high]`` HU kept (clipped outside).
        normalize: ``unit`` ([0, 1]), ``symmetric`` ([-1, 1]) or ``zscore`` (per patch), see :class:`HUWindow`.
        split: ``{method: subsets, fold, val_fold}``, ``{method: series, val_fraction, test_fraction, seed,
            group_by}`` or ``{method: folds, num_folds, fold, val_fold, seed, group_by}`` (``group_by``:
            ``seriesuid`` or a patient column of the labels CSV).
        balance: ``{sampler: none|balanced, positive_fraction, samples_per_epoch}``.
        synthetic: if given, keyword arguments of
            :func:`lungexp.data.synthetic.generate_luna16_dataset`, run when ``root`` is missing.
        train_transform: augmentation for training patches (TorchIO transform or any callable).
        missing_scans / outside: ``error`` or ``skip``, see :func:`build_samples`.
        annotations_csv: LUNA16 ``annotations.csv``; with ``task=candidates`` and no ``labels_csv`` on
            disk, positives come from it and negatives are sampled from the lungs (``negatives``).
        excluded_csv: LUNA16 ``annotations_excluded.csv``; negatives on these findings are dropped.
        negatives: :func:`lungexp.data.candidates.sampled_candidates` options (count, vessel_fraction,
            margin_mm, seed).
        max_negatives_per_scan: keep at most this many negatives of each training scan (seeded by
            ``split.seed``); validation and test scans keep all. null keeps all.
    """

    def __init__(
        self,
        root: str,
        labels_csv: str,
        task: str = "candidates",
        cache_dir: str = "data/cache",
        patch: dict[str, Any] | None = None,
        hu_window: Sequence[float] = (-1000.0, 400.0),
        normalize: str = "unit",
        split: dict[str, Any] | None = None,
        balance: dict[str, Any] | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        preprocess_workers: int = 2,
        pin_memory: bool = False,
        synthetic: dict[str, Any] | None = None,
        train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        missing_scans: str = "skip",
        outside: str = "error",
        in_channels: int | None = None,
        annotations_csv: str | None = None,
        excluded_csv: str | None = None,
        negatives: dict[str, Any] | None = None,
        max_negatives_per_scan: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.labels_csv = Path(labels_csv)
        self.task = task
        self.cache_dir = Path(cache_dir)
        self.spec = PatchSpec.from_config(**(patch or {}))
        if in_channels is not None and in_channels != self.spec.channels:
            raise ValueError(f"data.in_channels={in_channels} but the patch has {self.spec.channels} "
                             f"channel(s) (one per data.patch.spacing_mm entry)")
        self.window = HUWindow(*hu_window, normalize=normalize)
        self.split_config = dict(split or {"method": "subsets", "fold": 0, "val_fold": 1})
        self.balance = dict(balance or {"sampler": "none"})
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocess_workers = preprocess_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.train_transform = train_transform
        self.missing_scans = missing_scans
        self.outside = outside
        self.annotations_csv = Path(annotations_csv) if annotations_csv else None
        self.excluded_csv = Path(excluded_csv) if excluded_csv else None
        self.negatives = dict(negatives or {})
        self.max_negatives_per_scan = max_negatives_per_scan
        self.cache: PatchCache | None = None
        self.datasets: dict[str, PatchDataset] = {}

    def prepare_data(self) -> None:
        """Generate the synthetic dataset if configured and absent, then build the patch cache (rank 0 only)."""
        if self.synthetic is not None:
            from lungexp.data.synthetic import MANIFEST_NAME, generate_luna16_dataset

            if not (self.root / MANIFEST_NAME).is_file():
                log.info("Generating the synthetic LUNA16-format dataset in %s (once)", self.root)
            generate_luna16_dataset(self.root, **self.synthetic)
        self.cache = self._load_cache()

    def _load_cache(self) -> PatchCache:
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {self.root} does not exist; point data.root at your scans")
        scans = index_scans(self.root)
        samples = build_samples(self._labels(scans), scans,
                                source=self.labels_csv, missing_scans=self.missing_scans, outside=self.outside)
        if samples.empty:
            raise ValueError(f"no samples: none of the series in {self.labels_csv} has a scan under {self.root}")
        scan_paths = dict(zip(scans["seriesuid"], scans["path"], strict=True))
        complete = find_patch_cache(samples, scan_paths, self.spec, self.cache_dir)
        if complete is not None:  # every sample is cached already (e.g. by cross-validation): setup() caps training
            return complete
        return build_patch_cache(self._limit_training_negatives(samples), scan_paths, self.spec, self.cache_dir,
                                 num_workers=self.preprocess_workers)

    def _limit_training_negatives(self, samples: pd.DataFrame) -> pd.DataFrame:
        """``max_negatives_per_scan`` caps the training split only: validation and test keep every candidate
        of their scans, as a true FROC/CPM needs."""
        if self.max_negatives_per_scan is None:
            return samples
        train = self._split(samples)["train"]
        kept = limit_negatives(train, self.max_negatives_per_scan, self.split_config.get("seed", 0))
        return samples.drop(train.index.difference(kept.index)).reset_index(drop=True)

    def _labels(self, scans: pd.DataFrame) -> pd.DataFrame:
        """The task's labelled points; for candidates, sampled ones if there is no candidates file."""
        if self.task != "candidates":
            return read_labels(self.task, self.labels_csv)
        if not self.labels_csv.is_file() and self.annotations_csv is not None and self.annotations_csv.is_file():
            log.warning("%s not found: positives are the nodules of %s, negatives are sampled from the lungs",
                        self.labels_csv, self.annotations_csv)
            labels = sampled_candidates(self.annotations_csv, scans, self.cache_dir,
                                        num_workers=self.preprocess_workers, **self.negatives)
            labels = labels.rename(columns={"class": "label"})
        else:
            labels = read_labels(self.task, self.labels_csv)
        if self.excluded_csv is not None and self.excluded_csv.is_file():
            labels = drop_excluded(labels, read_excluded_annotations(self.excluded_csv), self.labels_csv)
        return labels

    def setup(self, stage: str | None = None) -> None:
        if "train" in self.datasets:
            return
        if self.cache is None:  # prepare_data ran in another process (DDP rank > 0) or not at all
            self.cache = self._load_cache()
        splits = self._split(self.cache.index)
        # A no-op on a cache built with the cap; on a cache of every sample, the same seeded choice.
        splits["train"] = limit_negatives(splits["train"], self.max_negatives_per_scan, self.split_config.get("seed", 0))
        check_splits(splits, group_by=self.split_config.get("group_by", "seriesuid"))
        for name, frame in splits.items():
            transform = self.train_transform if name == "train" else None
            self.datasets[name] = PatchDataset(self.cache, frame.index.to_numpy(), self.window, transform)
        for name, dataset in self.datasets.items():
            negatives, positives = dataset.class_counts()
            log.info("%s: %d patches (%d positive, %d negative) from %d series", name, len(dataset), positives,
                     negatives, splits[name]["seriesuid"].nunique())

    def _split(self, samples: pd.DataFrame) -> dict[str, pd.DataFrame]:
        config = dict(self.split_config)
        method = config.pop("method", "subsets")
        if method == "subsets":
            return split_by_subset(samples, test_fold=config["fold"], val_fold=config["val_fold"])
        if method == "series":
            return split_by_series(samples, config["val_fraction"], config["test_fraction"], config["seed"],
                                   group_by=config.get("group_by", "seriesuid"))
        if method == "folds":
            return split_by_folds(samples, config["num_folds"], config["fold"], config["val_fold"], config["seed"],
                                  group_by=config.get("group_by", "seriesuid"))
        raise ValueError(f"unknown data.split.method '{method}'; choose 'subsets' (LUNA16 folds), 'series' or "
                         "'folds'")

    def setup_all(self) -> None:
        """Add the dataset ``all``: every sample, unsplit (an external test set, or the pooled test folds of a
        cross-validation, which together cover every series)."""
        if self.cache is None:
            self.cache = self._load_cache()
        self.datasets["all"] = PatchDataset(self.cache, np.arange(len(self.cache)), self.window)

    def split_series(self, name: str) -> list[str]:
        """The series of split ``name`` (``train``, ``val`` or ``test``), in cache order."""
        dataset = self.datasets[name]
        return list(dict.fromkeys(self.cache.index["seriesuid"].to_numpy()[dataset.rows]))

    @property
    def train_class_counts(self) -> tuple[int, int]:
        """(negatives, positives) of the training split; used for loss weighting."""
        return self.datasets["train"].class_counts()

    def _loader(self, name: str, **kwargs: Any) -> DataLoader:
        return DataLoader(self.datasets[name], batch_size=self.batch_size, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        sampler = self._train_sampler()
        return self._loader("train", sampler=sampler, shuffle=sampler is None, drop_last=False)

    def _train_sampler(self) -> WeightedRandomSampler | None:
        """Balanced sampling: each epoch draws positives with probability ``positive_fraction``."""
        kind = self.balance.get("sampler", "none")
        if kind == "none":
            return None
        if kind != "balanced":
            raise ValueError(f"unknown data.balance.sampler '{kind}'; choose 'none' or 'balanced'")
        labels = self.datasets["train"].labels
        fraction = float(self.balance.get("positive_fraction", 0.5))
        positives = labels.sum()
        weights = np.where(labels > 0, fraction / positives, (1 - fraction) / (len(labels) - positives))
        num_samples = self.balance.get("samples_per_epoch") or len(labels)
        return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), int(num_samples),
                                     replacement=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
