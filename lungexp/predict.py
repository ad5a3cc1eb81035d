"""Score candidates with a trained checkpoint:
``python -m lungexp.predict ckpt_path=FILE scans=PATH candidates=CSV out=CSV``.

Writes LUNA16's submission format ``seriesuid,coordX,coordY,coordZ,probability``; see ``conf/predict.yaml``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.config.keys import report_user_errors
from lungexp.utils.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    # Imported here so that `--help` does not pay for the checks' imports or torch.
    from lungexp.config.check import check

    cfg = check(cfg, "predict").config  # an unknown key (e.g. a typo'd +ckpt_paht=...) is an error, not ignored
    from lungexp.inference.model import Predictor
    from lungexp.inference.scans import open_scans
    from lungexp.inference.submission import predict_candidates, read_candidates, write_submission

    predictor = Predictor(cfg.ckpt_path, device=cfg.device, precision=cfg.precision)
    scans = open_scans(cfg.scans)
    candidates = read_candidates(cfg.candidates, scans)
    table = predict_candidates(predictor, scans, candidates, source=cfg.candidates, batch_size=cfg.batch_size)
    out = write_submission(table, cfg.out)
    print(f"Scored {len(table)} candidate(s) on {table['seriesuid'].nunique()} scan(s) with {predictor.path} "
          f"({predictor.recipe.net['_target_'].rsplit('.', 1)[-1]}, {predictor.recipe.task}, {predictor.device}, "
          f"{predictor.precision}) -> {out}")


if __name__ == "__main__":
    main()
