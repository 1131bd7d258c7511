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
points_dropped_nonfinite    int64 ()        points dropped: NaN/inf encoder output or world position
rgb_points_dropped_nonfinite int64 ()       points fused without colour: NaN/inf colour
min_depth                   float64 ()      depth filter, metres
max_depth                   float64 ()      depth filter, metres (inf = off)
=========================== =============== ==================================================================

``rgb_hits``, ``feature_dtype``, ``feature_sampling`` and the two ``*_dropped_nonfinite`` counters are optional on
load (defaults: ``hits``, the dtype of ``features``, "bilinear", 0).

Reading never unpickles and never shows a raw numpy/zipfile traceback: an empty, truncated, bit-flipped (zip CRC)
or non-npz file, a wrong version, a missing array, an array of the wrong kind or shape, non-finite values,
duplicate keys or non-positive hit counts give one ``ValueError`` line naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovmap.fileio import atomic_write
from ovmap.voxel_keys import voxel_centers

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


#: Counters saved with the map; files written before a counter existed read it as 0.
OPTIONAL_COUNTERS = ("points_dropped_nonfinite", "rgb_points_dropped_nonfinite", "frames_invalid_pose",
                      "frames_no_valid_depth", "frames_implausible_depth")


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
        "centers": voxel_centers(keys, float(state["voxel_size"])),
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
        **{key: np.array(state.get(key, 0), dtype=np.int64) for key in OPTIONAL_COUNTERS},
        "min_depth": np.array(state["min_depth"], dtype=np.float64),
        "max_depth": np.array(state["max_depth"], dtype=np.float64),
    }


def write_map_file(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a map state to one ``.npz`` file atomically (temporary file beside it + ``os.replace``).

    The file is written exactly at ``path`` (no ``.npz`` suffix is added).
    """
    arrays = state_to_arrays(state)
    atomic_write(path, lambda f: np.savez(f, **arrays))



def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, or ValueError saying in one line why the file cannot be read."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: not a readable map file: it is empty (0 bytes); re-create it (e.g. `ovmap map`)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise ValueError(
            f"{path}: not a readable map file: not an .npz archive (no zip signature; {size} bytes); "
            "pass the map.npz written by `ovmap map`"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        problem = f"corrupt or truncated zip archive ({reason})"
    except Exception as err:  # noqa: BLE001 - numpy/zipfile raise many types on damaged data; all mean "corrupt"
        if isinstance(err, ValueError) and "allow_pickle" in str(err):
            problem = "it holds Python object arrays, which an ovmap map never has"
        else:
            problem = f"corrupt array data ({type(err).__name__})"
    raise ValueError(f"{path}: not a readable map file: {problem}; re-create it (e.g. `ovmap map`)")


def _scalar(path: Path, data: dict[str, np.ndarray], key: str, kind: str) -> Any:
    a = data[key]
    if a.shape != () or a.dtype.kind not in kind:
        raise ValueError(f"{path}: invalid map: '{key}' must be a scalar of kind {kind!r}, got {a.dtype} {a.shape}")
    return a.item()


def read_map_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a map file into a state dict for :meth:`VoxelMap.from_state_dict` (CPU tensors).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: one line naming the file and the problem: empty, truncated, bit-flipped (CRC) or non-npz
            files, a different ``format_version``, missing arrays, arrays of the wrong kind or shape. Row-level
            checks (non-finite values, duplicate keys, hit counts) follow in :meth:`VoxelMap.from_state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: map file not found")
    data = _load_arrays(path)
    if "format_version" not in data:
        raise ValueError(f"{path}: not an ovmap voxel map (no 'format_version' array)")
    version = _scalar(path, data, "format_version", "iu")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: map format_version {version} is not supported (this ovmap reads format_version "
            f"{FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: map file is missing required arrays {missing}")
    feats = data["features"]
    if feats.ndim != 2 or feats.dtype.kind != "f":
        raise ValueError(f"{path}: invalid map: 'features' must be a 2-D float array, got {feats.dtype} {feats.shape}")
    names = data["class_names"]
    if names.ndim != 1 or (names.size and names.dtype.kind != "U"):
        raise ValueError(f"{path}: invalid map: 'class_names' must be a 1-D string array, got {names.dtype}")
    class_names = [str(c) for c in names.tolist()] or None
    feature_dim = int(feats.shape[1]) if feats.shape[1] > 0 else None
    default_dtype = "float16" if feats.dtype == np.float16 else "float32"
    for key in ("keys", "hits", "rgb_mean") + (("rgb_hits",) if "rgb_hits" in data else ()):
        if data[key].dtype.kind not in ("iu" if key == "keys" else "f"):
            raise ValueError(f"{path}: invalid map: '{key}' has dtype {data[key].dtype}")
    state = {
        "voxel_size": _scalar(path, data, "voxel_size", "fi"),
        "mode": _scalar(path, data, "mode", "U"),
        "feature_dim": feature_dim,
        "class_names": class_names,
        "encoder": _scalar(path, data, "encoder", "U"),
        "feature_dtype": _scalar(path, data, "feature_dtype", "U") if "feature_dtype" in data else default_dtype,
        "feature_sampling": (
            _scalar(path, data, "feature_sampling", "U") if "feature_sampling" in data else "bilinear"
        ),
        "min_depth": _scalar(path, data, "min_depth", "fi"),
        "max_depth": _scalar(path, data, "max_depth", "fi"),
        "frames_integrated": _scalar(path, data, "frames_integrated", "iu"),
        "frames_skipped": _scalar(path, data, "frames_skipped", "iu"),
        "keys": torch.from_numpy(data["keys"].astype(np.int64)),
        "features": torch.from_numpy(feats),
        "hits": torch.from_numpy(data["hits"]),
        "rgb": torch.from_numpy(data["rgb_mean"]),
        "rgb_hits": torch.from_numpy(data["rgb_hits"] if "rgb_hits" in data else data["hits"]),
    }
    for key in OPTIONAL_COUNTERS:
        state[key] = _scalar(path, data, key, "iu") if key in data else 0
    return state
