"""TUM RGB-D reader: files written by ``write_tum`` from the synthetic scene, hand-made lists with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import sources

from ovmap.datasets import build_dataset
from ovmap.datasets.tum import FREIBURG_INTRINSICS, TUMDataset, write_tum


def _k_list(frame) -> list[float]:
    K = frame["intrinsics"].double().numpy()
    return [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]


@pytest.fixture(scope="module")
def tum_seq(tmp_path_factory):
    # depth 4 ms after colour: within the 20 ms tolerance, associated by timestamp
    return write_tum(
        sources.scene(), tmp_path_factory.mktemp("tum") / "seq", rate_hz=30.0, depth_offset_s=0.004
    )


def test_tum_map_equals_folder_map(tum_seq):
    f0 = sources.scene_frames()[0]
    ds = build_dataset("tum", path=str(tum_seq), intrinsics=_k_list(f0))
    assert len(ds) == sources.NUM_FRAMES and ds.unassociated == 0
    np.testing.assert_allclose(np.diff(ds.timestamps), 1 / 30.0, atol=2e-6)
    for a, b in zip(ds, sources.scene_frames()):
        np.testing.assert_allclose(a["pose"].numpy(), b["pose"].numpy(), atol=1e-6)
    # the folder copy stores depth at the same 1/5000 m step, so the maps must agree
    sources.assert_same_map(
        sources.map_of(ds), sources.reference_map(5000.0), min_key_fraction=1.0, atol=1e-6
    )


def _write_lists(root, rgb_t, depth_t, gt_rows):
    """Images at 640x480: the Freiburg intrinsics are checked against the depth resolution."""
    import cv2

    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for t in rgb_t:
        cv2.imwrite(str(root / "rgb" / f"{t:.6f}.png"), np.zeros((480, 640, 3), np.uint8))
    for t in depth_t:
        cv2.imwrite(str(root / "depth" / f"{t:.6f}.png"), np.full((480, 640), 10000, np.uint16))
    (root / "rgb.txt").write_text("# rgb\n" + "".join(f"{t:.6f} rgb/{t:.6f}.png\n" for t in rgb_t))
    (root / "depth.txt").write_text("".join(f"{t:.6f} depth/{t:.6f}.png\n" for t in depth_t))
    (root / "groundtruth.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in gt_rows))


def test_association_interpolation_and_presets(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg2_desk"
    # rgb at 0, 1, 2 s; depth near 0 and 2 only (1 s has none within 0.02 s); rgb at 3 s is outside the poses.
    half = np.sqrt(0.5)
    gt = [
        (-0.01, 0, 0, 0, 0, 0, 0, 1),
        (0.01, 2, 0, 0, 0, 0, half, half),  # 90 degrees about z
        (1.99, 4, 0, 0, 0, 0, 0, 1),
        (2.01, 4, 0, 0, 0, 0, 0, 1),
    ]
    _write_lists(root, [0.0, 1.0, 2.0, 3.0], [0.015, 1.5, 1.99], gt)
    ds = TUMDataset(root)  # camera "auto" -> fr2 from the folder name
    assert len(ds) == 2 and ds.unassociated == 2
    np.testing.assert_allclose(ds.timestamps, [0.0, 2.0])
    fx, fy, cx, cy = FREIBURG_INTRINSICS["fr2"]
    np.testing.assert_allclose(ds[0]["intrinsics"].numpy(), [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], rtol=1e-6)
    P = ds[0]["pose"].double().numpy()  # midway: x = 1, rotation 45 degrees about z (slerp)
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(P[:3, 3], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(P[:3, :3], [[c, -c, 0], [c, c, 0], [0, 0, 1]], atol=1e-6)
    assert float(ds[0]["depth"][0, 0, 0]) == pytest.approx(2.0)  # 10000 / 5000


def test_bad_inputs(tmp_path):
    _write_lists(tmp_path / "x", [0.0], [0.0], [(0.0, 0, 0, 0, 0, 0, 0, 1)])
    with pytest.raises(ValueError, match="dataset.camera=fr1"):
        TUMDataset(tmp_path / "x")
    with pytest.raises(ValueError, match="camera must be"):
        TUMDataset(tmp_path / "x", camera="fr4")
    with pytest.raises(ValueError, match=r"\[fx, fy, cx, cy\]"):
        TUMDataset(tmp_path / "x", intrinsics=[1, 2, 3])
    with pytest.raises(FileNotFoundError, match="groundtruth.txt"):
        (tmp_path / "x" / "groundtruth.txt").unlink()
        TUMDataset(tmp_path / "x", camera="fr1")


def test_check_data_summarises_a_sequence(tum_seq, capsys):
    from omegaconf import OmegaConf

    from ovmap.commands.check_data import run_check_data

    ds = {"name": "tum", "path": str(tum_seq), "scene": None, "intrinsics": [80.0, 80.0, 63.5, 47.5]}
    run_check_data(OmegaConf.create({"dataset": ds}))
    out = capsys.readouterr().out
    assert f"{sources.NUM_FRAMES} frames" in out and "(30.00 Hz)" in out and "missing: nothing" in out
