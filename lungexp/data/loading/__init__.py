"""From the patch cache to training batches: the datamodule, the dataset, class balance and batch augmentation."""
