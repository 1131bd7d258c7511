"""Raw ScanNet .sens reading: a file written by ``write_sens`` from the synthetic scene against the SensReader
export of the same frames (same JPEG bytes), the folder-format map, auto-detection and bad files."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch
from _helpers import sources

from ovmap.datasets import build_dataset
from ovmap.datasets.scannet_sens import ScanNetSensDataset, write_sens


def _export_like_sensreader(sens_ds: ScanNetSensDataset, root, scene: str) -> None:
    """The export layout (color/<i>.jpg with the file's own JPEG bytes, depth/<i>.png, pose/<i>.txt, intrinsics)."""
    s = root / scene
    for sub in ("color", "depth", "pose", "intrinsic"):
        (s / sub).mkdir(parents=True)
    with open(sens_ds.sens, "rb") as f:
        for i, (pos, csize, dsize) in enumerate(sens_ds._offsets):
            f.seek(pos)
            (s / "color" / f"{i}.jpg").write_bytes(f.read(csize))
    K4 = np.eye(4)
    K4[:3, :3] = sens_ds._K
    np.savetxt(s / "intrinsic" / "intrinsic_depth.txt", K4)
    for i, fr in enumerate(sources.scene_frames()):
        d = np.nan_to_num(fr["depth"][0].double().numpy())
        cv2.imwrite(str(s / "depth" / f"{i}.png"), np.round(d * 1000).astype(np.uint16))
        np.savetxt(s / "pose" / f"{i}.txt", fr["pose"].double().numpy(), fmt="%.9g")


@pytest.fixture(scope="module")
def sens_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet")
    (root / "scene0000_00").mkdir()
    return write_sens(sources.scene(), root / "scene0000_00" / "scene0000_00.sens")


def test_sens_matches_export_and_folder_map(sens_file, tmp_path):
    ds = build_dataset("scannet", path="unused", sens=str(sens_file))
    assert (
        isinstance(ds, ScanNetSensDataset)
        and len(ds) == sources.NUM_FRAMES
        and ds.scene_name == "scene0000_00"
    )
    _export_like_sensreader(ds, tmp_path, "scene0000_00")
    export = build_dataset("scannet", path=str(tmp_path), scene="scene0000_00", labels=False)
    for a, b in zip(ds, export):
        for key in ("rgb", "pose", "intrinsics"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert torch.equal(torch.isnan(a["depth"]), torch.isnan(b["depth"]))
        torch.testing.assert_close(torch.nan_to_num(a["depth"]), torch.nan_to_num(b["depth"]), rtol=0, atol=0)
    np.testing.assert_allclose(np.diff(ds.timestamps), 1 / 30.0, atol=1e-6)
    sources.assert_same_map(sources.map_of(ds), sources.reference_map(), min_key_fraction=1.0, atol=1e-6)


def test_auto_detected_when_not_exported(sens_file):
    ds = build_dataset("scannet", path=str(sens_file.parent.parent), scene="scene0000_00", frame_skip=1)
    assert isinstance(ds, ScanNetSensDataset) and len(ds) == 3 and [f["index"] for f in ds] == [0, 2, 4]


def test_invalid_pose_skipped_and_truncation(tmp_path, sens_file):
    data = bytearray(sens_file.read_bytes())
    ds = ScanNetSensDataset(sens_file)
    pos = ds._offsets[2][0] - struct.calcsize("<16f4Q")  # frame 2's pose
    data[pos : pos + 64] = struct.pack("<16f", *([-np.inf] * 16))
    bad = tmp_path / "bad.sens"
    bad.write_bytes(bytes(data))
    ds_bad = ScanNetSensDataset(bad)
    assert ds_bad.num_invalid_poses() == 1 and len(ds_bad) == sources.NUM_FRAMES - 1
    assert [f["index"] for f in ds_bad] == [0, 1, 3, 4, 5]
    cut = tmp_path / "cut.sens"
    cut.write_bytes(bytes(data[: ds._offsets[3][0] + 10]))
    with pytest.raises(ValueError, match="truncated at frame 3 of 6"):
        ScanNetSensDataset(cut)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ScanNetSensDataset(tmp_path / "none.sens")
