"""A miniature ScanNet scan (exported layout) written for the dataset tests."""

from __future__ import annotations

from pathlib import Path
import cv2
import numpy as np


CH, CW = 24, 32  # colour (a miniature 968x1296)


DH, DW = 12, 16  # depth (a miniature 480x640)


K_DEPTH = np.array([[14.5, 0, 7.25], [0, 14.0, 5.75], [0, 0, 1]])
# raw ScanNet id -> nyu40id (a few real rows: 1 wall, 2 chair -> 5, 3 floor -> 2, 40 otherprop, 39 otherfurniture)


TSV_ROWS = [(1, 1, "wall"), (2, 5, "chair"), (3, 2, "floor"), (7, 40, "otherprop"), (9, 39, "otherfurniture"),
            (13, 24, "refridgerator")]


def _pose(i: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [i, 2.0 * i, 0.5]
    T[:3, :3] = cv2.Rodrigues(np.array([0.1 * i, 0.2, -0.3]))[0]
    return T


def _raw_labels(i: int) -> np.ndarray:
    vals = np.array([0, 1, 2, 3, 7, 9, 13, 500], dtype=np.uint16)  # 500: not in the tsv -> 0
    return vals[(np.arange(CH * CW).reshape(CH, CW) + i) % len(vals)]


def write_scannet(root: Path, scene: str = "scene0011_00", n: int = 6, bad_poses=(), labels=True) -> Path:
    s = root / scene
    for sub in ("color", "depth", "pose", "intrinsic"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    K4 = np.eye(4)
    K4[:3, :3] = K_DEPTH
    np.savetxt(s / "intrinsic" / "intrinsic_depth.txt", K4)
    for i in range(n):
        cv2.imwrite(str(s / "color" / f"{i}.jpg"), np.full((CH, CW, 3), 10 * i, np.uint8))
        cv2.imwrite(str(s / "depth" / f"{i}.png"), (500 + 10 * i + np.arange(DH * DW).reshape(DH, DW)).astype(np.uint16))
        pose = np.full((4, 4), -np.inf) if i in bad_poses else _pose(i)
        np.savetxt(s / "pose" / f"{i}.txt", pose)
    if labels:
        ld = s / f"{scene}_2d-label-filt" / "label-filt"
        ld.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(ld / f"{i}.png"), _raw_labels(i))
        lines = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class"]
        lines += [f"{r}\tx\tx\t1\t{nid}\t0\tx\t{name}" for r, nid, name in TSV_ROWS]
        (root / "scannetv2-labels.combined.tsv").write_text("\n".join(lines) + "\n")
    return root


def _expected_nyu(i: int, ignore_other: bool = True) -> np.ndarray:
    lut = {0: 0, 1: 1, 2: 5, 3: 2, 7: 40, 9: 39, 13: 24, 500: 0}
    out = np.vectorize(lut.get)(_raw_labels(i).astype(np.int64))
    return np.where(out > 37, 0, out) if ignore_other else out
