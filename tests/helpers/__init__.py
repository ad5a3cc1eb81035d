"""Test helpers that are not fixtures (the fixtures stay in ``tests/conftest.py``).

- :mod:`tests.helpers.mlflow_ui`: an ``mlflow server`` and the system Chromium for browser tests;
- :mod:`tests.helpers.kill`: a callback that SIGKILLs training mid-epoch (resume tests).
"""
