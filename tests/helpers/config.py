"""Composing the real configs as ``python -m lungexp.run`` does, shrunk so tests run in seconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lungexp.config.store import register_configs
from lungexp.utils import dictconfig

register_configs()  # as each entry point does, so that the tests' compose() reads the same conf/

CONFIG_DIR = Path(dictconfig.CONFIG_DIR)  # the folder the entry points read
PROJECT_ROOT = CONFIG_DIR.parent

# A few tiny scans, 2 per LUNA16-style subset, so every split has both classes.
TINY_SYNTHETIC = {
    "num_scans": 10,
    "num_subsets": 5,
    "shape_zyx": [48, 96, 96],
    "nodules_per_scan": [3, 4],
    "negatives_per_scan": 8,
    "seed": 0,
}

# Overrides that make any composed config fast on 2 CPU cores.
FAST_OVERRIDES = [
    "data.patch.size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.preprocess_workers=0",
]

# The test stage's report without its slowest parts (the bootstrap intervals, the montage of worst errors, the
# Grad-CAM pictures: about half of a tiny run), for tests that check none of them.
NO_REPORT_EXTRAS = ["eval.bootstrap=0", "eval.montage_k=0", "eval.gradcam.samples=0"]

# Small widths per model, keyed by the `model=` option (the tabular model: the covariate it needs).
TINY_NETS = {
    "cnn3d": ["model.net.widths=[4,8]"],
    "resnet3d": ["model.net.depth=10", "model.net.widths=[4,8,8,8]"],
    "densenet3d": ["model.net.growth_rate=4", "model.net.block_config=[1,1]", "model.net.num_init_features=8"],
    "se_resnet3d": ["model.net.depth=10", "model.net.widths=[4,8,8,8]"],
    "cbam_resnet3d": ["model.net.depth=10", "model.net.widths=[8,8,8,8]"],
    "tabular": ["model.covariates=[coordZ]"],  # no image: a numeric column every labels CSV has
}
IMAGE_MODELS = sorted(set(TINY_NETS) - {"tabular"})  # the networks of images (Grad-CAM, covariate fusion)


def tiny_synthetic_overrides() -> list[str]:
    """``data.synthetic.*`` overrides that make `data=synthetic` generate the tiny dataset."""
    return [f"data.synthetic.{k}={v}".replace(" ", "") for k, v in TINY_SYNTHETIC.items()]


def tiny_data_overrides(root: Path, cache_dir: Path) -> list[str]:
    """Read the session's pre-generated tiny dataset (so no test regenerates it)."""
    return [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.synthetic=null", *FAST_OVERRIDES]


def mlflow_overrides(mlflow_dir: Path) -> list[str]:
    """Log to the MLflow store in ``mlflow_dir`` (tests share one per session)."""
    return [f"paths.mlflow_uri=sqlite:///{mlflow_dir}/mlflow.db", f"paths.mlflow_artifacts={mlflow_dir}/artifacts"]


def tiny_run_overrides(data_root: Path, cache_dir: Path, mlflow_dir: Path, model: str = "cnn3d") -> list[str]:
    """A fast run of a tiny ``model`` on a tiny dataset already on disk, logging to ``mlflow_dir``."""
    return [*TINY_NETS[model], *tiny_data_overrides(data_root, cache_dir), *mlflow_overrides(mlflow_dir)]


def compose_config(overrides: Sequence[str], root_dir: Path, config_name: str = "config") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as ``python -m lungexp.run`` (or ``lungexp.evaluate``) would, with
    outputs under ``root_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[f"paths.root_dir={root_dir}", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    runs = len(list(root_dir.glob("output*")))
    with open_dict(cfg):
        cfg.paths.output_dir = str(root_dir / f"output{runs}")  # one folder per run, as Hydra's timestamps
        del cfg.hydra
    return cfg


def train_tiny(root: Path, data_root: Path, mlflow_dir: Path, overrides: list[str]) -> tuple[Any, Any, pd.DataFrame]:
    """``train()`` of a tiny cnn3d (two negatives per training scan) on ``data_root`` with ``overrides``: its
    result, an MLflow client of its store and the test predictions it logged."""
    from mlflow import MlflowClient

    from lungexp.config.check import check
    from lungexp.training.pipeline import train

    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], *tiny_data_overrides(data_root, data_root.parent / "cache"),
                          *mlflow_overrides(mlflow_dir), "data.max_negatives_per_scan=2", *overrides], root)
    result = train(check(cfg, "run"))
    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    csv = client.download_artifacts(result.mlflow_run_id, "predictions/test_predictions.csv", str(root / "dl"))
    return result, client, pd.read_csv(csv, dtype={"seriesuid": str})


@dataclass(frozen=True)
class TinyCrossValidation:
    """A finished tiny cross-validation: its result (``parent_run_id``: what ``cv_run=`` takes), each fold's best
    checkpoint as its output folder holds it, the labels CSV it ran on and one of scans it never saw."""

    result: Any
    checkpoints: list[Path]
    labels_csv: Path
    heldout_csv: Path
    tracking_uri: str


def cross_validate_tiny(root: Path, data_root: Path, mlflow_dir: Path, heldout_subset: int = 4,
                        folds: int = 3) -> TinyCrossValidation:
    """``cross_validate()`` of a tiny cnn3d, 1 epoch per fold, ``folds`` folds of series, on the candidates of
    ``data_root`` outside ``heldout_subset``; the held-out subset's candidates are written to a CSV of their own."""
    from lungexp.config.check import check
    from lungexp.training.cross_validation import cross_validate

    candidates = pd.read_csv(data_root / "candidates_V2.csv", dtype={"seriesuid": str})
    heldout = candidates["seriesuid"].isin([p.stem for p in (data_root / f"subset{heldout_subset}").glob("*.mhd")])
    labels_csv, heldout_csv = root / "cv_candidates.csv", root / "heldout_candidates.csv"
    candidates[~heldout].to_csv(labels_csv, index=False)
    candidates[heldout].to_csv(heldout_csv, index=False)
    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], *tiny_data_overrides(data_root, data_root.parent / "cache"),
                          *mlflow_overrides(mlflow_dir), f"data.labels_csv={labels_csv}", "data.split.method=series",
                          "data.max_negatives_per_scan=2", f"cv.folds={folds}", "trainer.max_epochs=1",
                          "callbacks.lr_monitor=null", *NO_REPORT_EXTRAS, "task_name=tiny_cv"], root)
    result = cross_validate(check(cfg, "run"))
    checkpoints = [next(Path(cfg.paths.output_dir, f"fold{k}", "checkpoints").glob("epoch*.ckpt")) for k in range(folds)]
    return TinyCrossValidation(result, checkpoints, labels_csv, heldout_csv, cfg.paths.mlflow_uri)
