"""Binary little-endian PLY export of point clouds (voxel centres with colours)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ovmap.fileio import atomic_write

logger = logging.getLogger(__name__)


def write_ply(
    path: str | os.PathLike, xyz: Tensor | np.ndarray, colors: Tensor | np.ndarray | None = None
) -> None:
    """Write a binary little-endian PLY point cloud (x y z float32, red green blue uchar) atomically.

    Args:
        path: output file.
        xyz: (N, 3) point coordinates (metres).
        colors: (N, 3) colours, float in [0, 1] (rounded to 0..255) or uint8; None writes mid grey.
    """
    xyz = torch.as_tensor(xyz).detach().cpu().numpy().astype(np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    if colors is None:
        col = np.full((n, 3), 128, dtype=np.uint8)
    else:
        col = torch.as_tensor(colors).detach().cpu().numpy()
        if col.shape != (n, 3):
            raise ValueError(f"colors must have shape ({n}, 3), got {col.shape}")
        if col.dtype != np.uint8:
            col = np.clip(np.round(np.nan_to_num(col.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
    rec = np.empty(
        n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    ).encode("ascii")

    def write(f: Any) -> None:
        f.write(header)
        f.write(rec.tobytes())

    atomic_write(path, write)
    logger.info("wrote %d points to %s", n, path)
