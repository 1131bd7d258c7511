"""Rendered version of the eval spec's known-answer scene (eval3d_protocol.md section 16) and its helpers.

The scene is three axis-aligned boxes in empty space, seen by 18 pinhole cameras (640x480, fx = fy = 300,
cx = 319.5, cy = 239.5), one 0.8 m in front of each box face and looking at the box centre (c2w, OpenCV axes).
Frames are rendered by an analytic numpy ray/box (slab) intersection: rays through integer pixel centres
K^-1 (u, v, 1) (ovmap's convention, no +0.5), z-depth, NaN background, per-pixel class ids. Nothing here is
taken from the library except the dataset base class, so the renderer is independent of the code under test.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ovmap.datasets.base import PosedRGBDDataset

H, W = 480, 640
FX = FY = 300.0
CX, CY = 319.5, 239.5
K = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
VOXEL = 0.05
CAMERA_DISTANCE = 0.8

# class index -> (box min, box max) in metres; every face lies on a voxel-centre plane
BOXES = {
    1: (np.array([0.0, 0.0, 0.0]), np.array([0.3, 0.3, 0.3])),  # A, 7 x 7 x 7 lattice points
    2: (np.array([2.0, 0.0, 0.0]), np.array([2.5, 0.3, 0.2])),  # B, 11 x 7 x 5
    3: (np.array([0.0, 2.0, 0.0]), np.array([1.0, 2.5, 0.1])),  # C, 21 x 11 x 3
}
# 12 prompt names: the 3 present classes + 9 absent distractors (C = 12 > 10: no C <= 10 quirk)
CLASS_NAMES = [
    "ignore",
    "chair",
    "sofa",
    "table",
    "bed",
    "lamp",
    "sink",
    "door",
    "window",
    "toilet",
    "shelf",
    "rug",
    "tv",
]
NUM_CLASSES = len(CLASS_NAMES) - 1
# face order per box: (-x, +x, -y, +y, -z, +z); "from below" is the -z face's camera
FACES = [(axis, sign) for axis in range(3) for sign in (-1, 1)]
COLOURS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]] + [[0.5, 0.5, 0.5]] * 9, dtype=np.float32)


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world pose, OpenCV axes (x right, y down, z forward), looking from ``eye`` at ``target``."""
    z = target - eye
    z = z / np.linalg.norm(z)
    y = -(up - np.dot(up, z) * z)
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def views(drop_below: bool = False) -> list[tuple[int, int, int, np.ndarray]]:
    """(box class, axis, sign, c2w pose) per camera: for each box and face, 0.8 m in front of the face centre."""
    out = []
    for cls, (lo, hi) in BOXES.items():
        centre = 0.5 * (lo + hi)
        for axis, sign in FACES:
            if drop_below and axis == 2 and sign < 0:
                continue
            eye = centre.copy()
            eye[axis] = (hi if sign > 0 else lo)[axis] + sign * CAMERA_DISTANCE
            up = np.array([0.0, 1.0, 0.0]) if axis == 2 else np.array([0.0, 0.0, 1.0])
            out.append((cls, axis, sign, look_at_c2w(eye, centre, up)))
    return out


def render(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analytic ray casting of the three boxes: ((H, W) float32 z-depth, NaN = background; (H, W) int64 ids)."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays_cam = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)  # K^-1 (u, v, 1); z = 1
    rays = rays_cam @ pose[:3, :3].T
    origin = pose[:3, 3]
    best = np.full((H, W), np.inf)
    labels = np.zeros((H, W), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for cls, (lo, hi) in BOXES.items():
            t1 = (lo - origin) / rays
            t2 = (hi - origin) / rays
            t_near = np.minimum(t1, t2).max(axis=-1)
            t_far = np.maximum(t1, t2).min(axis=-1)
            hit = (t_near <= t_far) & (t_near > 0) & (t_near < best)
            best[hit] = t_near[hit]  # the ray's z component is 1, so t is the z-depth
            labels[hit] = cls
    depth = np.where(np.isfinite(best), best, np.nan).astype(np.float32)
    return depth, labels


@cache
def rendered_views(drop_below: bool = False) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """(depth, labels, pose) of every camera, rendered once per process."""
    out = []
    for _, _, _, pose in views(drop_below):
        depth, labels = render(pose)
        depth.setflags(write=False)
        labels.setflags(write=False)
        out.append((depth, labels, pose.astype(np.float32)))
    return tuple(out)


def surface_indices(cls: int, drop_bottom: bool = False) -> np.ndarray:
    """(N, 3) integer voxel indices of a box's surface lattice (optionally without the bottom face's interior)."""
    lo, hi = BOXES[cls]
    klo = np.round(lo / VOXEL).astype(np.int64)
    n = np.round((hi - lo) / VOXEL).astype(np.int64) + 1
    g = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, 3)
    surface = ((g == 0) | (g == n - 1)).any(axis=1)
    if drop_bottom:
        interior_xy = ((g[:, :2] > 0) & (g[:, :2] < n[:2] - 1)).all(axis=1)
        surface &= ~((g[:, 2] == 0) & interior_xy)
    return g[surface] + klo


def dense_face_points(step: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """External GT: points every ``step`` metres on all 6 faces of every box, with the box's class id."""
    pts, ids = [], []
    for cls, (lo, hi) in BOXES.items():
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            ua = np.arange(lo[a], hi[a] + 1e-9, step)
            ub = np.arange(lo[b], hi[b] + 1e-9, step)
            gu, gv = np.meshgrid(ua, ub, indexing="ij")
            for value in (lo[axis], hi[axis]):
                p = np.empty((gu.size, 3))
                p[:, axis] = value
                p[:, a] = gu.ravel()
                p[:, b] = gv.ravel()
                pts.append(p)
                ids.append(np.full(gu.size, cls, dtype=np.int64))
    return np.concatenate(pts).astype(np.float32), np.concatenate(ids)


class BoxesDataset(PosedRGBDDataset):
    """The known-answer scene as a posed RGB-D dataset with per-pixel labels.

    Args:
        labels: "oracle" (labels as rendered) or "confused" (box B's pixels labelled A, class 1).
        drop_below: leave out the three cameras below the boxes (bottom faces unseen).
        external_gt: ``gt_points()`` returns dense labelled points on all 6 faces (else None -> lifted GT).
    """

    scene_name = "known_answer_boxes"

    def __init__(self, labels: str = "oracle", drop_below: bool = False, external_gt: bool = False) -> None:
        super().__init__()
        if labels not in ("oracle", "confused"):
            raise ValueError(labels)
        self.class_names = list(CLASS_NAMES)
        self.label_mode = labels
        self.drop_below = drop_below
        self.external_gt = external_gt

    @property
    def has_labels(self) -> bool:
        return True

    def _num_raw_frames(self) -> int:
        return len(rendered_views(self.drop_below))

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        depth, labels, pose = rendered_views(self.drop_below)[raw_index]
        if self.label_mode == "confused":
            labels = np.where(labels == 2, 1, labels)
        return {
            "rgb": COLOURS[labels].transpose(2, 0, 1),
            "depth": depth[None].copy(),
            "labels": labels[None].copy(),
            "pose": pose,
            "intrinsics": K.astype(np.float32),
        }

    def gt_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        return dense_face_points() if self.external_gt else None

    def _extra_config(self) -> dict[str, Any]:
        return {"labels": self.label_mode, "drop_below": self.drop_below, "external_gt": self.external_gt}


class FramesDataset(PosedRGBDDataset):
    """A dataset over given raw frames (micro-tests): dicts with depth (H, W), labels (H, W), pose, intrinsics."""

    scene_name = "micro"

    def __init__(self, frames: list[dict[str, Any]], class_names: list[str]) -> None:
        super().__init__()
        self.frames = frames
        self.class_names = list(class_names)

    @property
    def has_labels(self) -> bool:
        return True

    def _num_raw_frames(self) -> int:
        return len(self.frames)

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        f = self.frames[raw_index]
        h, w = f["depth"].shape
        return {
            "rgb": np.zeros((3, h, w), np.float32),
            "depth": f["depth"][None],
            "labels": f["labels"][None],
            "pose": f.get("pose", np.eye(4)),
            "intrinsics": f.get("intrinsics", K),
        }


def designed_probabilities(probs: np.ndarray, temperature: float = 100.0) -> np.ndarray:
    """A (C+1)-vector q (channel 0 = 0, summing to 1) whose softmax(temperature * q / |q|) over the C classes
    equals ``probs`` (C,): the protocol's probability-space scoring against one-hot text (1e-10 terms aside).

    With logits l = ln p, q_c = l_c + s where s makes |l + s| = temperature, so temperature * q_c / |q| =
    l_c + s and the softmax returns p. All entries must come out non-negative (checked).
    """
    p = np.asarray(probs, dtype=np.float64)
    assert abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    lg = np.log(p)
    n = lg.size
    # n s^2 + 2 s sum(l) + sum(l^2) - T^2 = 0, larger root
    s = (-lg.sum() + np.sqrt(lg.sum() ** 2 - n * ((lg**2).sum() - temperature**2))) / n
    q = lg + s
    assert (q > 0).all() and abs(np.linalg.norm(q) - temperature) < 1e-9
    return np.concatenate([[0.0], q / q.sum()])


def block(
    depth: np.ndarray,
    labels: np.ndarray,
    u0: int,
    v0: int,
    w: int,
    h: int,
    z: float,
    label_values: np.ndarray,
) -> None:
    """Write a (h, w) pixel block at constant z-depth ``z`` with labels ``label_values`` (h*w, row-major)."""
    depth[v0 : v0 + h, u0 : u0 + w] = z
    labels[v0 : v0 + h, u0 : u0 + w] = np.asarray(label_values).reshape(h, w)
