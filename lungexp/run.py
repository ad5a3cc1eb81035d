"""Train and test a model: ``python -m lungexp.run [experiment=NAME] [group=option] [key=value]``.

With ``cv.folds=K`` it runs a K-fold cross-validation instead (see :mod:`lungexp.training.cross_validation`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.utils.config import check_required, print_config_tree


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the optimised validation metric, so Hydra sweepers can maximise it."""
    # Imported here so that `--cfg job`, `--help` and tab completion do not pay for torch/Lightning (~4 s).
    from lungexp.training.cross_validation import cross_validate
    from lungexp.training.pipeline import train

    check_required(cfg)
    print_config_tree(cfg)
    if cfg.cv.folds:
        return cross_validate(cfg).optimized_metric
    return train(cfg).optimized_metric


if __name__ == "__main__":
    main()
