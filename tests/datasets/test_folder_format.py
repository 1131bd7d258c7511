"""The ovmap folder format: write/read round trip, hand-made folders with known values, bad inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovmap.datasets import FolderDataset, SyntheticScene, build_dataset, write_folder

K_TEXT = "3.0 0 2.0\n0 3.0 1.5\n0 0 1\n"


def _pose_line(tx: float = 0.0) -> str:
    T = np.eye(4)
    T[0, 3] = tx
    return " ".join(str(x) for x in T.reshape(-1))


def make_folder(root: Path, n: int = 2, depth_value: int = 2500, meta: str | None = "depth_scale: 1000.0\n",
                labels: bool = False, h: int = 4, w: int = 5) -> Path:  # fmt: skip
    """A tiny scene with known values: depth = depth_value everywhere except pixel (0, 0) = 0."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "intrinsics.txt").write_text(K_TEXT)
    (root / "poses.txt").write_text("\n".join(_pose_line(i) for i in range(n)) + "\n")
    if meta is not None:
        (root / "meta.yaml").write_text(meta)
    for i in range(n):
        bgr = np.zeros((h, w, 3), np.uint8)
        bgr[..., 2] = 200  # red in BGR order
        bgr[..., 0] = 10 + i
        cv2.imwrite(str(root / "rgb" / f"{i:06d}.png"), bgr)
        d = np.full((h, w), depth_value, np.uint16)
        d[0, 0] = 0
        cv2.imwrite(str(root / "depth" / f"{i:06d}.png"), d)
        if labels:
            (root / "labels").mkdir(exist_ok=True)
            lab = np.full((h, w), 3, np.uint16)
            lab[1, 1] = 0
            cv2.imwrite(str(root / "labels" / f"{i:06d}.png"), lab)
    return root


@pytest.fixture(scope="module")
def synthetic_roundtrip(tmp_path_factory):
    src = SyntheticScene(preset="test", num_frames=6)
    out = write_folder(src, tmp_path_factory.mktemp("syn") / "scene")
    return src, FolderDataset(out)


def test_roundtrip_synthetic(synthetic_roundtrip):
    src, ds = synthetic_roundtrip
    assert len(ds) == len(src) == 6
    assert ds.class_names == src.class_names and ds.has_labels and ds.scene_name == src.scene_name
    for a, b in zip(src, ds):
        assert a["index"] == b["index"]
        torch.testing.assert_close(b["pose"], a["pose"], rtol=0, atol=0)
        torch.testing.assert_close(b["intrinsics"], a["intrinsics"], rtol=0, atol=0)
        torch.testing.assert_close(b["labels"], a["labels"], rtol=0, atol=0)
        assert (b["rgb"] - a["rgb"]).abs().max() <= 1 / 255 + 1e-6
        assert torch.equal(torch.isnan(a["depth"]), torch.isnan(b["depth"]))
        assert torch.nan_to_num(b["depth"] - a["depth"]).abs().max() <= 0.5e-3 + 1e-6
    xa, la = src.gt_points()
    xb, lb = ds.gt_points()
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(la, lb)
    assert lb.dtype == np.int64
    assert ds.num_invalid_poses() == 0


def test_roundtrip_with_frame_skip_and_resolution(tmp_path):
    src = SyntheticScene(preset="test", num_frames=5, frame_skip=1, rgb_resolution=[48, 64], depth_resolution=[24, 32])
    ds = FolderDataset(write_folder(src, tmp_path / "s"))
    assert len(ds) == 3 and [f["index"] for f in ds] == [0, 1, 2]  # renumbered
    f, g = src[2], ds[2]
    assert g["rgb"].shape == (3, 48, 64) and g["depth"].shape == (1, 24, 32)
    torch.testing.assert_close(g["intrinsics"], f["intrinsics"])
    torch.testing.assert_close(g["pose"], f["pose"])
    # the reader applies frame_skip / resizing too
    ds2 = build_dataset("folder", path=str(tmp_path / "s"), frame_skip=1, depth_resolution=[12, 16])
    assert [h["index"] for h in ds2] == [0, 2]
    torch.testing.assert_close(ds2[1]["intrinsics"][0], f["intrinsics"][0] * 0.5)


def test_write_refuses_non_empty_and_overwrites(tmp_path):
    src = SyntheticScene(preset="test", num_frames=2, height=12, width=16)
    write_folder(src, tmp_path / "s")
    with pytest.raises(FileExistsError):
        write_folder(src, tmp_path / "s")
    write_folder(SyntheticScene(preset="test", num_frames=1, height=12, width=16), tmp_path / "s", overwrite=True)
    assert len(FolderDataset(tmp_path / "s")) == 1


def test_write_depth_out_of_16bit_range(tmp_path):
    src = SyntheticScene(preset="test", num_frames=1, height=12, width=16)
    with pytest.raises(ValueError, match="16-bit"):
        write_folder(src, tmp_path / "s", depth_scale=100000.0)


def test_known_values(tmp_path):
    ds = FolderDataset(make_folder(tmp_path / "s", labels=True, meta="depth_scale: 1000\nclasses: {3: chair, 1: wall}\n"))
    assert len(ds) == 2 and ds.has_labels and ds.gt_points() is None
    assert ds.class_names == ["ignore", "wall", "class_2", "chair"]
    f = ds[1]
    assert f["depth"].shape == (1, 4, 5) and f["rgb"].shape == (3, 4, 5)
    assert torch.isnan(f["depth"][0, 0, 0])
    assert torch.all(f["depth"][0].flatten()[1:] == 2.5)
    # BGR on disk -> RGB in memory
    np.testing.assert_allclose(f["rgb"][0].numpy(), 200 / 255, atol=1e-6)
    np.testing.assert_allclose(f["rgb"][2].numpy(), 11 / 255, atol=1e-6)
    torch.testing.assert_close(f["intrinsics"], torch.tensor([[3.0, 0, 2.0], [0, 3.0, 1.5], [0, 0, 1]]))
    assert float(f["pose"][0, 3]) == 1.0 and f["index"] == 1
    assert f["labels"].dtype == torch.int64 and int(f["labels"][0, 1, 1]) == 0 and int(f["labels"][0, 0, 0]) == 3


def test_defaults_without_meta_and_scale(tmp_path):
    ds = FolderDataset(make_folder(tmp_path / "s", meta=None, depth_value=1234))
    assert ds.class_names == ["ignore"] and not ds.has_labels and "labels" not in ds[0]
    assert float(ds[0]["depth"][0, 1, 1]) == pytest.approx(1.234)
    ds = FolderDataset(make_folder(tmp_path / "t", meta="depth_scale: 5000\n", depth_value=5000))
    assert float(ds[0]["depth"][0, 1, 1]) == pytest.approx(1.0)


def test_pairing_by_stem_not_by_sorted_position(tmp_path):
    root = make_folder(tmp_path / "s", n=3)
    # frame 1 as jpg: sorted listings of rgb/ and depth/ would differ in order of extensions but not in stems
    img = cv2.imread(str(root / "rgb" / "000001.png"))
    (root / "rgb" / "000001.png").unlink()
    cv2.imwrite(str(root / "rgb" / "000001.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    ds = FolderDataset(root)
    assert [float(f["rgb"][2, 0, 0]) * 255 for f in ds] == pytest.approx([10, 11, 12], abs=2)


def test_non_finite_poses_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "s", n=3)
    lines = (root / "poses.txt").read_text().splitlines()
    lines[1] = " ".join(["-inf"] * 16)
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    ds = FolderDataset(root)
    assert ds.num_invalid_poses() == 1 and ds.invalid_pose_indices == [1]
    assert ds.raw_indices == [0, 2] and [f["index"] for f in ds] == [0, 2]
    assert ds.validation_summary()["invalid_pose"] == 1


# ------------------------------------------------------------------------------------------------ bad inputs
def _edit(root: Path, name: str, text: str) -> None:
    (root / name).write_text(text)


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        (lambda r: (r / "rgb" / "000001.png").unlink(), FileNotFoundError, r"rgb/000001\.png"),
        (lambda r: (r / "depth" / "000000.png").unlink(), FileNotFoundError, r"depth/000000\.png"),
        (lambda r: (r / "intrinsics.txt").unlink(), FileNotFoundError, "intrinsics.txt"),
        # same count but a gap in the stems: pairing by position would silently misalign
        (lambda r: (r / "depth" / "000001.png").rename(r / "depth" / "000002.png"), FileNotFoundError,
         r"depth/000001\.png"),
        (lambda r: _edit(r, "poses.txt", _pose_line() + "\n" + "1 2 3\n"), ValueError, "poses.txt line 2"),
        (lambda r: _edit(r, "poses.txt", _pose_line() + "\n" + " ".join(["1"] * 16) + "\n"), ValueError,
         "poses.txt line 2.*last row"),
        (lambda r: _edit(r, "poses.txt", _pose_line() + "\n" + _pose_line().replace("1.0", "x", 1) + "\n"), ValueError,
         "poses.txt line 2"),
        (lambda r: _edit(r, "poses.txt", _pose_line() + "\n"), ValueError, r"000001\.png"),  # images without poses
        (lambda r: _edit(r, "poses.txt", "\n".join([_pose_line()] * 3) + "\n"), FileNotFoundError, r"000002\.png"),
        (lambda r: _edit(r, "intrinsics.txt", "1 0 0\n0 1 0\n"), ValueError, "intrinsics.txt"),
        (lambda r: _edit(r, "intrinsics.txt", "1 0 0 0\n0 1 0 0\n0 0 1 0\n"), ValueError, "intrinsics.txt"),
        (lambda r: _edit(r, "meta.yaml", "classes: {0: wall}\n"), ValueError, "meta.yaml.*>= 1"),
        (lambda r: _edit(r, "meta.yaml", "depth_scale: -1\n"), ValueError, "meta.yaml"),
        (lambda r: _edit(r, "meta.yaml", "depth_scale: 1\n"), ValueError, r"depth_scale"),  # 2500 m: wrong scale
        (lambda r: cv2.imwrite(str(r / "depth" / "000000.png"), np.full((4, 5), 9, np.uint8)), ValueError,
         r"depth/000000\.png.*16-bit"),
        (lambda r: (r / "rgb" / "000000.png").write_bytes(b"not a png"), ValueError, r"rgb/000000\.png"),
        (lambda r: cv2.imwrite(str(r / "rgb" / "000007.png"), np.zeros((4, 5, 3), np.uint8)), ValueError,
         r"rgb/000007\.png"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_naming_the_culprit(tmp_path, mutate, exc, pattern):
    root = make_folder(tmp_path / "s", n=2)
    mutate(root)
    with pytest.raises(exc, match=pattern):
        ds = FolderDataset(root)
        for _ in ds:
            pass


def test_size_mismatch_across_frames_and_labels(tmp_path):
    root = make_folder(tmp_path / "s", n=2)
    cv2.imwrite(str(root / "depth" / "000001.png"), np.full((6, 5), 1000, np.uint16))
    ds = FolderDataset(root)
    ds[0]
    with pytest.raises(ValueError, match=r"depth/000001\.png"):
        ds[1]
    root = make_folder(tmp_path / "t", n=1, labels=True)
    cv2.imwrite(str(root / "labels" / "000000.png"), np.zeros((3, 5), np.uint16))
    with pytest.raises(ValueError, match=r"labels/000000\.png"):
        FolderDataset(root)[0]
    root = make_folder(tmp_path / "u", n=2, labels=True)
    (root / "labels" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels/000001\.png"):
        FolderDataset(root)


def test_gt_points_file(tmp_path):
    root = make_folder(tmp_path / "s")
    np.savez(root / "gt_points.npz", xyz=np.zeros((3, 3)), label=np.array([1.0, 2.0, -1.0]))
    xyz, lab = FolderDataset(root).gt_points()
    assert xyz.dtype == np.float32 and lab.dtype == np.int64 and lab.tolist() == [1, 2, 0]
    np.savez(root / "gt_points.npz", xyz=np.zeros((3, 3)), label=np.array([1.0, 2.5, 3.0]))
    with pytest.raises(ValueError, match="gt_points.npz.*integ"):
        FolderDataset(root)
    np.savez(root / "gt_points.npz", xyz=np.zeros((3, 2)), label=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="gt_points.npz"):
        FolderDataset(root)
    np.savez(root / "gt_points.npz", points=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="gt_points.npz"):
        FolderDataset(root)
