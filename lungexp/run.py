"""Train and test a model: ``python -m lungexp.run [experiment=NAME] [group=option] [key=value]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.utils.config import CONFIG_DIR, check_required, print_config_tree


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the optimised validation metric, so Hydra sweepers can maximise it."""
    # Imported here so that `--cfg job`, `--help` and tab completion do not pay for torch/Lightning (~4 s).
    from lungexp.training.pipeline import train

    check_required(cfg)
    print_config_tree(cfg)
    return train(cfg).optimized_metric


if __name__ == "__main__":
    main()
