"""Record3D .r3d reader: a capture written by ``write_r3d`` from the synthetic scene, a hand-made capture with known
K / axes / confidence, bad files."""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest
from _helpers import sources

lzfse = pytest.importorskip("lzfse", reason='needs the "record3d" extra (pip install -e ".[record3d]")')

from ovmap.datasets import build_dataset
from ovmap.datasets.record3d import Record3DDataset, write_r3d


def test_r3d_map_equals_folder_map(tmp_path):
    r3d = write_r3d(sources.scene(), tmp_path / "cap.r3d")
    ds = build_dataset("record3d", path=str(r3d))
    assert len(ds) == sources.NUM_FRAMES and ds.scene_name == "cap"
    for a, b in zip(ds, sources.scene_frames()):
        np.testing.assert_allclose(a["pose"].numpy(), b["pose"].numpy(), atol=1e-6)
        np.testing.assert_allclose(a["intrinsics"].numpy(), b["intrinsics"].numpy(), rtol=1e-6)
        assert (a["rgb"] - b["rgb"]).abs().mean() < 0.02  # JPEG colour
    sources.assert_same_map(sources.map_of(ds), sources.reference_map(), min_key_fraction=0.995)


def _hand_made(path, conf=None):
    dh, dw, h, w = 2, 3, 4, 6
    K_rgb = np.array([[10.0, 0, 3.0], [0, 12.0, 2.0], [0, 0, 1]])
    meta = {"w": w, "h": h, "dw": dw, "dh": dh, "K": K_rgb.T.reshape(-1).tolist(), "fps": 60,
            "poses": [[0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0]]}  # fmt: skip
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata", json.dumps(meta))
        for i in range(2):
            z.writestr(f"rgbd/{i}.jpg", cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes())
            z.writestr(f"rgbd/{i}.depth", lzfse.compress(np.full((dh, dw), 2.0, "<f4").tobytes()))
            if conf is not None:
                z.writestr(f"rgbd/{i}.conf", lzfse.compress(conf.astype(np.uint8).tobytes()))
    return path


def test_known_intrinsics_axes_and_confidence(tmp_path):
    conf = np.array([[0, 1, 2], [2, 2, 1]])
    ds = Record3DDataset(_hand_made(tmp_path / "k.r3d", conf), min_confidence=2)
    f = ds[0]
    # K given at 4x6 colour, column-major; depth is 2x3 -> halved
    np.testing.assert_allclose(f["intrinsics"].numpy(), [[5.0, 0, 1.5], [0, 6.0, 1.0], [0, 0, 1]])
    np.testing.assert_allclose(ds.timestamps, [0, 1 / 60])
    valid = ~np.isnan(f["depth"][0].numpy())
    np.testing.assert_array_equal(valid, conf >= 2)
    # ARKit identity pose: the camera looks along world -z with its y axis up. In OpenCV axes a world point 2 m
    # ahead and 1 m up must come out at z = +2 (forward) and y = -1 (up is -y).
    T = f["pose"].double().numpy()
    p_c = T[:3, :3].T @ (np.array([0.0, 1.0, -2.0]) - T[:3, 3])
    np.testing.assert_allclose(p_c, [0.0, -1.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(ds[1]["pose"].numpy()[:3, 3], [1, 0, 0])
    assert not Record3DDataset(tmp_path / "k.r3d")[0]["depth"].isnan().any()  # min_confidence 0 keeps all


def test_bad_files(tmp_path):
    (tmp_path / "x.r3d").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        Record3DDataset(tmp_path / "x.r3d")
    with zipfile.ZipFile(tmp_path / "y.r3d", "w") as z:
        z.writestr("metadata", json.dumps({"w": 1, "h": 1}))
    with pytest.raises(ValueError, match="metadata lacks K, poses"):
        Record3DDataset(tmp_path / "y.r3d")
    with pytest.raises(ValueError, match="min_confidence"):
        Record3DDataset(_hand_made(tmp_path / "z.r3d"), min_confidence=3)


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    import sys

    from ovmap.datasets.stamped import MissingExtraError

    monkeypatch.setitem(sys.modules, "lzfse", None)
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[record3d\]"'):
        Record3DDataset(tmp_path / "x.r3d")
