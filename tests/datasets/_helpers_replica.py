"""Miniature Replica layouts (NICE-SLAM and Semantic-NeRF releases) written for the dataset tests."""

from __future__ import annotations

import json
from pathlib import Path
import cv2
import numpy as np


H, W = 34, 60  # a miniature 680x1200


SCALE = 6553.5


def _pose(i: int) -> np.ndarray:
    c, s = np.cos(0.1 * i), np.sin(0.1 * i)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = [0.5 * i, -0.25 * i, 1.5]
    return T


def _depth_u16(i: int, h: int = H, w: int = W) -> np.ndarray:
    d = (1000 + 100 * i + np.arange(h * w).reshape(h, w) % 500).astype(np.uint16)
    d[0, 0] = 0
    return d


def _rgb(i: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_nice_replica(root: Path, scene: str = "office0", n: int = 5, poses=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cam = {"camera": {"w": W, "h": H, "fx": 30.0, "fy": 31.0, "cx": (W - 1) / 2, "cy": (H - 1) / 2, "scale": SCALE}}
    (root / "cam_params.json").write_text(json.dumps(cam))
    res = root / scene / "results"
    res.mkdir(parents=True)
    poses = [_pose(i) for i in range(n)] if poses is None else poses
    (root / scene / "traj.txt").write_text("\n".join(" ".join(repr(float(v)) for v in p.reshape(-1)) for p in poses) + "\n")
    for i in range(n):
        cv2.imwrite(str(res / f"frame{i:06d}.png"), _rgb(i))  # lossless stand-in for .jpg
        cv2.imwrite(str(res / f"depth{i:06d}.png"), _depth_u16(i))
    return root


def write_semnerf(root: Path, scene: str = "office_0", seqs=(1, 2), n: int = 3, h: int = 12, w: int = 16) -> Path:
    for s in seqs:
        sq = root / scene / f"Sequence_{s}"
        for sub in ("rgb", "depth", "semantic_class"):
            (sq / sub).mkdir(parents=True)
        poses = [_pose(10 * s + i) for i in range(n)]
        (sq / "traj_w_c.txt").write_text("\n".join(" ".join(map(repr, p.reshape(-1).tolist())) for p in poses) + "\n")
        for i in range(n):
            cv2.imwrite(str(sq / "rgb" / f"rgb_{i}.png"), _rgb(10 * s + i, h, w))
            cv2.imwrite(str(sq / "depth" / f"depth_{i}.png"), _depth_u16(10 * s + i, h, w))
            lab = ((np.arange(h * w).reshape(h, w) + 10 * s + i) % 102).astype(np.uint8)
            cv2.imwrite(str(sq / "semantic_class" / f"semantic_class_{i}.png"), lab)
    return root
