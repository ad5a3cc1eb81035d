"""lungexp: config-driven experiments with 3D CNNs for lung-nodule classification on CT."""

from lungexp.utils.config import register_resolvers

register_resolvers()  # configs use ${len:...}; any entry point that imports lungexp can compose them

__version__ = "0.1.0"
