"""Experiment tracking: what goes to MLflow (params, config, figures, tables) and how."""
