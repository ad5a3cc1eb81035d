"""Score candidates with a trained checkpoint, an ensemble or a registered model:
``python -m lungexp.predict ckpt_path=FILE|[A,B]|cv_run=ID|model_uri=models:/NAME@ALIAS scans=PATH candidates=CSV out=CSV``,
or with ``detections=FILE [fuse=product|mean|none]`` (a detector's boxes) instead of ``candidates=``.

Writes LUNA16's submission format ``seriesuid,coordX,coordY,coordZ,probability`` (with detections, plus
``detector_score`` and ``classifier_probability``); see ``conf/predict.yaml``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.config.command_line import checks_command_line_keys
from lungexp.config.keys import report_user_errors
from lungexp.config.store import register_configs
from lungexp.utils.dictconfig import CONFIG_DIR

register_configs()  # the resolvers and Python-declared nodes conf/ composes with, before @hydra.main


@checks_command_line_keys("predict")
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    # Imported here so that `--help` does not pay for the checks' imports or torch.
    from lungexp.config.check import check

    cfg = check(cfg, "predict").config  # an unknown key (e.g. a typo'd +ckpt_paht=...) is an error, not ignored
    from lungexp.inference.candidate_scoring import (
        check_predict_options,
        load_predictor,
        predict_candidates,
        read_candidates,
        scans_needed,
        write_submission,
    )
    from lungexp.inference.false_positive_reduction import check_candidate_options, score_detections
    from lungexp.inference.scans import open_scans

    check_candidate_options(cfg.candidates, cfg.detections, cfg.fuse, cfg.merge_radius_mm)
    check_predict_options(cfg)
    predictor = load_predictor(cfg)
    scans_path = scans_needed(cfg, predictor.recipe.images)
    scans = open_scans(scans_path) if scans_path is not None else None
    if cfg.detections is not None:
        assert scans is not None, "scans_needed() requires scans with detections"
        table = score_detections(predictor, scans, cfg.detections, fuse=cfg.fuse,
                                 merge_radius_mm=cfg.merge_radius_mm, batch_size=cfg.batch_size)
    else:
        candidates = read_candidates(cfg.candidates, scans)
        table = predict_candidates(predictor, scans, candidates, source=cfg.candidates, batch_size=cfg.batch_size)
    out = write_submission(table, cfg.out)
    # A registered model is named by its URI: its checkpoints were read from a download folder, gone by now.
    model = predictor.description if cfg.model_uri is None else (
        f"{cfg.model_uri} ({len(predictor.members)} checkpoint(s), tta={predictor.tta}, "
        f"calibration={predictor.calibration})")
    print(f"Scored {len(table)} candidate(s) on {table['seriesuid'].nunique()} scan(s) with {model}: "
          f"{predictor.recipe.net['_target_'].rsplit('.', 1)[-1]}, {predictor.recipe.task}, {predictor.device}, "
          f"{predictor.precision} -> {out}")


if __name__ == "__main__":
    main()
