"""Timestamped streams: association by timestamp, pose interpolation, quaternion <-> matrix.

Shared by the recording readers (``tum.py``, ``rosbag.py``, ``record3d.py``, ``scannet_sens.py``) and their
writers; also the one-line error for a missing optional dependency (:func:`require_extra`). Timestamps are integer nanoseconds
(``int64``) unless a function says otherwise; quaternions are (qx, qy, qz, qw) (the ROS and TUM order); poses are
4x4 float64 rigid transforms.

Typical usage example:

    >>> import numpy as np
    >>> from ovmap.datasets.stamped import associate
    >>> associate(np.array([0, 100]), np.array([5, 90]), max_diff=10)
    [(0, 0), (1, 1)]
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ovmap.datasets.scannetpp import quat_to_rotmat


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency is not installed (a RuntimeError too, so the CLI prints it as one line)."""


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingExtraError` naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = module.split(".")[0]
        raise MissingExtraError(
            f'{what} needs the optional package {pkg}: pip install -e ".[{extra}]" (or pip install {pkg})'
        ) from None


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a (qx, qy, qz, qw) quaternion (normalised first); raises ValueError on a zero norm."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has zero or non-finite norm")
    return quat_to_rotmat(np.array([q[3], q[0], q[1], q[2]]))


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """(qx, qy, qz, qw) with qw >= 0 of a (3, 3) rotation matrix (Shepperd's method, float64)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    cands = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(cands))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif k == 1:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_from_tq(t: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """4x4 transform from a translation (3,) and a (qx, qy, qz, qw) quaternion."""
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_matrix(q_xyzw)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w) at fraction ``a`` in [0, 1] (short arc)."""
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 1 - 1e-12:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(min(d, 1.0))
    return (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)


def interpolate_pose(
    times: np.ndarray, poses: np.ndarray, t: int, max_gap: int | None = None
) -> np.ndarray | None:
    """Pose at time ``t`` from samples (``times`` (N,) sorted int64 ns, ``poses`` (N, 4, 4)).

    Translation is interpolated linearly, rotation by slerp between the two samples around ``t``. A sample at
    exactly ``t`` is returned as is. Returns None when ``t`` lies outside [times[0], times[-1]] or the bracketing
    samples are more than ``max_gap`` ns apart (when given): no extrapolation.
    """
    n = len(times)
    if n == 0:
        return None
    j = int(np.searchsorted(times, t, side="left"))
    if j < n and times[j] == t:
        return poses[j].copy()
    if j == 0 or j == n:
        return None
    t0, t1 = int(times[j - 1]), int(times[j])
    if max_gap is not None and t1 - t0 > max_gap:
        return None
    a = (t - t0) / (t1 - t0)
    P0, P1 = poses[j - 1], poses[j]
    q = slerp(matrix_to_quat_xyzw(P0[:3, :3]), matrix_to_quat_xyzw(P1[:3, :3]), a)
    return pose_from_tq((1 - a) * P0[:3, 3] + a * P1[:3, 3], q)


def associate(a: np.ndarray, b: np.ndarray, max_diff: float) -> list[tuple[int, int]]:
    """Pairs stream ``a`` with stream ``b`` by nearest timestamp, each element used at most once.

    Candidate pairs are the nearest neighbours in ``b`` of every element of ``a`` (both sides); they are accepted
    greedily by increasing time difference (as the TUM benchmark's ``associate.py`` does), keeping only
    ``|a_i - b_j| <= max_diff``. Returns (i, j) index pairs sorted by i. Units: whatever ``a``, ``b`` and
    ``max_diff`` share.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if len(a) == 0 or len(b) == 0:
        return []
    order = np.argsort(b, kind="stable")
    bs = b[order]
    cands = []
    for i, t in enumerate(a):
        j = int(np.searchsorted(bs, t))
        for k in (j - 1, j):
            if 0 <= k < len(bs):
                d = abs(float(t) - float(bs[k]))
                if d <= max_diff:
                    cands.append((d, i, int(order[k])))
    cands.sort()
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in cands:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def frame_to_arrays(frame: dict, depth_scale: float | None = None) -> dict[str, np.ndarray]:
    """A dataset frame as the arrays recording writers store (the folder writer's quantisation).

    Returns ``rgb8`` (H, W, 3) uint8 = round(rgb * 255); ``depth`` (H', W') float64 metres with NaN / non-positive
    -> 0; ``depth16`` (H', W') uint16 = round(depth * depth_scale) when ``depth_scale`` is given; ``pose`` (4, 4)
    float64 camera-to-world; ``K`` (3, 3) float64 at depth resolution.
    """
    rgb = np.asarray(frame["rgb"], dtype=np.float64).transpose(1, 2, 0)
    depth = np.asarray(frame["depth"], dtype=np.float64)[0]
    valid = np.isfinite(depth) & (depth > 0)
    depth = np.where(valid, depth, 0.0)
    out = {
        "rgb8": np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8),
        "depth": depth,
        "pose": np.asarray(frame["pose"], dtype=np.float64).reshape(4, 4),
        "K": np.asarray(frame["intrinsics"], dtype=np.float64).reshape(3, 3),
    }
    if depth_scale is not None:
        if depth.max(initial=0.0) * depth_scale >= 65535.5:
            raise ValueError(
                f"depth {depth.max():.3f} m of frame {frame.get('index')} exceeds 16 bits at scale {depth_scale}"
            )
        out["depth16"] = np.round(depth * depth_scale).astype(np.uint16)
    return out
