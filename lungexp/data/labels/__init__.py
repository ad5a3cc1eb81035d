"""What each sample is: annotation CSVs, label rules, the sample table, sampled negatives and splits."""
