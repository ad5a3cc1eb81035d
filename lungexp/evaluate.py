"""Evaluate a trained checkpoint: ``python -m lungexp.evaluate ckpt_path=FILE [split=test|val|all] [data=...]``.

Logs every metric and figure of the training test stage to a new MLflow run tagged with the training
run's id, and prints the metrics; see ``conf/evaluate.yaml``.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lungexp.config.command_line import checks_command_line_keys
from lungexp.config.keys import report_user_errors
from lungexp.config.store import register_configs
from lungexp.utils.dictconfig import CONFIG_DIR

register_configs()  # the resolvers and Python-declared nodes conf/ composes with, before @hydra.main


@checks_command_line_keys("evaluate")
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    # Imported here so that `--help` does not pay for the checks' imports or torch/Lightning.
    from lungexp.config.check import check

    checked = check(cfg, "evaluate")  # an unknown key (e.g. a typo'd +ckpt_paht=...) is an error, not ignored
    from lungexp.config.checkpoint_groups import checkpoint_evaluation
    from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint, print_evaluation

    run = checkpoint_evaluation(checked.config, overrides=HydraConfig.get().overrides.task)
    print_evaluation(evaluate_checkpoint(run))


if __name__ == "__main__":
    main()
