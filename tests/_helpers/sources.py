"""Shared by the recording-source tests: one small synthetic scene, its folder-format copy, and map comparison.

The recording formats (bags, TUM, .sens, .r3d) carry no per-pixel labels, so the maps are built with the oracle
encoder on the labels of the *source* synthetic frame with the same index (``with_labels``): what is compared is the
geometry each reader delivers (depth, pose, K, frame order), which decides every voxel key and which pixels are
averaged into each voxel.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovmap.datasets import FolderDataset, SyntheticScene, write_folder
from ovmap.encoders import build_encoder
from ovmap.pipeline import build_map

NUM_FRAMES = 6
VOXEL = 0.05
_TMP = Path(tempfile.mkdtemp(prefix="ovmap_sources_"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.cache
def scene() -> SyntheticScene:
    """The synthetic test room, 6 frames at 96x128 (every other frame of the 'test' trajectory)."""
    return SyntheticScene(preset="test", num_frames=2 * NUM_FRAMES, frame_skip=1)


@functools.cache
def scene_frames() -> tuple[dict[str, Any], ...]:
    return tuple(scene())


@functools.cache
def oracle():
    return build_encoder("oracle", class_names=scene().class_names, device="cpu")


@functools.cache
def folder_scene(depth_scale: float = 1000.0) -> Path:
    return write_folder(scene(), _TMP / f"folder_{int(depth_scale)}", depth_scale=depth_scale)


def with_labels(frames: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Frames of a reader with the labels of the synthetic frame of the same position attached."""
    src = scene_frames()
    n = 0
    for i, f in enumerate(frames):
        f = dict(f)
        assert f["depth"].shape[-2:] == src[i]["labels"].shape[-2:], (
            "reader resolution differs from the scene's"
        )
        f["labels"] = src[i]["labels"]
        n += 1
        yield f
    assert n == len(src), f"reader gave {n} frames, the scene has {len(src)}"


def map_of(frames: Iterable[dict[str, Any]]):
    vm, _ = build_map(with_labels(frames), oracle(), mode="feature", voxel_size=VOXEL, progress=False)
    return vm


@functools.cache
def reference_map(depth_scale: float = 1000.0):
    """The map of the folder-format copy of the scene (depth stored at ``depth_scale`` units per metre)."""
    return map_of(FolderDataset(folder_scene(depth_scale)))


def assert_same_map(vm, ref, min_key_fraction: float = 0.995, atol: float = 1e-4) -> None:
    """>= ``min_key_fraction`` of the union of voxel keys shared, features of shared voxels within ``atol``."""
    ka, kb = vm.packed_keys.numpy(), ref.packed_keys.numpy()
    common, ia, ib = np.intersect1d(ka, kb, return_indices=True)
    union = len(np.union1d(ka, kb))
    assert len(common) / union >= min_key_fraction, f"only {len(common)}/{union} voxel keys shared"
    fa, fb = vm.features[torch.from_numpy(ia)], ref.features[torch.from_numpy(ib)]
    diff = (fa.float() - fb.float()).abs().amax(dim=1)
    close = float((diff <= atol).float().mean())
    assert close >= min_key_fraction, f"only {close:.4f} of the shared voxels have features within {atol}"
