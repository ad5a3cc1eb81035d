"""Test helpers that are not fixtures (the fixtures stay in ``tests/conftest.py``).

- :mod:`tests.helpers.config`: composing the real configs, shrunk to tiny data and networks;
- :mod:`tests.helpers.data`: DICOM series builders and readers, the shared real data;
- :mod:`tests.helpers.checkpoints`: MedicalNet-style checkpoint files;
- :mod:`tests.helpers.cli`: the entry points run as a user would, in a subprocess;
- :mod:`tests.helpers.fork_server`: the same, forked from a warm process (no imports), for tests that check
  what a run prints and returns;
- :mod:`tests.helpers.mlflow_ui`: an ``mlflow server`` and the system Chromium for browser tests;
- :mod:`tests.helpers.kill`: a callback that SIGKILLs training mid-epoch (resume tests).
"""
