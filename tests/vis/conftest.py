"""Shared fixtures of the visualisation tests: one small mapped scene, config composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

VOXEL = 0.1


@pytest.fixture(scope="session")
def small_scene():
    from ovmap.datasets import build_dataset

    return build_dataset("synthetic", preset="test", num_frames=5)


@pytest.fixture(scope="session")
def oracle(small_scene):
    from ovmap.pipeline import make_encoder

    return make_encoder("oracle", {"name": "oracle"}, small_scene, torch.device("cpu"))


@pytest.fixture
def compose_cfg():
    """compose(name, overrides) -> the resolved command config, as the CLI would build it."""
    from hydra import compose, initialize_config_module

    def _compose(name: str, overrides: list[str]):
        with initialize_config_module(version_base="1.3", config_module="ovmap.configs"):
            return compose(name, overrides=overrides)

    return _compose


@pytest.fixture(scope="session")
def feature_map(small_scene, oracle):
    from ovmap.pipeline import build_map

    voxel_map, _ = build_map(small_scene, oracle, mode="feature", voxel_size=VOXEL, progress=False)
    return voxel_map


@pytest.fixture(scope="session")
def saved_map(feature_map, tmp_path_factory):
    path = tmp_path_factory.mktemp("map") / "map.npz"
    feature_map.save(path)
    return path


@pytest.fixture(scope="session")
def folder_scene(small_scene, tmp_path_factory):
    from ovmap.datasets import write_folder

    return write_folder(small_scene, tmp_path_factory.mktemp("scene") / "room")


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 xyz and (N, 3) uint8 colours of a binary little-endian ovmap PLY."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii")
    assert "format binary_little_endian 1.0" in header
    dtype = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rows = np.frombuffer(data[end:], dtype=dtype)
    return rows["xyz"], rows["rgb"]
