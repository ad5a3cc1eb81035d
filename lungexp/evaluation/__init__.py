"""Metrics and result plots for binary nodule classification."""
