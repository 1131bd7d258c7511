"""Shared fixtures of the visualisation tests: one small mapped scene, config composition."""

from __future__ import annotations

import pytest
import torch

from _helpers.rerun_recording import VOXEL


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
