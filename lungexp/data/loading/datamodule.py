"""The LightningDataModule: scans + label CSV -> patch cache -> series-level splits -> loaders (for a model that reads
no image, ``data.images=false``: the same samples and splits, their covariates and labels only, no patch cache).

Every option is declared and checked by :class:`~lungexp.data.options.DataOptions` when the datamodule is
made, before any data is generated, read or cached, so a typo in ``data.*`` fails in seconds, naming the
option and the closest valid value.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from lungexp.data.labels.covariates import covariate_values
from lungexp.data.labels.label_rules import labelled_key
from lungexp.data.labels.sample_table import (
    build_samples,
    limit_negatives,
    limit_training_negatives,
    task_labels,
)
from lungexp.data.labels.splits import check_splits, split_samples
from lungexp.data.labels.targets import TargetOptions, label_targets
from lungexp.data.loading.dataset import CovariateDataset, CovariateSamples, PatchDataset
from lungexp.data.loading.memory_cache import (
    DeviceBatches,
    check_fits,
    free_bytes,
    patch_bytes,
    read_into_memory,
)
from lungexp.data.options import DataOptions
from lungexp.data.patches.cache import PatchCache, build_patch_cache, find_patch_cache
from lungexp.data.patches.normalization import HUWindow
from lungexp.data.scans.scan_index import index_scans
from lungexp.data.synthetic import MANIFEST_NAME, generate_luna16_dataset
from lungexp.utils.errors import ConfigError, LungexpError

log = logging.getLogger(__name__)


class NoduleDataModule(pl.LightningDataModule):
    """Candidate patches around world coordinates, for nodule / malignancy classification.

    Args:
        train_transform: augmentation for training patches (TorchIO transform or any callable).
        checked: the options, checked already (:meth:`from_options`); None: ``**options`` are checked here.
        target: what each sample is (``target.*``): its heads' class indices are read from the labels CSV
            (:func:`~lungexp.data.labels.targets.label_targets`) and each batch's ``label`` holds them, one per
            head (``(B, heads)``) for a multitask target; None: the default binary ``label``.
        **options: the ``data.*`` options, by name: the fields of :class:`~lungexp.data.options.DataOptions`,
            which declares each (type, default, line of doc) and checks it; the signature lists them.

    Raises:
        ArgumentError: an option that cannot work, naming it (``split.method``, ...).
    """

    def __init__(self, train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 checked: DataOptions | None = None, target: TargetOptions | None = None, **options: Any) -> None:
        super().__init__()
        self.target = target or TargetOptions()
        if checked is not None and options:
            raise TypeError(f"NoduleDataModule takes checked options or options by name, not both ({sorted(options)})")
        self.options = checked if checked is not None else DataOptions(**options)
        if self.options.cache_memory == "device" and train_transform is not None:
            raise ConfigError("data.cache_memory=device gathers each batch on the device, where the per-patch "
                              "TorchIO augmentation cannot run: use aug=batch_light or aug=batch_strong (the same "
                              "transforms on the batch), aug=none, or data.cache_memory=ram")
        self.window = HUWindow(*self.options.hu_window, normalize=self.options.normalize)
        self.train_transform = train_transform
        self.cache: PatchCache | CovariateSamples | None = None
        self.datasets: dict[str, PatchDataset | CovariateDataset] = {}
        self.device_batches: dict[str, DeviceBatches] = {}  # data.cache_memory=device: train and val
        self._patches_in_ram: np.ndarray | None = None  # data.cache_memory=ram: the whole cache
        self._sample_table: tuple[pd.DataFrame, dict[str, Path]] | None = None

    @classmethod
    def from_options(cls, options: DataOptions, train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     target: TargetOptions | None = None) -> NoduleDataModule:
        """The datamodule of checked ``options`` (as :func:`lungexp.config.check.check` builds them)."""
        return cls(train_transform, checked=options, target=target)

    def prepare_data(self) -> None:
        """Generate the synthetic dataset if configured and absent, and build the patch cache.

        Lightning runs this in one process only, so :meth:`setup` relies on nothing it keeps: it finds the cache
        on disk.
        """
        self.build_cache()

    def build_cache(self) -> PatchCache | CovariateSamples:
        """This configuration's patch cache, built first (and the synthetic dataset generated) if missing; with
        ``data.images=false`` its samples alone, and no patch is extracted (:class:`CovariateSamples`).

        Sets no state but :meth:`sample_table`'s; fast when the cache exists (its key is found from the sample table).
        """
        options = self.options
        samples, scan_paths = self.sample_table()
        if not options.images:  # every sample: setup() caps training as on a complete cache
            return CovariateSamples(samples, options.covariates)
        complete = find_patch_cache(samples, scan_paths, options.patch, options.cache_dir)
        if complete is not None:  # every sample is cached already (e.g. by cross-validation): setup() caps training
            return complete
        samples = limit_training_negatives(samples, options.max_negatives_per_scan, options.split)
        return build_patch_cache(samples, scan_paths, options.patch, options.cache_dir,
                                 num_workers=options.preprocess_workers)

    def sample_table(self) -> tuple[pd.DataFrame, dict[str, Path]]:
        """Every sample of this configuration (the labels joined with the scans on disk, one row per patch) and
        the scan file of each series; generates the synthetic dataset first if configured and absent.

        Made once per datamodule: Lightning prepares the data again for each stage (fit, then test), and the table
        is the same each time; made anew, it would read every scan header again and log what it skips again."""
        if self._sample_table is None:
            self._sample_table = self._read_sample_table()
        return self._sample_table

    def _read_sample_table(self) -> tuple[pd.DataFrame, dict[str, Path]]:
        options = self.options
        if options.synthetic is not None:
            if not (options.root / MANIFEST_NAME).is_file():
                log.info("Generating the synthetic LUNA16-format dataset in %s (once)", options.root)
            generate_luna16_dataset(options.root, **options.synthetic)
        scans = index_scans(options.root)
        labels = task_labels(options.task, options.labels_csv, scans, options.cache_dir, options.annotations_csv,
                             options.excluded_csv, options.negatives, num_workers=options.preprocess_workers,
                             label_rule=options.label_rule)
        source = options.labels_csv or options.annotations_csv
        assert source is not None, "DataOptions requires labels_csv, or annotations_csv for sampled negatives"
        labels = label_targets(labels, self.target, source)
        covariate_values(labels, options.covariates, source)  # every row's, named by its CSV row, before any scan
        samples = build_samples(labels, scans, source=source, missing_scans=options.missing_scans,
                                outside=options.outside)
        if samples.empty:
            raise LungexpError(f"no samples: none of the series in {source} has a scan under "
                               f"{options.root}; check data.root and data.labels_csv")
        return samples, dict(zip(scans["seriesuid"], scans["path"], strict=True))

    def setup(self, stage: str | None = None) -> None:
        if "train" in self.datasets:
            return
        self.cache = self.build_cache()  # built by prepare_data (in this or another process)
        splits = split_samples(self.cache.index, self.options.split)
        # A no-op on a cache built with the cap; on a cache of every sample, the same seeded choice.
        splits["train"] = limit_negatives(splits["train"], self.options.max_negatives_per_scan, self.options.split.seed)
        check_splits(splits, group_by=self.options.split.group_by)
        for name, frame in splits.items():
            self.datasets[name] = self._dataset(frame.index.to_numpy(), name == "train")
        if self.options.cache_memory == "device" and self.options.images:
            self.device_batches = self._load_onto_device(("train", "val"))
        unit = "patches" if self.options.images else "samples"
        primary = self.target.primary
        for name, dataset in self.datasets.items():
            if primary.kind == "binary":
                negatives, positives = dataset.class_counts()
                counts = f"{positives} positive, {negatives} negative"
            else:
                per_class = np.bincount(splits[name]["label"].to_numpy(np.int64), minlength=primary.num_classes)
                counts = ", ".join(f"{count} {cls}" for cls, count in zip(primary.class_names, per_class, strict=True))
            log.info("%s: %d %s (%s) from %d series", name, len(dataset), unit, counts,
                     splits[name]["seriesuid"].nunique())

    def _dataset(self, rows: np.ndarray, training: bool = False) -> PatchDataset | CovariateDataset:
        """The samples ``rows`` of the open cache: patches (read into RAM once for ``data.cache_memory=ram``) and, with
        ``data.covariates``, their covariates; with ``data.images=false`` the covariates alone."""
        cache, covariates = self.opened_cache, self._covariates()
        if isinstance(cache, CovariateSamples):
            assert covariates is not None, "DataOptions requires covariates with images=false"
            return CovariateDataset(self._labels(cache.index), covariates, rows)
        if self.options.cache_memory == "ram" and self._patches_in_ram is None:
            self._patches_in_ram = self._read_into_ram()
        return PatchDataset(cache, rows, self.window, self.train_transform if training else None,
                            self._patches_in_ram, covariates, labels=self._labels(cache.index))

    def _labels(self, samples: pd.DataFrame) -> np.ndarray:
        """Each sample's label: ``(samples,)`` of one head, ``(samples, heads)`` of a multitask target's heads
        (:data:`~lungexp.data.labels.class_maps.MASKED` where a head has none)."""
        columns = list(self.target.label_columns)
        return samples[columns[0]].to_numpy() if len(columns) == 1 else samples[columns].to_numpy()

    def _read_into_ram(self) -> np.ndarray:
        """``data.cache_memory=ram``: the whole cache in host memory, once it is known to fit."""
        trainer, cache = self.trainer, self.patch_cache
        ranks = trainer.num_devices if trainer is not None and trainer.world_size > 1 else 1
        check_fits(patch_bytes(len(cache), self.options.patch.shape), free_bytes(torch.device("cpu")),
                   what=f"data.cache_memory=ram ({len(cache):,} patches, the whole cache)", where="host memory",
                   alternative="use data.cache_memory=mmap (read from disk as needed)", copies=ranks)
        return read_into_memory(cache)

    def _load_onto_device(self, names: tuple[str, ...]) -> dict[str, DeviceBatches]:
        """``data.cache_memory=device``: the patches of the splits ``names`` on the training device, once they
        are known to fit (under DDP every rank holds all of them on its own device)."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        count = sum(len(self.datasets[name]) for name in names)
        ranks = trainer.world_size if trainer is not None else 1
        held = f" on each of the {ranks} DDP ranks' devices" if ranks > 1 else ""
        # CPU "devices" of one machine share its memory; GPUs each have their own.
        copies = trainer.num_devices if trainer is not None and device.type == "cpu" and ranks > 1 else 1
        check_fits(patch_bytes(count, self.options.patch.shape), free_bytes(device),
                   what=f"data.cache_memory=device ({count:,} {' and '.join(names)} patches{held})",
                   where=str(device), copies=copies,
                   alternative="use data.cache_memory=ram (host memory) or mmap, or fewer training patches "
                               "(data.max_negatives_per_scan)")
        log.info("data.cache_memory=device: %d patches on %s", count, device)
        return {name: DeviceBatches.load(self.patch_cache.patches, self.datasets[name].rows, self.datasets[name].labels,
                                         self.window, device, self.datasets[name].covariates) for name in names}

    def _covariates(self) -> np.ndarray | None:
        """The ``data.covariates`` of every sample of the open cache, in cache row order (None without them)."""
        names = self.options.covariates
        if not names:
            return None
        return covariate_values(self.opened_cache.index, names, self.options.labels_csv or "the sample table")

    def setup_all(self) -> None:
        """Add the dataset ``all``: every sample, unsplit (an external test set, or the pooled test folds of a
        cross-validation, which together cover every series)."""
        if self.cache is None:
            self.cache = self.build_cache()
        self.datasets["all"] = self._dataset(np.arange(len(self.cache)))

    def split_series(self, name: str) -> list[str]:
        """The series of split ``name`` (``train``, ``val`` or ``test``), in cache order."""
        dataset = self.datasets[name]
        return list(dict.fromkeys(self.opened_cache.index["seriesuid"].to_numpy()[dataset.rows]))

    @property
    def opened_cache(self) -> PatchCache | CovariateSamples:
        """The patch cache :meth:`setup` opened (the samples alone with ``data.images=false``); an error naming what to
        call before it is open."""
        if self.cache is None:
            raise LungexpError("the datamodule's patch cache is not open: call prepare_data() and setup() first")
        return self.cache

    @property
    def patch_cache(self) -> PatchCache:
        """:attr:`opened_cache`, with its patches (not with ``data.images=false``)."""
        cache = self.opened_cache
        if not isinstance(cache, PatchCache):
            raise LungexpError("data.images=false: the samples have no patches")
        return cache

    @property
    def fingerprint(self) -> str | None:
        """The patch-cache key (hash of patch geometry, coordinates and scan files), combined with
        ``data.label_rule`` if one is set, once the data is set up."""
        if self.cache is None:
            return None
        key = self.cache.key if isinstance(self.cache, CovariateSamples) else self.cache.folder.name
        return labelled_key(key, self.options.label_rule, self.target.fingerprint())

    @property
    def train_covariates(self) -> np.ndarray:
        """``(training samples, k)`` covariates of the training split: what a model standardises them by."""
        covariates = self.datasets["train"].covariates
        if covariates is None:
            raise LungexpError("the datamodule has no covariates (data.covariates is empty)")
        return covariates

    @property
    def train_labels(self) -> np.ndarray:
        """The 0/1 labels of the training split, in the order of :attr:`train_covariates`."""
        return self.datasets["train"].labels

    @property
    def train_class_counts(self) -> tuple[int, int]:
        """(negatives, positives) of the training split (of the primary head); used for loss weighting."""
        return self.datasets["train"].class_counts()

    def _loader(self, name: str, **kwargs: Any) -> DataLoader:
        options = self.options
        if not options.images:  # a few numbers a sample: the whole split is one batch, read in this process
            dataset = self.datasets[name]
            return DataLoader(dataset, batch_size=max(len(dataset), 1), **kwargs)
        batches = self.device_batches.get(name)
        if batches is not None:
            # Positions in the split, drawn by the same samplers; the batch is gathered on the device in this
            # process, so there is nothing for workers to do and nothing to pin.
            positions = range(len(self.datasets[name]))  # map-style: len() and [i], all a DataLoader needs
            return DataLoader(positions, batch_size=options.batch_size, collate_fn=batches,  # type: ignore[arg-type]
                              **kwargs)
        return DataLoader(self.datasets[name], batch_size=options.batch_size, num_workers=options.num_workers,
                          pin_memory=options.pin_memory, persistent_workers=options.num_workers > 0,
                          worker_init_fn=leave_sigterm_to_parent, **kwargs)

    def train_dataloader(self) -> DataLoader:
        if not self.options.images:  # one batch of the whole training split, in table order: a full-batch fit
            return self._loader("train")
        # Per-epoch seeded order, and the loader's own generator: creating its iterator then leaves the global
        # RNG (augmentation) alone, so epoch e draws the same after a resume (lungexp.training.resume).
        labels = self.datasets["train"].labels  # a multitask target's: balanced by its (binary) primary head
        sampler = self.options.balance.sampler_for(labels if labels.ndim == 1 else labels[:, 0],
                                                   seed=torch.initial_seed())
        return self._loader("train", sampler=sampler, drop_last=False, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", sampler=self._evaluation_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", sampler=self._evaluation_sampler("test"))

    def _evaluation_sampler(self, name: str) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each rank's disjoint share of the split, unpadded: Lightning's default
        ``DistributedSampler`` repeats patches to even out the ranks, which would count them twice in the
        metrics reduced across ranks. Lightning predicts with the same sampler: evaluation syncs no gradients."""
        trainer = self.trainer
        if trainer is None or trainer.world_size < 2:
            return None
        return UnrepeatedDistributedSampler(self.datasets[name], num_replicas=trainer.world_size,
                                            rank=trainer.global_rank, shuffle=False)


def leave_sigterm_to_parent(worker_id: int) -> None:
    """A DataLoader worker's start: SIGTERM ignored, then Lightning's per-worker seeding (which Lightning adds only to
    loaders without a ``worker_init_fn``).

    Schedulers (``timeout``, SLURM) send SIGTERM to the whole process group: a worker that died of it would turn
    the training process's clean stop (:func:`lungexp.training.pipeline.stopped_by_sigterm`) into a crash. The
    training process shuts its workers down itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):  # set by seed_everything(workers=True)
        pl_worker_init_function(worker_id)


# The options' names and defaults in the signature: for Hydra's argument check (a typo'd data.* key names the
# closest option), for help() and for editors; DataOptions is where they are declared.
NoduleDataModule.__init__.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("train_transform", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation="Callable[[torch.Tensor], torch.Tensor] | None"),
    *DataOptions.parameters(),
], return_annotation=None)
