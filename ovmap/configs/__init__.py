"""Hydra configuration groups for the ``ovmap`` command line (see README.md in this folder)."""
