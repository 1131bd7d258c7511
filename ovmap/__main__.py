from ovmap.cli import entrypoint

entrypoint()
