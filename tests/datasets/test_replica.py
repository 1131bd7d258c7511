"""Replica loaders (NICE-SLAM and Semantic-NeRF layouts) on miniature on-disk copies written here."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ovmap.datasets import build_dataset, load_label_set, read_external_gt
from ovmap.datasets.labels_io import split_trailing_number
from _helpers_replica import (
    H,
    SCALE,
    W,
    _depth_u16,
    _pose,
    _rgb,
    write_nice_replica,
    write_semnerf,
)


def test_nice_replica_frames_exact(tmp_path):
    root = write_nice_replica(tmp_path / "Replica")
    ds = build_dataset("replica", path=str(root), scene="office0")
    assert len(ds) == 5 and ds.gt_source == "external"
    assert ds.class_names[1:] == load_label_set("replica101") and ds.num_classes == 101
    f = ds[3]
    assert f["index"] == 3
    np.testing.assert_allclose(f["pose"].numpy(), _pose(3), atol=1e-6)
    K = np.array([[30.0, 0, (W - 1) / 2], [0, 31.0, (H - 1) / 2], [0, 0, 1]])
    np.testing.assert_allclose(f["intrinsics"].numpy(), K, rtol=1e-6)
    exp = _depth_u16(3).astype(np.float32) / np.float32(SCALE)
    d = f["depth"][0].numpy()
    assert np.isnan(d[0, 0])
    np.testing.assert_array_equal(d[1:, 1:], exp[1:, 1:])
    np.testing.assert_allclose(f["rgb"].numpy(), _rgb(3)[:, :, ::-1].transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_nice_replica_resize_and_skip(tmp_path):
    root = write_nice_replica(tmp_path / "Replica", n=7)
    ds = build_dataset("replica", path=str(root), scene="office0", frame_skip=2, rgb_resolution=[17, 30],
                       depth_resolution=[68, 120])
    assert ds.raw_indices == [0, 3, 6]
    f = ds[1]
    assert f["index"] == 3 and f["rgb"].shape == (3, 17, 30) and f["depth"].shape == (1, 68, 120)
    K = np.array([[30.0 * 2, 0, (W - 1) / 2 * 2], [0, 31.0 * 2, (H - 1) / 2 * 2], [0, 0, 1]])
    np.testing.assert_allclose(f["intrinsics"].numpy(), K, rtol=1e-6)


def test_nice_replica_invalid_pose_skipped_and_counted(tmp_path, caplog):
    poses = [_pose(i) for i in range(6)]
    poses[2] = np.full((4, 4), -np.inf)
    root = write_nice_replica(tmp_path / "R", n=6, poses=poses)
    ds = build_dataset("replica", path=str(root), scene="office0", frame_skip=1)
    assert ds.num_invalid_poses() == 1 and ds.invalid_pose_indices == [2]
    assert ds.raw_indices == [0, 4]
    assert "non-finite" in caplog.text
    np.testing.assert_allclose(ds[1]["pose"].numpy(), _pose(4), atol=1e-6)


def test_nice_replica_bad_inputs(tmp_path):
    root = write_nice_replica(tmp_path / "R")
    with pytest.raises(FileNotFoundError, match=r"scene 'room9'.*scenes there: office0"):
        build_dataset("replica", path=str(root), scene="room9")
    (root / "office0" / "results" / "depth000003.png").unlink()
    with pytest.raises(FileNotFoundError, match="depth000003.png"):
        build_dataset("replica", path=str(root), scene="office0")
    root2 = write_nice_replica(tmp_path / "R2")
    cam = json.loads((root2 / "cam_params.json").read_text())
    cam["camera"]["scale"] = 1.0  # depths of 1000+ m
    (root2 / "cam_params.json").write_text(json.dumps(cam))
    with pytest.raises(ValueError, match=r"depth000000.png.*100 m"):
        build_dataset("replica", path=str(root2), scene="office0")
    root3 = write_nice_replica(tmp_path / "R3")
    cv2.imwrite(str(root3 / "office0" / "results" / "frame000002.png"), _rgb(2, H + 2, W))
    ds = build_dataset("replica", path=str(root3), scene="office0")
    with pytest.raises(ValueError, match="frame000002.png"):
        ds[2]
    cv2.imwrite(str(root3 / "office0" / "results" / "frame000009.png"), _rgb(2))
    with pytest.raises(ValueError, match="frame000009.png"):
        build_dataset("replica", path=str(root3), scene="office0")


def test_replica_semantic_info_and_external_gt(tmp_path):
    root = write_nice_replica(tmp_path / "R")
    info = root / "semantic_info" / "office_0"
    info.mkdir(parents=True)
    (info / "info_semantic.json").write_text(json.dumps({"classes": [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}]}))
    ds = build_dataset("replica", path=str(root), scene="office0")
    assert ds.class_names == ["ignore", "a", "class_2", "c"]

    with pytest.raises(FileNotFoundError, match="external_semseg_gt.pt"):
        ds.gt_points()
    xyz = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    torch.save({"semseg_gt_xyz": xyz, "semseg_gt_label": torch.tensor([3.0, -1.0, 1.0], dtype=torch.float64)},
               root / "office0" / "external_semseg_gt.pt")
    pts, lab = ds.gt_points()
    assert pts.dtype == np.float64 and lab.dtype == np.int64
    np.testing.assert_array_equal(pts, xyz.numpy())
    np.testing.assert_array_equal(lab, [3, 0, 1])

    # gt_path as a folder holding <scene>/external_semseg_gt.pt (RayFronts' <eval_out>/NiceReplicaDataset)
    gdir = tmp_path / "eval_out" / "NiceReplicaDataset" / "office0"
    gdir.mkdir(parents=True)
    torch.save({"semseg_gt_xyz": xyz, "semseg_gt_label": torch.tensor([2.5, 1.0, 1.0])}, gdir / "external_semseg_gt.pt")
    ds2 = build_dataset("replica", path=str(root), scene="office0", gt_path=str(gdir.parent))
    with pytest.raises(ValueError, match="non-integral"):
        ds2.gt_points()


def test_read_external_gt_errors(tmp_path):
    f = tmp_path / "gt.pt"
    torch.save({"semseg_gt_xyz": torch.zeros(3, 3), "semseg_gt_label": torch.zeros(2)}, f)
    with pytest.raises(ValueError, match="shape"):
        read_external_gt(f)
    torch.save({"xyz": torch.zeros(3, 3)}, f)
    with pytest.raises(ValueError, match="semseg_gt_xyz"):
        read_external_gt(f)
    f.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        read_external_gt(f)
    # ScanNet++ toolkit output with numpy arrays: labels 0..99, -100 = ignore -> +1
    torch.save({"vtx_coords": np.ones((3, 3)), "vtx_labels": np.array([0, -100, 99])}, f)
    xyz, lab = read_external_gt(f)
    np.testing.assert_array_equal(lab, [1, 0, 100])


def test_scene_name_conversion():
    assert split_trailing_number("office0") == "office_0"
    assert split_trailing_number("room_2") == "room_2"


def test_semnerf_all_sequences_and_labels(tmp_path):
    root = write_semnerf(tmp_path / "Replica_Dataset")
    ds = build_dataset("replica_semnerf", path=str(root), scene="office_0")
    assert len(ds) == 6 and ds.has_labels and ds.gt_source == "lifted"
    f = ds[4]  # Sequence_2, frame 1
    np.testing.assert_allclose(f["pose"].numpy(), _pose(21), atol=1e-6)
    np.testing.assert_allclose(f["intrinsics"].numpy(), [[8, 0, 8], [0, 8, 6], [0, 0, 1]])
    exp_lab = (np.arange(12 * 16).reshape(12, 16) + 21) % 102
    np.testing.assert_array_equal(f["labels"][0].numpy(), exp_lab)
    np.testing.assert_array_equal(f["depth"][0].numpy()[1:, 1:], (_depth_u16(21, 12, 16) / np.float32(1000))[1:, 1:])
    one = build_dataset("replica_semnerf", path=str(root), scene="office0/Sequence_2")
    assert len(one) == 3
    np.testing.assert_allclose(one[0]["pose"].numpy(), _pose(20), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="Sequence_7.*Sequence_1, Sequence_2"):
        build_dataset("replica_semnerf", path=str(root), scene="office_0/Sequence_7")
    with pytest.raises(FileNotFoundError, match="scenes there: office_0"):
        build_dataset("replica_semnerf", path=str(root), scene="room_1")
    (root / "office_0" / "Sequence_1" / "semantic_class" / "semantic_class_2.png").unlink()
    with pytest.raises(FileNotFoundError, match="semantic_class_2.png"):
        build_dataset("replica_semnerf", path=str(root), scene="office_0")


def test_external_gt_to_voxel_labels_through_eval3d(tmp_path):
    from ovmap.eval3d import external_gt, make_class_table

    root = write_nice_replica(tmp_path / "R")
    # voxel (0,0,0): ids 5, 5, 7 -> class 5; voxel (10,0,0): ids 0, 0, 7 -> ignore wins (majority of 0)
    xyz = torch.tensor([[0.01, 0.0, 0.0], [0.02, 0.01, 0.0], [0.0, 0.02, 0.01],
                        [0.5, 0.0, 0.0], [0.51, 0.0, 0.0], [0.52, 0.01, 0.0]], dtype=torch.float64)
    torch.save({"semseg_gt_xyz": xyz, "semseg_gt_label": torch.tensor([5.0, 5, 7, -1, 0, 7], dtype=torch.float64)},
               root / "office0" / "external_semseg_gt.pt")
    ds = build_dataset("replica", path=str(root), scene="office0")
    table = make_class_table(dict(enumerate(ds.class_names)))
    gt = external_gt(*ds.gt_points(), table, 0.05)
    labels = dict(zip(map(tuple, np.asarray(gt.indices).tolist()), np.asarray(gt.labels).tolist()))
    assert labels == {(0, 0, 0): 5, (10, 0, 0): 0}
