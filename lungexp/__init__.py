"""lungexp: config-driven experiments with 3D CNNs for lung-nodule classification on CT.

Importing the package (or any library module) loads no Hydra: the entry points register what composing
``conf/`` needs (:func:`lungexp.config.store.register_configs`).
"""

__version__ = "0.1.0"
