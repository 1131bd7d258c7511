"""Voxel indices, packed voxel keys and voxel centres: the one home of the voxel-grid arithmetic.

Vocabulary (used with these meanings everywhere in ovmap):

* **voxel index** ``ijk``: (N, 3) int64, ``round_half_even(p / voxel_size)`` of a point ``p`` in metres, the
  division done in the points' working dtype (float32 for map points and lifted ground truth, float64 for
  external ground-truth points, as the reference does).
* **voxel key**: (N,) int64, the index packed as ``((i + o) << 42) | ((j + o) << 21) | (k + o)`` with
  ``o = 2**20``. Keys sort like indices in lexicographic (i, j, k) order. Each axis index must satisfy
  ``|index| < 2**20`` (52 km at 5 cm voxels).
* **voxel centre**: ``fl(fl(i) * fl(voxel_size))`` in the working dtype (float32 for the map).

Every function takes a torch tensor (and returns one on the same device) or anything numpy can read (and returns
numpy arrays), so mapping (torch) and eval3d (numpy) share the exact same rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

KEY_BITS = 21
"""Bits per axis in a packed key."""
KEY_OFFSET = 1 << (KEY_BITS - 1)
"""Offset added to each axis index before packing; indices must satisfy ``|index| < KEY_OFFSET``."""
_KEY_MASK = (1 << KEY_BITS) - 1

Array = Any  # torch.Tensor or numpy-readable


def _check_voxel_size(voxel_size: float) -> None:
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be finite and > 0 (metres), got {voxel_size}")


def voxel_indices(points: Array, voxel_size: float, dtype: Any = None) -> Array:
    """(N, 3) int64 voxel index of each point, ``round_half_even(points / voxel_size)``.

    Args:
        points: (N, 3) points in metres.
        voxel_size: voxel edge length in metres, finite and > 0.
        dtype: working dtype of the division; default float32 (torch.float32 / np.float32). Pass float64 for
            external ground-truth points.

    Returns:
        (N, 3) int64 indices, a tensor on the points' device for tensor input, else a numpy array.
    """
    _check_voxel_size(voxel_size)
    if isinstance(points, Tensor):
        dt = torch.float32 if dtype is None else _torch_dtype(dtype)
        return torch.round(points.to(dt) / torch.tensor(voxel_size, dtype=dt)).long()
    dt = np.float32 if dtype is None else np.dtype(_numpy_dtype(dtype))
    p = np.asarray(points).astype(dt, copy=False)
    return np.round(p / np.asarray(voxel_size, dtype=dt)).astype(np.int64)


def indices_from_centers(centers: Array, voxel_size: float) -> Array:
    """(N, 3) int64 voxel indices of voxel centres, ``round(c / voxel_size)`` in float64.

    Exact for centres built by :func:`voxel_centers` in float32 or float64.
    """
    _check_voxel_size(voxel_size)
    if isinstance(centers, Tensor):
        return torch.round(centers.double() / voxel_size).long()
    return np.round(np.asarray(centers, dtype=np.float64) / float(voxel_size)).astype(np.int64)


def voxel_centers(ijk: Array, voxel_size: float, dtype: Any = None) -> Array:
    """(N, 3) voxel centres ``fl(fl(ijk) * fl(voxel_size))`` in ``dtype`` (default float32)."""
    _check_voxel_size(voxel_size)
    if isinstance(ijk, Tensor):
        dt = torch.float32 if dtype is None else _torch_dtype(dtype)
        return ijk.to(dt) * torch.tensor(voxel_size, dtype=dt)
    dt = np.float32 if dtype is None else np.dtype(_numpy_dtype(dtype))
    return (np.asarray(ijk).astype(dt) * np.asarray(voxel_size, dtype=dt)).astype(dt)


def pack_indices(ijk: Array) -> Array:
    """(N,) int64 voxel keys of (N, 3) integer voxel indices.

    Raises:
        ValueError: if ``ijk`` is not (N, 3) or an index is outside ``(-2**20, 2**20)``.
    """
    is_torch = isinstance(ijk, Tensor)
    a = ijk.long() if is_torch else np.asarray(ijk, dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"voxel indices must have shape (N, 3), got {tuple(a.shape)}")
    if a.shape[0]:
        lo, hi = int(a.min()), int(a.max())
        if lo <= -KEY_OFFSET or hi >= KEY_OFFSET:
            raise ValueError(
                f"voxel index range [{lo}, {hi}] overflows the packed key: each axis index must satisfy "
                f"|index| < 2**20 = {KEY_OFFSET} (use a larger voxel size or recentre the world frame)"
            )
    s = a + KEY_OFFSET
    return (s[:, 0] << (2 * KEY_BITS)) | (s[:, 1] << KEY_BITS) | s[:, 2]


def unpack_keys(keys: Array) -> Array:
    """(N, 3) int64 voxel indices of (N,) packed keys; the inverse of :func:`pack_indices`."""
    if isinstance(keys, Tensor):
        k = keys.long()
        return torch.stack([(k >> (2 * KEY_BITS)) & _KEY_MASK, (k >> KEY_BITS) & _KEY_MASK, k & _KEY_MASK],
                           dim=1) - KEY_OFFSET
    k = np.asarray(keys, dtype=np.int64)
    return np.stack([(k >> (2 * KEY_BITS)) & _KEY_MASK, (k >> KEY_BITS) & _KEY_MASK, k & _KEY_MASK],
                    axis=1) - KEY_OFFSET


def voxel_keys(points: Array, voxel_size: float, dtype: Any = None) -> Array:
    """(N,) int64 packed voxel key of each point: ``pack_indices(voxel_indices(points, voxel_size, dtype))``."""
    return pack_indices(voxel_indices(points, voxel_size, dtype))


def lexicographic_order(ijk: Array) -> Array:
    """Stable permutation sorting (N, 3) voxel indices in ascending lexicographic (i, j, k) order."""
    keys = pack_indices(ijk)
    if isinstance(keys, Tensor):
        return torch.sort(keys, stable=True).indices
    return np.argsort(keys, kind="stable")


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def _numpy_dtype(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype):
        return {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    return dtype


__all__ = ["KEY_BITS", "KEY_OFFSET", "indices_from_centers", "lexicographic_order", "pack_indices",
           "unpack_keys", "voxel_centers", "voxel_indices", "voxel_keys"]
