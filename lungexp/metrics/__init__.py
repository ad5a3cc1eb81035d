"""Numbers for binary nodule classification: the metric set, FROC/CPM, intervals, paired tests, thresholds."""
