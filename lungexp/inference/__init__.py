"""Applying a trained checkpoint: probabilities for candidates on new scans, and re-evaluation on a split."""
