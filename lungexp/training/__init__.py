"""Training: the LightningModule, callbacks and fine-tuning helpers."""
