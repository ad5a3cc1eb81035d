"""Evaluation: the operating point that turns scores into decisions (:mod:`~lungexp.evaluation.operating_point`),
and a predictions table turned into every metric and figure a run reports, the same for test, CV and evaluate."""
