"""Patches around world points: extraction on an isotropic grid and the memory-mapped cache of them."""
