"""Register a model: ``python -m lungexp.register ckpt_path=FILE|[A,B]|cv_run=ID name=NAME [alias=champion]``.

Logs the checkpoints as one ``mlflow.pyfunc`` model (preprocessing, TTA and calibration inside) and registers it under
``name`` with ``alias``; see ``conf/register.yaml`` and :mod:`lungexp.inference.registered`.
"""

from __future__ import annotations

import tempfile

import hydra
from omegaconf import DictConfig

from lungexp.config.command_line import checks_command_line_keys
from lungexp.config.store import register_configs
from lungexp.utils.dictconfig import CONFIG_DIR
from lungexp.utils.errors import report_user_errors

register_configs()  # the resolvers and Python-declared nodes conf/ composes with, before @hydra.main


@checks_command_line_keys("register")
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="register")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from lungexp.config.check import check

    cfg = check(cfg, "register").config  # an unknown key is an error, not ignored
    # Imported here so that `--help` does not pay for torch and MLflow.
    from lungexp.inference.ensemble import checkpoint_paths
    from lungexp.inference.registered import check_registration, register_model

    check_registration(cfg.name, cfg.alias, cfg.tta, cfg.calibration)  # before a CV's checkpoints are downloaded
    with tempfile.TemporaryDirectory() as folder:  # a CV's checkpoints, downloaded when no longer where written
        paths = checkpoint_paths(cfg.ckpt_path, cfg.cv_run, cfg.tracking_uri, folder)
        registered = register_model(paths, cfg.name, alias=cfg.alias, tta=cfg.tta, calibration=cfg.calibration,
                                    tracking_uri=cfg.tracking_uri,
                                    artifact_location=cfg.paths.mlflow_artifacts, description=cfg.description)
    print(f"Registered {registered.members} checkpoint(s) (tta={cfg.tta}, calibration={cfg.calibration}) as {registered.name} version "
          f"{registered.version} -> {registered.uri} (run {registered.run_id})")


if __name__ == "__main__":
    main()
