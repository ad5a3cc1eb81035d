"""Reading CT scans and annotations, building patch caches, splits and datamodules."""
