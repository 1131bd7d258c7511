"""Function front end to map persistence: :func:`save_map`, :func:`load_map`, :func:`write_ply`.

The file layout lives in :mod:`ovmap.mapping.map_format`; this module depends on
:class:`~ovmap.mapping.voxel_map.VoxelMap` (one way: the map never imports it).
"""

from __future__ import annotations

import os
from typing import Any

import torch

import numpy as np

from ovmap.mapping.map_format import FORMAT_VERSION, state_to_arrays
from ovmap.mapping.ply import write_ply
from ovmap.mapping.voxel_map import VoxelMap

__all__ = ["FORMAT_VERSION", "load_map", "map_to_arrays", "save_map", "write_ply"]


def save_map(vmap: VoxelMap, path: str | os.PathLike) -> None:
    """Save a map to one ``.npz`` file atomically (see :mod:`ovmap.mapping.map_format`)."""
    vmap.save(path)


def map_to_arrays(vmap: VoxelMap) -> dict[str, np.ndarray]:
    """The arrays a saved ``.npz`` would hold (rows in lexicographic key order), without writing a file."""
    return state_to_arrays(vmap.state_dict())


def load_map(path: str | os.PathLike, encoder: Any = None, device: str | torch.device = "cpu") -> VoxelMap:
    """Load a map saved by :func:`save_map` / :meth:`VoxelMap.save`.

    Args:
        path: the ``.npz`` file.
        encoder: encoder to attach for queries (not stored in the file; only its config is).
        device: device of the restored map.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: one line naming the file and the problem (unreadable, wrong version, inconsistent rows).
    """
    return VoxelMap.load(path, encoder=encoder, device=device)
