"""A predictions table turned into every metric and figure a run reports, the same for test, CV and evaluate."""
