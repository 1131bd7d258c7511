"""Shared validation helpers and the error type of ``ovmap.eval3d``.

Every bad-input error raised by eval3d is an :class:`EvalInputError` (a ``ValueError``) whose message
starts with ``[scene <name>]`` when a scene name was given, so a multi-scene run says which scene failed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("ovmap.eval3d")


class EvalInputError(ValueError):
    """Invalid evaluation input (empty map, empty GT, NaN features, bad labels, ...)."""


def scene_prefix(scene: str | None) -> str:
    return f"[scene {scene}] " if scene else ""


def fail(scene: str | None, message: str) -> EvalInputError:
    """Build (not raise) an :class:`EvalInputError` whose message names ``scene``."""
    return EvalInputError(scene_prefix(scene) + message)


def to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array, torch tensor (any device) or array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_points(x: Any, name: str, scene: str | None, dtype: Any = None) -> np.ndarray:
    """Validate an (N, 3) finite coordinate array; optionally cast to ``dtype``."""
    arr = to_numpy(x)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise fail(scene, f"{name} must have shape (N, 3), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise fail(scene, f"{name} must be numeric, got dtype {arr.dtype}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise fail(scene, f"{name} holds {bad} non-finite row(s)")
    return arr


def as_labels(x: Any, name: str, scene: str | None, n: int | None = None, allow_negative: bool = False) -> np.ndarray:
    """Validate a 1-D label array and return it as int64.

    Floating-point labels are accepted only when every value is integral (the reference's HOV-SG patch dumps
    class ids as float64); anything else raises.
    """
    arr = to_numpy(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise fail(scene, f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise fail(scene, f"{name} has {arr.shape[0]} entries but the matching coordinates have {n}")
    if arr.dtype == np.bool_:
        raise fail(scene, f"{name} must hold integer class ids, got bool")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise fail(scene, f"{name} holds non-finite values")
        if arr.size and not (arr == np.round(arr)).all():
            bad = arr[arr != np.round(arr)][:5]
            raise fail(scene, f"{name} are floats with non-integral values (e.g. {bad.tolist()}); refusing to cast")
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int64, copy=False)
    else:
        raise fail(scene, f"{name} must be integer class ids, got dtype {arr.dtype}")
    if not allow_negative and arr.size and arr.min() < 0:
        raise fail(scene, f"{name} holds negative values (min {int(arr.min())})")
    return arr


def check_class_names(names: list[str] | tuple[str, ...], scene: str | None = None) -> list[str]:
    """Reject duplicate or empty prompt names (a duplicate silently corrupts the name -> index map)."""
    names = [str(n) for n in names]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n == "":
            raise fail(scene, f"class name at position {i} is empty")
        if n in seen:
            raise fail(scene, f"duplicate class name {n!r} at positions {seen[n]} and {i}")
        seen[n] = i
    return names
