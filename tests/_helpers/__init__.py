"""Helpers shared by several test modules (import as ``from _helpers.<module> import ...``: pytest puts
``tests/`` on ``sys.path`` through ``tests/conftest.py``)."""
