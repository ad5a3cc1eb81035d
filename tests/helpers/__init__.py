"""Test helpers that are not fixtures (the fixtures stay in ``tests/conftest.py``).

- :mod:`tests.helpers.config`: composing the real configs, shrunk to tiny data and networks;
- :mod:`tests.helpers.data`: DICOM series builders and readers, the shared real data;
- :mod:`tests.helpers.checkpoints`: MedicalNet-style checkpoint files;
- :mod:`tests.helpers.cli`: the entry points run as a user would, in a subprocess.
"""
