"""ScanNet loader on a miniature SensReader export written here (poses with -inf, label-filt + tsv -> NYU40)."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from ovmap.datasets import build_dataset, load_label_set
from _helpers_scannet import (
    CH,
    CW,
    DH,
    DW,
    K_DEPTH,
    _expected_nyu,
    _pose,
    write_scannet,
)


def test_scannet_frames_labels_and_resizing(tmp_path):
    root = write_scannet(tmp_path / "scannet")
    ds = build_dataset("scannet", path=str(root), scene="scene0011_00", frame_skip=1,
                       rgb_resolution=[32, 43], depth_resolution=[32, 43])
    assert ds.raw_indices == [0, 2, 4] and ds.has_labels and ds.gt_source == "lifted"
    assert ds.class_names[1:] == load_label_set("nyu40")[:37] and ds.class_names[24] == "refridgerator"
    f = ds[1]
    assert f["index"] == 2
    np.testing.assert_allclose(f["pose"].numpy(), _pose(2), atol=1e-6)
    K = K_DEPTH.copy()
    K[0] *= 43 / DW
    K[1] *= 32 / DH
    np.testing.assert_allclose(f["intrinsics"].numpy(), K, rtol=1e-6)
    assert f["depth"].shape == (1, 32, 43) and f["labels"].shape == (1, 32, 43)
    native = build_dataset("scannet", path=str(root), scene="scene0011_00")
    g = native[2]
    assert g["rgb"].shape == (3, CH, CW) and g["depth"].shape == (1, DH, DW)
    np.testing.assert_array_equal(g["depth"][0].numpy(), (500 + 20 + np.arange(DH * DW).reshape(DH, DW)).astype(np.float32) / np.float32(1000))
    np.testing.assert_array_equal(g["labels"][0].numpy(), _expected_nyu(2))
    np.testing.assert_allclose(g["intrinsics"].numpy(), K_DEPTH)
    full = build_dataset("scannet", path=str(root), scene="scene0011_00", ignore_other_classes=False)
    assert full.num_classes == 40
    np.testing.assert_array_equal(full[2]["labels"][0].numpy(), _expected_nyu(2, False))


def test_scannet_inf_poses_skipped_counted_aligned(tmp_path, caplog):
    root = write_scannet(tmp_path / "s", n=9, bad_poses=(2, 3, 6))
    ds = build_dataset("scannet", path=str(root), scene="scene0011_00", frame_skip=1)
    assert ds.num_invalid_poses() == 3 and ds.invalid_pose_indices == [2, 3, 6]
    assert "3 of 9 frames have invalid poses" in caplog.text and "frame 6 skipped: invalid pose (non-finite" in caplog.text
    assert ds.raw_indices == [0, 4, 8] and len(ds) == 3
    for f, i in zip(ds, [0, 4, 8]):
        assert f["index"] == i
        np.testing.assert_allclose(f["pose"].numpy(), _pose(i), atol=1e-6)
        assert abs(float(f["rgb"][0, 0, 0]) * 255 - 10 * i) <= 2  # colour of frame i
        np.testing.assert_array_equal(f["labels"][0].numpy(), _expected_nyu(i))
        assert float(f["depth"][0, 0, 0]) == pytest.approx((500 + 10 * i) / 1000)


def test_scannet_bad_inputs(tmp_path):
    root = write_scannet(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match=r"scene0999_00.*scenes there: scene0011_00"):
        build_dataset("scannet", path=str(root), scene="scene0999_00")
    (root / "scene0011_00" / "pose" / "4.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"pose/4.txt"):
        build_dataset("scannet", path=str(root), scene="scene0011_00")
    root = write_scannet(tmp_path / "s2")
    (root / "scene0011_00" / "pose" / "1.txt").write_text("1 0 0\n")
    with pytest.raises(ValueError, match=r"pose/1.txt"):
        build_dataset("scannet", path=str(root), scene="scene0011_00")
    root = write_scannet(tmp_path / "s3")
    (root / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="scannetv2-labels.combined.tsv"):
        build_dataset("scannet", path=str(root), scene="scene0011_00")
    assert not build_dataset("scannet", path=str(root), scene="scene0011_00", labels=False).has_labels
    root = write_scannet(tmp_path / "s4")
    cv2.imwrite(str(root / "scene0011_00" / "depth" / "0.png"), np.full((DH, DW), 65000, np.uint16))
    with pytest.raises(ValueError, match=r"depth/0.png.*100 m"):
        build_dataset("scannet", path=str(root), scene="scene0011_00", depth_scale=100.0)
    root = write_scannet(tmp_path / "s5")
    cv2.imwrite(str(root / "scene0011_00" / "depth" / "3.png"), np.ones((DH + 1, DW), np.uint16))
    ds = build_dataset("scannet", path=str(root), scene="scene0011_00")
    ds[0]
    with pytest.raises(ValueError, match=r"depth/3.png"):
        ds[3]
    root = write_scannet(tmp_path / "s6", labels=False)
    ld = root / "scene0011_00" / "scene0011_00_2d-label-filt" / "label-filt"
    ld.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"label-filt/0.png"):
        build_dataset("scannet", path=str(root), scene="scene0011_00")
