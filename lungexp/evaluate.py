"""Evaluate a trained checkpoint: ``python -m lungexp.evaluate ckpt_path=FILE [split=test|val|all] [data=...]``.

Logs every metric and figure of the training test stage to a new MLflow run tagged with the training
run's id, and prints the metrics; see ``conf/evaluate.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lungexp.utils.config import CONFIG_DIR, check_required
from lungexp.utils.errors import LungexpError, report_user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@report_user_errors  # Ctrl-C: one line, status 130
def main(cfg: DictConfig) -> None:
    # Imported here so that `--help` does not pay for torch/Lightning.
    from lungexp.inference.evaluation import evaluate_checkpoint, print_summary

    try:
        check_required(cfg)
        result = evaluate_checkpoint(cfg, overrides=HydraConfig.get().overrides.task)
    except LungexpError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_summary(result)


if __name__ == "__main__":
    main()
