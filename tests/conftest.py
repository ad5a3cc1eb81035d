"""Shared fixtures: real composed configs, shrunk to tiny scans and models so tests run in seconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lungexp  # noqa: F401  (registers the config resolvers)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"

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

# Small widths per model, keyed by the `model=` option.
TINY_NETS = {
    "cnn3d": ["model.net.widths=[4,8]"],
    "resnet3d": ["model.net.depth=10", "model.net.widths=[4,8,8,8]"],
    "densenet3d": ["model.net.growth_rate=4", "model.net.block_config=[1,1]", "model.net.num_init_features=8"],
    "se_resnet3d": ["model.net.depth=10", "model.net.widths=[4,8,8,8]"],
    "cbam_resnet3d": ["model.net.depth=10", "model.net.widths=[8,8,8,8]"],
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated LUNA16-format dataset, made once per test session."""
    from lungexp.data.synthetic import generate_luna16_dataset

    root = tmp_path_factory.mktemp("synthetic") / "luna16"
    generate_luna16_dataset(root, **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_SYNTHETIC.items()})
    return root


@pytest.fixture(scope="session")
def nifti_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset as a user's own data: flat ``<uid>.nii.gz`` files and a ``points.csv``."""
    import pandas as pd
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("nifti")
    for mhd in synthetic_root.glob("subset*/*.mhd"):
        sitk.WriteImage(sitk.ReadImage(str(mhd)), str(root / f"{mhd.stem}.nii.gz"))
    points = pd.read_csv(synthetic_root / "candidates_V2.csv").rename(columns={"class": "label"})
    points.to_csv(root / "points.csv", index=False)
    return root


def tiny_synthetic_overrides() -> list[str]:
    """``data.synthetic.*`` overrides that make `data=synthetic` generate the tiny dataset."""
    return [f"data.synthetic.{k}={v}".replace(" ", "") for k, v in TINY_SYNTHETIC.items()]


def tiny_data_overrides(root: Path, cache_dir: Path) -> list[str]:
    """Read the session's pre-generated tiny dataset (so no test regenerates it)."""
    return [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.synthetic=null", *FAST_OVERRIDES]


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


@pytest.fixture(scope="session")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the session: creating a SQLite store runs its migrations (~5 s)."""
    return tmp_path_factory.mktemp("mlflow")


def mlflow_overrides(mlflow_dir: Path) -> list[str]:
    """Log to the session's MLflow store."""
    return [f"paths.mlflow_uri=sqlite:///{mlflow_dir}/mlflow.db", f"paths.mlflow_artifacts={mlflow_dir}/artifacts"]


@pytest.fixture
def make_config(tmp_path: Path, synthetic_root: Path, mlflow_dir: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, model="cnn3d")``: a real composed config on the tiny dataset."""
    cache_dir = synthetic_root.parent / "cache"

    def make(*overrides: str, model: str = "cnn3d") -> DictConfig:
        return compose_config([f"model={model}", *TINY_NETS[model], *tiny_data_overrides(synthetic_root, cache_dir),
                               *mlflow_overrides(mlflow_dir), *overrides], tmp_path)

    return make


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, mlflow_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CNN trained for 2 epochs on the tiny dataset and tested, logged to the session's MLflow store;
    its checkpoints serve the evaluate and predict tests."""
    from lungexp.training.pipeline import train

    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"],
                          *tiny_data_overrides(synthetic_root, synthetic_root.parent / "cache"),
                          *mlflow_overrides(mlflow_dir), "trainer.max_epochs=2", "callbacks.lr_monitor=null",
                          "task_name=trained_for_inference"], tmp_path_factory.mktemp("trained"))
    return train(cfg)
