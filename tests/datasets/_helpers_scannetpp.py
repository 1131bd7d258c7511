"""A miniature ScanNet++ DSLR scene (fisheye depth, COLMAP poses) written for the dataset tests."""

from __future__ import annotations

import json
from pathlib import Path
import cv2
import numpy as np


H, W = 64, 96  # a miniature 1168x1752


FISH = {"fx": 40.0, "fy": 42.0, "cx": 47.5, "cy": 31.5, "k": [0.05, -0.01, 0.002, -0.0005]}


PIN = {"fl_x": 34.0, "fl_y": 35.0, "cx": 46.0, "cy": 32.0, "w": W, "h": H}


PLANE_N = np.array([0.2, -0.1, 1.0]) / np.linalg.norm([0.2, -0.1, 1.0])


PLANE_D = 2.0  # camera-frame plane n . X = d


def plane_depth_pinhole(u, v):
    x, y = (u - PIN["cx"]) / PIN["fl_x"], (v - PIN["cy"]) / PIN["fl_y"]
    return PLANE_D / (PLANE_N[0] * x + PLANE_N[1] * y + PLANE_N[2])


def render_plane_fisheye() -> np.ndarray:
    """z-depth of the plane seen through the fisheye camera (the test's own inverse distortion, by Newton)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    xd, yd = (u - FISH["cx"]) / FISH["fx"], (v - FISH["cy"]) / FISH["fy"]
    theta_d = np.hypot(xd, yd)
    k1, k2, k3, k4 = FISH["k"]
    theta = theta_d.copy()
    for _ in range(50):
        t2 = theta**2
        f = theta * (1 + k1 * t2 + k2 * t2**2 + k3 * t2**3 + k4 * t2**4) - theta_d
        df = 1 + 3 * k1 * t2 + 5 * k2 * t2**2 + 7 * k3 * t2**3 + 9 * k4 * t2**4
        theta -= f / df
    s = np.where(theta_d > 0, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
    x, y = xd * s, yd * s
    return PLANE_D / (PLANE_N[0] * x + PLANE_N[1] * y + PLANE_N[2])


# hand-built: camera-to-world = rotation of +90 deg about z, centre (1, 2, 3)


C2W_HAND = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=np.float64)


Q_HAND = (np.sqrt(0.5), 0.0, 0.0, -np.sqrt(0.5))  # world-to-camera rotation: -90 deg about z


T_HAND = (-2.0, 1.0, -3.0)  # -R_w2c @ centre


def write_scannetpp(root: Path, scene: str = "bcd2436daf", depth_kind: str = "fisheye", depth_under_root=True) -> Path:
    dslr = root / scene / "dslr"
    (dslr / "undistorted_images").mkdir(parents=True)
    (dslr / "colmap").mkdir(parents=True)
    (dslr / "nerfstudio").mkdir(parents=True)
    (dslr / "nerfstudio" / "transforms_undistorted.json").write_text(json.dumps({**PIN, "camera_model": "PINHOLE"}))
    params = " ".join(map(str, [FISH["fx"], FISH["fy"], FISH["cx"], FISH["cy"], *FISH["k"]]))
    (dslr / "colmap" / "cameras.txt").write_text(f"# Camera list\n1 OPENCV_FISHEYE {W} {H} {params}\n")
    # image ids deliberately out of file order; DSC00009 is listed but its image is missing; empty points lines
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
    lines += ["3 1 0 0 0 0 0 -1 1 DSC00003.JPG", ""]
    lines += [f"1 {' '.join(map(str, map(float, Q_HAND)))} {' '.join(map(str, T_HAND))} 1 DSC00001.JPG", "1.0 2.0 -1"]
    lines += ["2 1 0 0 0 0 0 0 1 DSC00009.JPG", ""]
    lines += ["5 1 0 0 0 0.5 0 0 1 DSC00002.JPG", ""]
    (dslr / "colmap" / "images.txt").write_text("\n".join(lines) + "\n")
    ddir = (root / "depth" / scene / "dslr" if depth_under_root else dslr) / (
        "render_depth" if depth_kind == "fisheye" else "render_depth_undistorted"
    )
    ddir.mkdir(parents=True)
    depth = render_plane_fisheye() if depth_kind == "fisheye" else plane_depth_pinhole(*np.mgrid[0:H, 0:W][::-1])
    for k, name in enumerate(["DSC00001", "DSC00002", "DSC00003"]):
        cv2.imwrite(str(dslr / "undistorted_images" / f"{name}.JPG"), np.full((H, W, 3), 40 * k, np.uint8))
        cv2.imwrite(str(ddir / f"{name}.png"), np.round(depth * 1000 * (1 + 0.1 * k)).astype(np.uint16))
    return root


def _t(x, y, z):
    T = np.zeros((4, 4))
    T[:3, 3] = [x, y, z]
    return T
