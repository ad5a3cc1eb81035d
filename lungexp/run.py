"""Train and test a model: ``python -m lungexp.run [experiment=NAME] [group=option] [key=value]``.

With ``cv.folds=K`` it runs a K-fold cross-validation instead (see :mod:`lungexp.training.cross_validation`).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lungexp.config.command_line import checks_command_line_keys
from lungexp.config.keys import report_user_errors
from lungexp.config.store import register_configs
from lungexp.utils.dictconfig import CONFIG_DIR, print_config_tree

register_configs()  # the resolvers and Python-declared nodes conf/ composes with, before @hydra.main


@checks_command_line_keys("config")
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns the optimised validation metric, so Hydra sweepers can maximise it."""
    # Imported here so that `--cfg job`, `--help` and tab completion pay for neither the data stack nor
    # torch/Lightning (~4 s); data.* and most other values are checked in between, so a typo there fails
    # in about a second.
    from lungexp.config.check import check

    run = check(cfg, "run")  # the typed options travel down; under DDP each rank checks its own copy
    from lungexp.training.cross_validation import cross_validate
    from lungexp.training.distributed import is_rank_zero, quiet_other_ranks
    from lungexp.training.pipeline import train

    quiet_other_ranks()
    if HydraConfig.get().mode != RunMode.MULTIRUN and is_rank_zero():  # a sweep's jobs differ only in their overrides
        print_config_tree(run.config)
    if run.cv is not None:
        return cross_validate(run).optimized_metric
    return train(run).optimized_metric


if __name__ == "__main__":
    main()
