"""Persistence of :class:`~ovmap.mapping.voxel_map.VoxelMap`: a versioned ``.npz`` file and PLY export.

``.npz`` format (``FORMAT_VERSION = 1``), readable with ``np.load(path, allow_pickle=False)`` alone. Rows are
sorted by packed key, i.e. lexicographic (i, j, k) order:

=================== =============== ==========================================================================
key                 dtype / shape   meaning
=================== =============== ==========================================================================
format_version      int64 ()        1
voxel_size          float64 ()      voxel edge length, metres
keys                int32 (N, 3)    voxel indices ``round(p / voxel_size)``
centers             float32 (N, 3)  ``keys * voxel_size``, metres
features            (N, F)          running mean, float32 or float16 as stored (bfloat16 maps are saved as
                                    float32; ``feature_dtype`` records the storage dtype)
hits                float32 (N,)    pixels fused per voxel (weight of the running mean)
rgb                 uint8 (N, 3)    ``round(rgb_mean * 255)``
rgb_mean            float32 (N, 3)  running mean colour in [0, 1]
rgb_hits            float32 (N,)    coloured pixels fused per voxel (weight of ``rgb_mean``)
mode                str ()          "feature" or "probability"
class_names         str (K+1,)      probability mode class names (empty array if none)
encoder             str ()          JSON: ``encoder.build_config`` or ``{"name": encoder.name}``; "{}" if none
feature_dtype       str ()          storage dtype name
feature_sampling    str ()          "bilinear" or "nearest"
frames_integrated   int64 ()        frames fused
frames_skipped      int64 ()        frames skipped (non-finite pose)
min_depth           float64 ()      depth filter, metres
max_depth           float64 ()      depth filter, metres (inf = off)
=================== =============== ==========================================================================

``rgb_hits``, ``feature_dtype`` and ``feature_sampling`` are optional on load (defaults: ``hits``, the dtype of
``features``, "bilinear").
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ovmap.fileio import atomic_write

if TYPE_CHECKING:
    from ovmap.mapping.voxel_map import VoxelMap

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "voxel_size",
    "keys",
    "centers",
    "features",
    "hits",
    "rgb",
    "rgb_mean",
    "mode",
    "class_names",
    "encoder",
    "frames_integrated",
    "frames_skipped",
    "min_depth",
    "max_depth",
)


def encoder_config_json(encoder: Any) -> str:
    """JSON description of an encoder: its ``build_config`` if it has one, else ``{"name": encoder.name}``."""
    if encoder is None:
        return "{}"
    cfg = getattr(encoder, "build_config", None)
    if callable(cfg):
        cfg = cfg()
    if cfg is None:
        cfg = {"name": getattr(encoder, "name", type(encoder).__name__)}
    return json.dumps(cfg, sort_keys=True, default=str)


def map_to_arrays(vmap: VoxelMap) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays of a map, rows sorted by packed key."""
    n = len(vmap)
    rows = vmap._sorted_rows[:n]
    keys = vmap.keys[rows].cpu().numpy()
    feats = vmap.features[rows]
    if feats.dtype not in (torch.float32, torch.float16):
        feats = feats.float()
    rgb_mean = vmap.rgb[rows].cpu().numpy().astype(np.float32)
    C = vmap.feature_dim or 0
    return {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "voxel_size": np.array(vmap.voxel_size, dtype=np.float64),
        "keys": keys.astype(np.int32),
        "centers": (keys.astype(np.float32) * np.float32(vmap.voxel_size)).astype(np.float32),
        "features": feats.cpu().numpy().reshape(n, C),
        "hits": vmap.hits[rows].cpu().numpy().astype(np.float32),
        "rgb": np.clip(np.round(rgb_mean * 255.0), 0, 255).astype(np.uint8),
        "rgb_mean": rgb_mean,
        "rgb_hits": vmap.rgb_hits[rows].cpu().numpy().astype(np.float32),
        "mode": np.array(vmap.mode),
        "class_names": np.array(vmap.class_names or [], dtype=np.str_),
        "encoder": np.array(encoder_config_json(vmap.encoder)),
        "feature_dtype": np.array(vmap.feature_dtype),
        "feature_sampling": np.array(vmap.feature_sampling),
        "frames_integrated": np.array(vmap.frames_integrated, dtype=np.int64),
        "frames_skipped": np.array(vmap.frames_skipped, dtype=np.int64),
        "min_depth": np.array(vmap.min_depth, dtype=np.float64),
        "max_depth": np.array(vmap.max_depth, dtype=np.float64),
    }


def save_map(vmap: VoxelMap, path: str | os.PathLike) -> None:
    """Save a map to one ``.npz`` file atomically (temporary file in the same directory + ``os.replace``).

    The file is written exactly at ``path`` (no ``.npz`` suffix is added).
    """
    arrays = map_to_arrays(vmap)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    logger.info("saved %d voxels to %s", len(vmap), path)


def load_map(path: str | os.PathLike, encoder: Any = None, device: str | torch.device = "cpu") -> VoxelMap:
    """Load a map saved by :func:`save_map`.

    Args:
        path: the ``.npz`` file.
        encoder: encoder to attach for queries (not stored in the file; only its config is).
        device: device of the restored map.

    Raises:
        ValueError: on a different ``format_version`` or missing arrays (both named in the message).
    """
    from ovmap.mapping.voxel_map import VoxelMap

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "format_version" not in data:
        raise ValueError(f"{path}: not an ovmap voxel map (no 'format_version' array)")
    version = int(data["format_version"])
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: map format_version {version} is not supported (this ovmap reads format_version "
            f"{FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: map file is missing required arrays {missing}")
    feats = data["features"]
    class_names = [str(c) for c in data["class_names"].tolist()] or None
    feature_dim = int(feats.shape[1]) if feats.ndim == 2 and feats.shape[1] > 0 else None
    default_dtype = "float16" if feats.dtype == np.float16 else "float32"
    state = {
        "voxel_size": float(data["voxel_size"]),
        "mode": str(data["mode"]),
        "feature_dim": feature_dim,
        "class_names": class_names,
        "feature_dtype": str(data["feature_dtype"]) if "feature_dtype" in data else default_dtype,
        "feature_sampling": str(data["feature_sampling"]) if "feature_sampling" in data else "bilinear",
        "min_depth": float(data["min_depth"]),
        "max_depth": float(data["max_depth"]),
        "keys": torch.from_numpy(data["keys"].astype(np.int64)),
        "features": torch.from_numpy(feats),
        "hits": torch.from_numpy(data["hits"]),
        "rgb_mean": torch.from_numpy(data["rgb_mean"]),
        "rgb_hits": torch.from_numpy(data["rgb_hits"] if "rgb_hits" in data else data["hits"]),
        "frames_integrated": int(data["frames_integrated"]),
        "frames_skipped": int(data["frames_skipped"]),
    }
    vmap = VoxelMap._from_state(state, encoder=encoder, device=device)
    logger.info("loaded %d voxels from %s", len(vmap), path)
    return vmap


def write_ply(
    path: str | os.PathLike, xyz: Tensor | np.ndarray, colors: Tensor | np.ndarray | None = None
) -> None:
    """Write a binary little-endian PLY point cloud (x y z float32, red green blue uchar) atomically.

    Args:
        path: output file.
        xyz: (N, 3) point coordinates.
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
            col = np.clip(np.round(col.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
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
