"""ScanNet++ loader: COLMAP world-to-camera poses, pairing by name, and fisheye-rendered depth undistorted onto the
pinhole grid, checked against an analytic plane rendered through an independent OPENCV_FISHEYE model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovmap.datasets import build_dataset, load_label_set

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


def test_pose_inversion_order_and_pairing(tmp_path, caplog):
    root = write_scannetpp(tmp_path / "spp")
    ds = build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    assert ds.gt_source == "external" and ds.class_names[1:] == load_label_set("scannetpp_top100")
    assert ds.skipped_images == ["DSC00009.JPG"] and "DSC00009.JPG" in caplog.text
    assert len(ds) == 3 and ds.depth_kind == "fisheye"
    f0, f1, f2 = ds[0], ds[1], ds[2]  # ids 1, 3, 5 -> DSC00001, DSC00003, DSC00002
    np.testing.assert_allclose(f0["pose"].numpy(), C2W_HAND, atol=1e-6)
    np.testing.assert_allclose(f1["pose"].numpy(), np.eye(4) + np.diag([0, 0, 0, 0]) + _t(0, 0, 1), atol=1e-6)
    np.testing.assert_allclose(f2["pose"].numpy(), np.eye(4) + _t(-0.5, 0, 0), atol=1e-6)
    # RGB / depth paired by name: DSC00003 is grey 80 with depth scaled by 1.2
    assert round(float(f1["rgb"][0, 5, 5]) * 255) == 80
    assert round(float(f2["rgb"][0, 5, 5]) * 255) == 40
    np.testing.assert_allclose(f0["intrinsics"].numpy(), [[34, 0, 46], [0, 35, 32], [0, 0, 1]])


def _t(x, y, z):
    T = np.zeros((4, 4))
    T[:3, 3] = [x, y, z]
    return T


def test_fisheye_depth_undistorted_onto_pinhole_grid(tmp_path):
    root = write_scannetpp(tmp_path / "spp")
    ds = build_dataset("scannetpp", path=str(root), scene="bcd2436daf", depth_source="fisheye")
    d = ds[0]["depth"][0].numpy().astype(np.float64)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = plane_depth_pinhole(u, v)
    valid = np.isfinite(d)
    assert valid.mean() > 0.9
    rel = np.abs(d[valid] - truth[valid]) / truth[valid]
    # nearest sampling is off by at most half a fisheye pixel: small errors, largest at the wide-angle corners
    assert np.median(rel) < 0.003 and rel.max() < 0.03, (np.median(rel), rel.max())
    # nearest sampling: every output value is one of the stored fisheye values
    stored = np.round(render_plane_fisheye() * 1000).astype(np.uint16).astype(np.float32) / np.float32(1000)
    assert np.isin(d[valid].astype(np.float32), stored).all()
    # the test is sensitive: pairing the fisheye depth with the pinhole grid as it is (the reference) is far off
    naive = np.abs(render_plane_fisheye() - truth) / truth
    assert naive.max() > 0.05
    # resizing to the protocol-style size scales K by the simple rule
    small = build_dataset("scannetpp", path=str(root), scene="bcd2436daf", rgb_resolution=[16, 24], depth_resolution=[16, 24])
    np.testing.assert_allclose(small[0]["intrinsics"].numpy(), [[8.5, 0, 11.5], [0, 8.75, 8], [0, 0, 1]])


def test_undistorted_depth_alternative_and_transforms_json_fallback(tmp_path):
    root = write_scannetpp(tmp_path / "a", depth_kind="undistorted", depth_under_root=False)
    ds = build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    assert ds.depth_kind == "undistorted"
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    np.testing.assert_allclose(ds[0]["depth"][0].numpy(), plane_depth_pinhole(u, v), atol=6e-4)
    with pytest.raises(FileNotFoundError, match="render_depth"):
        build_dataset("scannetpp", path=str(root), scene="bcd2436daf", depth_source="fisheye")
    root = write_scannetpp(tmp_path / "b")
    dslr = root / "bcd2436daf" / "dslr"
    (dslr / "colmap" / "cameras.txt").unlink()
    (dslr / "nerfstudio" / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV_FISHEYE", "fl_x": FISH["fx"], "fl_y": FISH["fy"], "cx": FISH["cx"], "cy": FISH["cy"],
        "k1": FISH["k"][0], "k2": FISH["k"][1], "k3": FISH["k"][2], "k4": FISH["k"][3], "w": W, "h": H,
    }))
    ds2 = build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    ref = build_dataset("scannetpp", path=str(write_scannetpp(tmp_path / "c")), scene="bcd2436daf")
    np.testing.assert_array_equal(ds2[0]["depth"].numpy(), ref[0]["depth"].numpy())


def test_scannetpp_gt_and_bad_inputs(tmp_path):
    root = write_scannetpp(tmp_path / "spp")
    ds = build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    with pytest.raises(FileNotFoundError, match="external_semseg_gt.pt"):
        ds.gt_points()
    torch.save({"semseg_gt_xyz": torch.rand(4, 3, dtype=torch.float64),
                "semseg_gt_label": torch.tensor([1.0, 100.0, -99.0, 0.0], dtype=torch.float64)},
               root / "bcd2436daf" / "external_semseg_gt.pt")
    xyz, lab = ds.gt_points()
    np.testing.assert_array_equal(lab, [1, 100, 0, 0])
    with pytest.raises(FileNotFoundError, match=r"'nope'.*scenes there: bcd2436daf"):
        build_dataset("scannetpp", path=str(root), scene="nope")
    (root / "depth" / "bcd2436daf" / "dslr" / "render_depth" / "DSC00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="DSC00002.png"):
        build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    root = write_scannetpp(tmp_path / "b")
    (root / "bcd2436daf" / "dslr" / "colmap" / "images.txt").write_text("1 1 0 0 DSC00001.JPG\n\n")
    with pytest.raises(ValueError, match="images.txt: malformed"):
        build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    root = write_scannetpp(tmp_path / "c")
    d = root / "depth" / "bcd2436daf" / "dslr" / "render_depth" / "DSC00003.png"
    cv2.imwrite(str(d), np.ones((H + 2, W), np.uint16))
    ds = build_dataset("scannetpp", path=str(root), scene="bcd2436daf")
    with pytest.raises(ValueError, match="DSC00003.png"):
        ds[1]
