"""ScanNet++ loader: COLMAP world-to-camera poses, pairing by name, and fisheye-rendered depth undistorted onto the
pinhole grid, checked against an analytic plane rendered through an independent OPENCV_FISHEYE model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ovmap.datasets import build_dataset, load_label_set
from _helpers_scannetpp import (
    C2W_HAND,
    FISH,
    H,
    W,
    _t,
    plane_depth_pinhole,
    render_plane_fisheye,
    write_scannetpp,
)


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
