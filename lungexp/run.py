"""Train and test a model: ``python -m lungexp.run [experiment=NAME] [group=option] [key=value]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.utils.checks import check_config
from lungexp.utils.config import check_required, print_config_tree
from lungexp.utils.errors import report_user_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns the optimised validation metric, so Hydra sweepers can maximise it."""
    check_required(cfg)
    check_config(cfg)
    # Imported here so that `--cfg job`, `--help` and tab completion do not pay for torch/Lightning (~4 s).
    from lungexp.training.pipeline import train

    print_config_tree(cfg)
    return train(cfg).optimized_metric


if __name__ == "__main__":
    main()
