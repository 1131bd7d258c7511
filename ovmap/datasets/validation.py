"""Validation rules for posed RGB-D input: poses, intrinsics and depth (docs/validation.md states them all).

Every dataset inherits these checks through :class:`~ovmap.datasets.base.PosedRGBDDataset`; loaders call the
helpers below when they parse their files so that errors name the file.

* Poses (4x4 camera-to-world): finite; rotation block R orthonormal, ``max|R^T R - I| <= ROTATION_TOL`` and
  ``|det R - 1| <= DET_TOL`` (so no scale, shear or mirror); last row (0, 0, 0, 1) within ``LAST_ROW_TOL``.
  A frame failing this is skipped and counted (:func:`pose_problem` gives the reason).
* Intrinsics (3x3 K in pixels at the depth resolution): finite; last row (0, 0, 1); fx, fy > 0; principal point
  inside the depth image and within ``PRINCIPAL_POINT_CENTRE_FRACTION`` of its size from the centre (farther means
  K belongs to another resolution). Failing K is an error naming the file (:func:`check_intrinsics`).
* Depth: the uint16 values 0 and 65535 are invalid (:func:`depth_from_uint16`); a frame with no valid depth, or
  whose median valid depth is outside [``MIN_PLAUSIBLE_MEDIAN_DEPTH_M``, ``MAX_PLAUSIBLE_DEPTH_M``], is
  implausible (:func:`depth_problem`): warned about, counted, and (for the latter) not fused.

Tolerances (why these numbers): a rotation stored as float32 has entry errors ~1e-7 and text files written with 6
significant digits ~5e-7, giving ``max|R^T R - I|`` of a few 1e-6; even poses printed with only 4 decimals stay
below 3e-4. 1e-3 keeps a 3x margin over the coarsest real files while any real deformation is far above it (a
0.1 % scale already gives 2e-3; the test cases: x2 scale 3, shear >= 0.1, mirror det -1, zero rotation 1).
"""

from __future__ import annotations

import numpy as np

#: max |R^T R - I| accepted for the rotation block of a pose.
ROTATION_TOL = 1e-3
#: max |det R - 1| accepted.
DET_TOL = 1e-3
#: max deviation of the pose's last row from (0, 0, 0, 1) and of K's last row from (0, 0, 1).
LAST_ROW_TOL = 1e-6
#: max distance of the principal point from the image centre, as a fraction of the image width / height.
PRINCIPAL_POINT_CENTRE_FRACTION = 0.2
#: a frame whose median valid depth exceeds this (metres) is implausible (wrong depth scale?).
MAX_PLAUSIBLE_DEPTH_M = 100.0
#: a frame whose median valid depth is below this (metres) is implausible (depth stored in other units?).
MIN_PLAUSIBLE_MEDIAN_DEPTH_M = 0.02
#: stored uint16 depth values that mean "no measurement".
UINT16_INVALID_DEPTH = (0, 65535)


# ======================================================================================================== poses
def pose_problem(pose: np.ndarray) -> str | None:
    """Why a 4x4 camera-to-world pose cannot be used, or None for a valid rigid pose.

    Returns:
        e.g. ``"non-finite values"``, ``"rotation is not orthonormal (max|R^T R - I| = 3)"``,
        ``"rotation is mirrored (det = -1)"``, ``"last row is [0, 0, 1, 1], not [0, 0, 0, 1]"``.
    """
    p = np.asarray(pose, dtype=np.float64).reshape(4, 4)
    if not np.isfinite(p).all():
        return "non-finite values"
    if np.abs(p[3] - (0.0, 0.0, 0.0, 1.0)).max() > LAST_ROW_TOL:
        return f"last row is {p[3].tolist()}, not [0, 0, 0, 1]"
    R = p[:3, :3]
    det = float(np.linalg.det(R))
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    if ortho > ROTATION_TOL:
        if abs(det + 1.0) <= DET_TOL:
            return f"rotation is mirrored (det = {det:.3g})"
        return f"rotation is not orthonormal (max|R^T R - I| = {ortho:.3g} > {ROTATION_TOL:g}; scaled or sheared?)"
    if abs(det - 1.0) > DET_TOL:
        return f"rotation is mirrored (det = {det:.3g})" if det < 0 else f"rotation has det = {det:.6g}, not 1"
    return None


# =================================================================================================== intrinsics
def check_intrinsics_matrix(K: np.ndarray, where: str) -> np.ndarray:
    """Checks a 3x3 K without an image size: finite, last row (0, 0, 1), fx > 0, fy > 0. Returns K as float64.

    Raises:
        ValueError: one line naming ``where`` (the file).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"{where}: intrinsics must be a 3x3 matrix, got shape {K.shape}")
    flat = " ".join(f"{x:g}" for x in K.reshape(-1))
    if not np.isfinite(K).all():
        raise ValueError(f"{where}: intrinsics must be finite, got [{flat}]")
    if np.abs(K[2] - (0.0, 0.0, 1.0)).max() > LAST_ROW_TOL:
        raise ValueError(f"{where}: last row of the intrinsics must be [0 0 1], got {K[2].tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{where}: intrinsics need fx > 0 and fy > 0, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
    return K


def check_intrinsics(K: np.ndarray, depth_hw: tuple[int, int], where: str) -> np.ndarray:
    """Checks K against the depth image size (H, W) it is used with (pixel centres at integer coordinates).

    The principal point must lie inside the image ([-0.5, W - 0.5] x [-0.5, H - 0.5]) and within
    ``PRINCIPAL_POINT_CENTRE_FRACTION`` of the size (plus one pixel) from the centre ((W - 1) / 2, (H - 1) / 2).

    Raises:
        ValueError: one line naming ``where`` and, when K looks made for another resolution, that resolution.
    """
    K = check_intrinsics_matrix(K, where)
    h, w = int(depth_hw[0]), int(depth_hw[1])
    cx, cy = float(K[0, 2]), float(K[1, 2])
    inside = -0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5
    # one pixel of slack: K scaled from another resolution may use the pixel-corner convention (cx = W / 2)
    off_x = max(0.0, abs(cx - (w - 1) / 2) - 1.0) / w
    off_y = max(0.0, abs(cy - (h - 1) / 2) - 1.0) / h
    if not inside or off_x > PRINCIPAL_POINT_CENTRE_FRACTION or off_y > PRINCIPAL_POINT_CENTRE_FRACTION:
        guess_w, guess_h = int(round(2 * cx + 1)), int(round(2 * cy + 1))
        what = "outside" if not inside else "far from the centre of"
        raise ValueError(
            f"{where}: principal point ({cx:g}, {cy:g}) is {what} the {w}x{h} depth image; K seems made for "
            f"about {guess_w}x{guess_h} pixels (W x H); give K at the depth images' resolution"
        )
    return K


# ======================================================================================================== depth
def depth_from_uint16(raw: np.ndarray, depth_scale: float) -> np.ndarray:
    """uint16 depth image -> float32 metres (value / ``depth_scale``); 0 and 65535 (no measurement) -> NaN."""
    raw = np.asarray(raw)
    depth = raw.astype(np.float32) / np.float32(depth_scale)
    if raw.dtype == np.uint16:
        depth[(raw == 0) | (raw == 65535)] = np.nan
    else:
        depth[raw == 0] = np.nan
    return depth


def depth_problem(depth_m: np.ndarray) -> tuple[str, str] | None:
    """Plausibility of one frame's depth in metres (NaN / <= 0 = missing).

    Returns:
        None when plausible, else (kind, reason) with kind ``"no_valid_depth"`` (not a single valid pixel) or
        ``"implausible_depth"`` (median valid depth outside [MIN_PLAUSIBLE_MEDIAN_DEPTH_M, MAX_PLAUSIBLE_DEPTH_M];
        the median is taken over every 4th pixel in each direction when those include valid ones).
    """
    d = np.asarray(depth_m)
    # the median of every 4th pixel in each direction (1/16 of them) is plenty for a plausibility bound; the full
    # frame is only scanned when that sample holds no valid pixel
    sub = d[..., ::4, ::4] if d.ndim >= 2 else d
    valid = sub[np.isfinite(sub) & (sub > 0)]
    if valid.size == 0:
        valid = d[np.isfinite(d) & (d > 0)]
        if valid.size == 0:
            return "no_valid_depth", "no valid depth pixel"
    med = float(np.median(valid))
    if med > MAX_PLAUSIBLE_DEPTH_M:
        return "implausible_depth", f"median depth {med:.4g} m > {MAX_PLAUSIBLE_DEPTH_M:g} m (wrong depth scale?)"
    if med < MIN_PLAUSIBLE_MEDIAN_DEPTH_M:
        return "implausible_depth", (
            f"median depth {med:.4g} m < {MIN_PLAUSIBLE_MEDIAN_DEPTH_M:g} m (wrong depth scale?)"
        )
    return None
