"""The versioned ``.npz`` map file: a :meth:`VoxelMap.state_dict` on disk, and back.

This module knows the file layout only; it never imports :class:`~ovmap.mapping.voxel_map.VoxelMap` (the map
depends on it, one way). ``.npz`` format (``FORMAT_VERSION = 1``), readable with ``np.load(path,
allow_pickle=False)`` alone. Rows are sorted by packed key, i.e. lexicographic (i, j, k) order:

=========================== =============== ==================================================================
key                         dtype / shape   meaning
=========================== =============== ==================================================================
format_version              int64 ()        1
voxel_size                  float64 ()      voxel edge length, metres
keys                        int32 (N, 3)    voxel indices ``round(p / voxel_size)``
centers                     float32 (N, 3)  ``keys * voxel_size``, metres
features                    (N, F)          running mean, float32 or float16 as stored (bfloat16 maps are saved
                                            as float32; ``feature_dtype`` records the storage dtype)
hits                        float32 (N,)    pixels fused per voxel (weight of the running mean), > 0
rgb                         uint8 (N, 3)    ``round(rgb_mean * 255)``
rgb_mean                    float32 (N, 3)  running mean colour in [0, 1]
rgb_hits                    float32 (N,)    coloured pixels fused per voxel (weight of ``rgb_mean``), >= 0
mode                        str ()          "feature" or "probability"
class_names                 str (K+1,)      probability mode class names (empty array if none)
encoder                     str ()          JSON: ``encoder.build_config`` or ``{"name": encoder.name}``; "{}"
feature_dtype               str ()          storage dtype name
feature_sampling            str ()          "bilinear" or "nearest"
frames_integrated           int64 ()        frames fused
frames_skipped              int64 ()        frames skipped (non-finite pose)
min_depth                   float64 ()      depth filter, metres
max_depth                   float64 ()      depth filter, metres (inf = off)
=========================== =============== ==================================================================

``rgb_hits``, ``feature_dtype`` and ``feature_sampling`` are optional on load (defaults: ``hits``, the dtype of
``features``, "bilinear").
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from ovmap.fileio import atomic_write

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


def state_to_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays of a :meth:`VoxelMap.state_dict` (rows already in lexicographic key order)."""
    keys = torch.as_tensor(state["keys"]).cpu().numpy().astype(np.int64)
    n = keys.shape[0]
    feats = torch.as_tensor(state["features"]).detach().cpu()
    if feats.dtype not in (torch.float32, torch.float16):
        feats = feats.float()
    rgb_mean = torch.as_tensor(state["rgb"]).cpu().numpy().astype(np.float32)
    return {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "voxel_size": np.array(state["voxel_size"], dtype=np.float64),
        "keys": keys.astype(np.int32),
        "centers": (keys.astype(np.float32) * np.float32(state["voxel_size"])).astype(np.float32),
        "features": feats.numpy().reshape(n, state["feature_dim"] or 0),
        "hits": torch.as_tensor(state["hits"]).cpu().numpy().astype(np.float32),
        "rgb": np.clip(np.round(rgb_mean * 255.0), 0, 255).astype(np.uint8),
        "rgb_mean": rgb_mean,
        "rgb_hits": torch.as_tensor(state["rgb_hits"]).cpu().numpy().astype(np.float32),
        "mode": np.array(state["mode"]),
        "class_names": np.array(state["class_names"] or [], dtype=np.str_),
        "encoder": np.array(state["encoder"]),
        "feature_dtype": np.array(state["feature_dtype"]),
        "feature_sampling": np.array(state["feature_sampling"]),
        "frames_integrated": np.array(state["frames_integrated"], dtype=np.int64),
        "frames_skipped": np.array(state["frames_skipped"], dtype=np.int64),
        "min_depth": np.array(state["min_depth"], dtype=np.float64),
        "max_depth": np.array(state["max_depth"], dtype=np.float64),
    }


def write_map_file(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a map state to one ``.npz`` file atomically (temporary file beside it + ``os.replace``).

    The file is written exactly at ``path`` (no ``.npz`` suffix is added).
    """
    arrays = state_to_arrays(state)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_map_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a map file into a state dict for :meth:`VoxelMap.from_state_dict` (CPU tensors).

    Raises:
        ValueError: on a different ``format_version`` or missing arrays (both named in the message).
    """
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
    return {
        "voxel_size": float(data["voxel_size"]),
        "mode": str(data["mode"]),
        "feature_dim": feature_dim,
        "class_names": class_names,
        "encoder": str(data["encoder"]),
        "feature_dtype": str(data["feature_dtype"]) if "feature_dtype" in data else default_dtype,
        "feature_sampling": str(data["feature_sampling"]) if "feature_sampling" in data else "bilinear",
        "min_depth": float(data["min_depth"]),
        "max_depth": float(data["max_depth"]),
        "frames_integrated": int(data["frames_integrated"]),
        "frames_skipped": int(data["frames_skipped"]),
        "keys": torch.from_numpy(data["keys"].astype(np.int64)),
        "features": torch.from_numpy(feats),
        "hits": torch.from_numpy(data["hits"]),
        "rgb": torch.from_numpy(data["rgb_mean"]),
        "rgb_hits": torch.from_numpy(data["rgb_hits"] if "rgb_hits" in data else data["hits"]),
    }
