"""ScanNet loader on a miniature SensReader export written here (poses with -inf, label-filt + tsv -> NYU40)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ovmap.datasets import build_dataset, load_label_set

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
