"""Input validation of posed RGB-D data (docs/validation.md): poses, intrinsics, depth and corrupt files.

Hand-made folder scenes with known values; every case asserts the exception type and its single line, or the
skip count and the frames that remain.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from ovmap.datasets import FolderDataset, SyntheticScene
from ovmap.datasets.base import PosedRGBDDataset
from ovmap.datasets.validation import (
    DET_TOL,
    ROTATION_TOL,
    check_intrinsics,
    depth_from_uint16,
    depth_problem,
    pose_problem,
)

H, W = 24, 32
K_OK = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _pose(i: int, R: np.ndarray | None = None) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _rot_z(0.1 * i) if R is None else R
    T[:3, 3] = [0.1 * i, 0.0, 0.0]
    return T


def _random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random rotations (QR of Gaussian matrices, sign-fixed to det +1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        out.append(q)
    return np.stack(out)


def make_scene(root: Path, poses: list[np.ndarray], depths: list[np.ndarray] | None = None,
               K: np.ndarray | str = K_OK, depth_scale: float = 1000.0) -> Path:  # fmt: skip
    """A folder-format scene: frame i has pose poses[i] and uint16 depth depths[i] (default 2000 = 2 m)."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    k_text = K if isinstance(K, str) else "\n".join(" ".join(repr(float(x)) for x in row) for row in K)
    (root / "intrinsics.txt").write_text(k_text + "\n")
    (root / "poses.txt").write_text("\n".join(" ".join(repr(float(x)) for x in p.reshape(-1)) for p in poses) + "\n")
    (root / "meta.yaml").write_text(f"depth_scale: {depth_scale}\n")
    for i in range(len(poses)):
        cv2.imwrite(str(root / "rgb" / f"{i:06d}.png"), np.full((H, W, 3), 100, np.uint8))
        d = depths[i] if depths is not None else np.full((H, W), 2000, np.uint16)
        cv2.imwrite(str(root / "depth" / f"{i:06d}.png"), d.astype(np.uint16))
    return root


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ========================================================================================================= poses
BAD_ROTATIONS = {
    "scaled_x2": (2.0 * _rot_z(0.3), "rotation is not orthonormal (max|R^T R - I| = 3 > 0.001; scaled or sheared?)"),
    "sheared": (np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]),
                "rotation is not orthonormal (max|R^T R - I| = 0.5 > 0.001; scaled or sheared?)"),
    "mirrored": (np.diag([1.0, 1.0, -1.0]) @ _rot_z(0.3), "rotation is mirrored (det = -1)"),
    "zero": (np.zeros((3, 3)), "rotation is not orthonormal (max|R^T R - I| = 1 > 0.001; scaled or sheared?)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROTATIONS))
def test_non_rigid_pose_is_skipped_and_counted(tmp_path, caplog, case):
    R, reason = BAD_ROTATIONS[case]
    poses = [_pose(i) for i in range(4)]
    poses[1] = _pose(1, R)
    root = make_scene(tmp_path / "s", poses)
    with caplog.at_level(logging.WARNING):
        ds = FolderDataset(root)
    assert ds.num_invalid_poses() == 1 and ds.invalid_pose_indices == [1]
    assert ds.pose_problems == {1: reason}
    assert ds.raw_indices == [0, 2, 3] and len(ds) == 3
    assert [f["index"] for f in ds] == [0, 2, 3]
    for f in ds:
        np.testing.assert_allclose(f["pose"].numpy(), poses[f["index"]], atol=1e-6)
    assert ds.validation_summary() == {"invalid_pose": 1, "no_valid_depth": 0, "implausible_depth": 0}
    assert f"{root / 'poses.txt'}: frame 1 skipped: invalid pose ({reason})" in caplog.text


def test_all_frames_with_invalid_poses_is_an_error(tmp_path):
    poses = [_pose(i, np.diag([-1.0, 1.0, 1.0])) for i in range(3)]
    root = make_scene(tmp_path / "s", poses)
    with pytest.raises(ValueError) as e:
        FolderDataset(root)
    assert _one_line(e) == (
        f"{root / 'poses.txt'}: all 3 selected frames have invalid poses (frame 0: rotation is mirrored (det = -1)); "
        "poses must be rigid camera-to-world transforms (see docs/validation.md)"
    )
    # with frame_skip only the selected frames count: frames 0 and 2 bad, 1 good -> frame_skip=1 keeps 0, 2
    poses[1] = _pose(1)
    make_scene(tmp_path / "t", poses)
    assert FolderDataset(tmp_path / "t").raw_indices == [1]
    with pytest.raises(ValueError, match="all 2 selected frames have invalid poses"):
        FolderDataset(tmp_path / "t", frame_skip=1)


def test_real_float32_poses_pass_and_tolerance_is_tight():
    # synthetic scene trajectory and random rotations stored as float32, and as text with 4 decimals
    syn = SyntheticScene(preset="test")
    poses = [np.asarray(syn[i]["pose"], np.float32) for i in range(len(syn))]
    for R in _random_rotations(200):
        poses.append(_pose(0, R).astype(np.float32))
        poses.append(np.round(_pose(0, R), 4))
    assert [pose_problem(p) for p in poses] == [None] * len(poses)
    # but a 0.1 % scale or a 0.2 % shear is beyond the tolerance
    assert pose_problem(_pose(0, 1.001 * _rot_z(0.2))) is not None
    shear = np.eye(3)
    shear[0, 1] = 2e-3
    assert pose_problem(_pose(0, shear)) is not None
    assert ROTATION_TOL == 1e-3 and DET_TOL == 1e-3


def test_pose_problem_reasons():
    assert pose_problem(np.full((4, 4), np.nan)) == "non-finite values"
    p = _pose(0)
    p[3] = [0, 0, 1, 1]
    assert pose_problem(p) == "last row is [0.0, 0.0, 1.0, 1.0], not [0, 0, 0, 1]"
    assert pose_problem(_pose(3)) is None


class _StreamLike(PosedRGBDDataset):
    """A loader that does not parse its poses up front (like a stream): the base checks each frame's pose."""

    def __init__(self, poses: list[np.ndarray], depths: list[np.ndarray] | None = None) -> None:
        super().__init__()
        self._p = poses
        self._d = depths

    def _num_raw_frames(self) -> int:
        return len(self._p)

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        depth = self._d[raw_index] if self._d is not None else np.full((H, W), 2.0, np.float32)
        return {"rgb": np.zeros((3, H, W), np.float32), "depth": depth, "pose": self._p[raw_index], "intrinsics": K_OK}


def test_pose_checked_per_frame_when_not_known_up_front(caplog):
    poses = [_pose(0), _pose(1, 2.0 * np.eye(3)), _pose(2)]
    bottom = _pose(3)
    bottom[3] = [0, 0, 0, 2]
    poses.append(bottom)
    ds = _StreamLike(poses)
    frames = list(ds) + list(ds)  # a second pass counts nothing twice
    assert [bool(torch.isnan(f["pose"]).all()) for f in frames[:4]] == [False, True, False, True]
    np.testing.assert_allclose(frames[2]["pose"].numpy(), _pose(2), atol=1e-6)
    assert ds.num_invalid_poses() == 2 and ds.validation_summary()["invalid_pose"] == 2
    assert sorted(ds.skipped_frames()["invalid_pose"]) == [1, 3]
    assert "frame 1 skipped: invalid pose (rotation is not orthonormal" in caplog.text


# ==================================================================================================== intrinsics
@pytest.mark.parametrize(
    "K_text,expected",
    [
        ("30 0 15.5\n0 30 11.5\n1 2 3", "last row of the intrinsics must be [0 0 1], got [1.0, 2.0, 3.0]"),
        ("0 0 15.5\n0 30 11.5\n0 0 1", "intrinsics need fx > 0 and fy > 0, got fx=0, fy=30"),
        ("30 0 15.5\n0 -30 11.5\n0 0 1", "intrinsics need fx > 0 and fy > 0, got fx=30, fy=-30"),
        ("30 0 nan\n0 30 11.5\n0 0 1", "intrinsics must be finite, got [30 0 nan 0 30 11.5 0 0 1]"),
        # K of a 64x48 camera with 32x24 depth: principal point at the depth image's corner
        ("60 0 31.5\n0 60 23.5\n0 0 1",
         "principal point (31.5, 23.5) is far from the centre of the 32x24 depth image; K seems made for about "
         "64x48 pixels (W x H); give K at the depth images' resolution"),
        # K of a 640x480 camera with 32x24 depth: far outside
        ("525 0 319.5\n0 525 239.5\n0 0 1",
         "principal point (319.5, 239.5) is outside the 32x24 depth image; K seems made for about 640x480 pixels "
         "(W x H); give K at the depth images' resolution"),
        # K of a 16x12 camera (half resolution)
        ("15 0 7.5\n0 15 5.5\n0 0 1",
         "principal point (7.5, 5.5) is far from the centre of the 32x24 depth image; K seems made for about "
         "16x12 pixels (W x H); give K at the depth images' resolution"),
    ],
)
def test_bad_intrinsics_name_the_file(tmp_path, K_text, expected):
    root = make_scene(tmp_path / "s", [_pose(0), _pose(1)], K=K_text)
    with pytest.raises(ValueError) as e:
        FolderDataset(root)
    assert _one_line(e) == f"{root / 'intrinsics.txt'}: {expected}"


def test_intrinsics_checked_at_the_output_of_every_loader():
    # a loader that hands K made for another resolution is stopped when its first frame is prepared
    class WrongK(_StreamLike):
        def _load_raw_frame(self, raw_index):
            f = super()._load_raw_frame(raw_index)
            f["intrinsics"] = np.array([[500.0, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
            return f

    with pytest.raises(ValueError) as e:
        WrongK([_pose(0)])[0]
    assert _one_line(e).startswith("intrinsics of frame 0: principal point (319.5, 239.5) is outside the 32x24")


def test_valid_intrinsics_pass():
    for K, hw in ((K_OK, (H, W)), (np.array([[577.6, 0, 318.9], [0, 577.6, 242.7], [0, 0, 1]]), (480, 640)),
                  (np.array([[600.0, 0, 599.5], [0, 600.0, 339.5], [0, 0, 1]]), (680, 1200))):
        np.testing.assert_array_equal(check_intrinsics(K, hw, "k.txt"), K)


# ========================================================================================================= depth
def test_uint16_max_is_no_depth(tmp_path):
    d = np.full((H, W), 2500, np.uint16)
    d[0, 0] = 65535
    d[1, 1] = 0
    d[2, 2] = 65534
    root = make_scene(tmp_path / "s", [_pose(0), _pose(1)], depths=[d, d])
    f = FolderDataset(root)[1]["depth"][0]
    assert torch.isnan(f[0, 0]) and torch.isnan(f[1, 1])
    assert float(f[2, 2]) == pytest.approx(65.534) and float(f[3, 3]) == pytest.approx(2.5)
    assert int(torch.isnan(f).sum()) == 2
    np.testing.assert_array_equal(np.isnan(depth_from_uint16(np.array([0, 1, 65535], np.uint16), 1000.0)),
                                  [True, False, True])


def test_implausible_depth_frames_are_warned_counted_and_not_fused(tmp_path, caplog):
    ok = np.full((H, W), 2000, np.uint16)
    tiny = np.full((H, W), 5, np.uint16)  # 5 mm: depth stored in another unit
    empty = np.zeros((H, W), np.uint16)
    saturated = np.full((H, W), 65535, np.uint16)  # the invalid marker everywhere
    far = np.full((H, W), 15000, np.uint16)  # 150 m at depth_scale 100
    root = make_scene(tmp_path / "s", [_pose(i) for i in range(6)], depths=[ok, tiny, empty, ok, saturated, far],
                      depth_scale=100.0)
    ds = FolderDataset(root)
    with caplog.at_level(logging.WARNING):
        frames = list(ds) + list(ds)
    assert ds.validation_summary() == {"invalid_pose": 0, "no_valid_depth": 2, "implausible_depth": 1}
    # at depth_scale 100, 5 units = 5 cm: plausible; 15000 units = 150 m: implausible
    assert torch.isnan(frames[5]["depth"]).all() and not torch.isnan(frames[0]["depth"]).any()
    assert sorted(ds.skipped_frames()["no_valid_depth"]) == [2, 4]

    root2 = make_scene(tmp_path / "t", [_pose(i) for i in range(3)], depths=[ok, tiny, far])
    ds2 = FolderDataset(root2)
    with caplog.at_level(logging.WARNING):
        frames2 = list(ds2)
    assert ds2.validation_summary() == {"invalid_pose": 0, "no_valid_depth": 0, "implausible_depth": 1}
    assert ds2.skipped_frames()["implausible_depth"] == {1: "median depth 0.005 m < 0.02 m (wrong depth scale?)"}
    assert torch.isnan(frames2[1]["depth"]).all()
    np.testing.assert_allclose(frames2[2]["depth"].numpy(), 15.0)  # 15000 mm = 15 m: fine at scale 1000
    assert f"{root2 / 'depth' / '000001.png'}" in caplog.text and "its depth is not fused" in caplog.text


def test_far_depth_median_is_implausible():
    assert depth_problem(np.full((4, 4), 150.0)) == (
        "implausible_depth", "median depth 150 m > 100 m (wrong depth scale?)")
    assert depth_problem(np.full((4, 4), np.nan)) == ("no_valid_depth", "no valid depth pixel")
    assert depth_problem(np.array([0.5, 3.0, 200.0])) is None  # a few far pixels are fine
    one = np.full((1, 40, 40), np.nan)
    one[0, 1, 1] = 2.0  # off the 4-pixel sampling grid: still a valid pixel
    assert depth_problem(one) is None
    one[0, 4, 4] = 0.001  # on the grid: the sample's median decides
    assert depth_problem(one) == ("implausible_depth", "median depth 0.001 m < 0.02 m (wrong depth scale?)")


def test_implausible_depth_after_frame_zero_is_counted(tmp_path):
    ok = np.full((H, W), 2000, np.uint16)
    far = np.full((H, W), 15000, np.uint16)
    ds = FolderDataset(make_scene(tmp_path / "s", [_pose(i) for i in range(3)], depths=[ok, ok, far],
                                  depth_scale=100.0))
    assert not torch.isnan(ds[0]["depth"]).any()  # 20 m
    assert torch.isnan(ds[2]["depth"]).all()
    assert ds.validation_summary()["implausible_depth"] == 1


# ========================================================================================================= files
def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, xyz=np.arange(3000.0).reshape(1000, 3), label=np.arange(1000))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zero", "truncated", "bitflip", "text"])
def test_corrupt_gt_points_give_one_line(tmp_path, kind):
    root = make_scene(tmp_path / "s", [_pose(0)])
    good = _npz_bytes()
    gt = root / "gt_points.npz"
    if kind == "zero":
        gt.write_bytes(b"")
    elif kind == "truncated":
        gt.write_bytes(good[:5000])
    elif kind == "bitflip":
        b = bytearray(good)
        b[good.index(b"xyz.npy") + 300] ^= 0x01
        gt.write_bytes(bytes(b))
    else:
        gt.write_text("x y z label\n")
    with pytest.raises(ValueError) as e:
        FolderDataset(root)
    msg = _one_line(e)
    assert msg.startswith(f"GT points file {gt} ")
    expected = {"zero": "is empty (0 bytes)", "truncated": "is corrupt or truncated", "bitflip": "Bad CRC-32",
                "text": "is not an .npz archive"}[kind]
    assert expected in msg


@pytest.mark.parametrize("kind", ["zero", "truncated_png", "bitflip_png", "truncated_jpg", "garbage"])
def test_unreadable_images_give_one_line(tmp_path, kind):
    root = make_scene(tmp_path / "s", [_pose(0), _pose(1)])
    target = root / "rgb" / "000001.png"
    data = target.read_bytes()
    if kind == "zero":
        target.write_bytes(b"")
    elif kind == "truncated_png":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "bitflip_png":
        b = bytearray(data)
        b[data.index(b"IDAT") + 8] ^= 0xFF
        target.write_bytes(bytes(b))
    elif kind == "truncated_jpg":
        target.unlink()
        target = root / "rgb" / "000001.jpg"
        ok, buf = cv2.imencode(".jpg", np.full((H, W, 3), 100, np.uint8))
        target.write_bytes(buf.tobytes()[:-200])
    else:
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"IEND\xaeB`\x82")
    ds = FolderDataset(root)
    assert float(ds[0]["rgb"].mean()) == pytest.approx(100 / 255)
    with pytest.raises(ValueError) as e:
        ds[1]
    msg = _one_line(e)
    expected = {"zero": f"image file {target} is empty (0 bytes)",
                "truncated_png": f"image file {target} is truncated (PNG without its end chunk)",
                "bitflip_png": f"cannot decode image file {target}: corrupt or not an image",
                "truncated_jpg": f"image file {target} is truncated (JPEG without its end marker)",
                "garbage": f"cannot decode image file {target}: corrupt or not an image"}[kind]
    assert msg == expected


def test_corrupt_first_depth_image_is_reported_at_construction(tmp_path):
    root = make_scene(tmp_path / "s", [_pose(0), _pose(1)])
    (root / "depth" / "000000.png").write_bytes(b"")
    with pytest.raises(ValueError) as e:
        FolderDataset(root)
    assert _one_line(e) == f"depth file {root / 'depth' / '000000.png'} is empty (0 bytes)"


# =========================================================================================== through the CLI
def _ovmap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovmap", *args], capture_output=True, text=True, timeout=600)


def test_cli_reports_bad_inputs_in_one_line(tmp_path):
    bad_k = make_scene(tmp_path / "k", [_pose(0), _pose(1)], K="60 0 31.5\n0 60 23.5\n0 0 1")
    proc = _ovmap("map", "dataset=folder", f"dataset.path={bad_k}", "device=cpu", f"out_dir={tmp_path / 'o1'}",
                  "progress=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ovmap: error: {bad_k / 'intrinsics.txt'}: principal point (31.5, 23.5) is far from the centre of the "
        "32x24 depth image; K seems made for about 64x48 pixels (W x H); give K at the depth images' resolution"
    ]
    mirrored = make_scene(tmp_path / "p", [_pose(i, np.diag([1.0, -1.0, 1.0])) for i in range(2)])
    (mirrored / "gt_points.npz").write_bytes(b"")
    proc = _ovmap("map", "dataset=folder", f"dataset.path={mirrored}", "device=cpu", f"out_dir={tmp_path / 'o2'}",
                  "progress=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ovmap: error: GT points file {mirrored / 'gt_points.npz'} is empty (0 bytes); recreate it"
    )
    (mirrored / "gt_points.npz").unlink()
    proc = _ovmap("map", "dataset=folder", f"dataset.path={mirrored}", "device=cpu", f"out_dir={tmp_path / 'o3'}",
                  "progress=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ovmap: error: {mirrored / 'poses.txt'}: all 2 selected frames have invalid poses (frame 0: rotation is "
        "mirrored (det = -1)); poses must be rigid camera-to-world transforms (see docs/validation.md)"
    )


@pytest.mark.parametrize("name", ["intrinsics.txt", "poses.txt", "meta.yaml"])
@pytest.mark.parametrize("kind", ["binary", "truncated"])
def test_corrupt_text_files_give_one_line_naming_the_file(tmp_path, name, kind):
    root = make_scene(tmp_path / "s", [_pose(0), _pose(1)])
    f = root / name
    if kind == "binary":
        f.write_bytes(np.random.default_rng(1).integers(128, 256, 64, dtype=np.uint8).tobytes())
    else:
        text = f.read_text()
        f.write_text(text[: len(text) // 2] if name != "meta.yaml" else "depth_scale: [1000\n")
    with pytest.raises(ValueError) as e:
        FolderDataset(root)
    msg = _one_line(e)
    assert str(f) in msg
    if kind == "binary":
        assert msg.endswith("is not a text file (byte 0 is not UTF-8); corrupt or wrong file?")


def test_summary_counts_only_selected_frames(tmp_path):
    poses = [_pose(i) for i in range(5)]
    poses[1] = _pose(1, np.zeros((3, 3)))
    poses[2] = _pose(2, 2.0 * np.eye(3))
    ds = FolderDataset(make_scene(tmp_path / "s", poses), frame_skip=1)  # selects raw 0, 2, 4
    assert ds.num_invalid_poses() == 2 and ds.invalid_pose_indices == [1, 2]
    assert ds.raw_indices == [0, 4] and ds.validation_summary()["invalid_pose"] == 1


def test_png_with_trailing_bytes_after_iend_still_reads(tmp_path):
    root = make_scene(tmp_path / "s", [_pose(0)])
    f = root / "rgb" / "000000.png"
    f.write_bytes(f.read_bytes() + b"trailing metadata written by some tool")
    assert float(FolderDataset(root)[0]["rgb"].mean()) == pytest.approx(100 / 255)
