"""The built-in synthetic scene: determinism, class coverage, geometry conventions, trajectory, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from ovmap.datasets import SyntheticScene, build_dataset
from ovmap.datasets.synthetic import CLASS_NAMES


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene(preset="test", seed=0)


@pytest.fixture(scope="module")
def frames(scene):
    return list(scene)


def _backproject(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent few-line unprojection with integer pixel centres: world = R (d K^-1 [u, v, 1]) + t."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W]
    ok = np.isfinite(depth) & (depth > 0)
    pix = np.stack([u[ok], v[ok], np.ones(ok.sum())], 0).astype(np.float64)
    cam = np.linalg.inv(K) @ pix * depth[ok]
    return (pose[:3, :3] @ cam + pose[:3, 3:4]).T, ok


def test_class_list():
    assert CLASS_NAMES[0] == "ignore"
    assert CLASS_NAMES[1:4] == ["wall", "floor", "ceiling"]
    assert len(CLASS_NAMES) - 4 >= 10  # at least 10 object classes
    assert SyntheticScene(preset="test").class_names == CLASS_NAMES


def test_determinism_and_seed_changes_layout(frames):
    again = SyntheticScene(preset="test", seed=0)
    for i in (0, 5):
        f = again[i]
        for k in ("rgb", "depth", "labels", "pose", "intrinsics"):
            assert torch.equal(torch.nan_to_num(f[k], 0.0), torch.nan_to_num(frames[i][k], 0.0)), k
    a, b = SyntheticScene(preset="test", seed=0), SyntheticScene(preset="test", seed=1)
    fa = {o.name: o.footprint for o in a.objects}
    fb = {o.name: o.footprint for o in b.objects}
    assert fa != fb
    assert not torch.equal(torch.nan_to_num(a[0]["depth"]), torch.nan_to_num(b[0]["depth"]))
    np.testing.assert_array_equal(a.gt_points()[0], SyntheticScene(preset="test", seed=0).gt_points()[0])


def test_objects_do_not_overlap(scene):
    objs = [o for o in scene.objects if o.name not in ("wall", "floor", "ceiling", "monitor")]
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            fa, fb = a.footprint, b.footprint
            overlap = fa[0] < fb[1] and fb[0] < fa[1] and fa[2] < fb[3] and fb[2] < fa[3]
            assert not overlap, (a.name, b.name)


def test_at_least_ten_object_classes_visible(frames):
    seen = set()
    for f in frames:
        seen |= set(torch.unique(f["labels"]).tolist())
    objects_seen = seen - {0, 1, 2, 3}
    assert len(objects_seen) >= 10, [CLASS_NAMES[c] for c in objects_seen]
    assert CLASS_NAMES.index("chair") in seen
    # the chair is a decent size in the images
    chair = sum(int((f["labels"] == CLASS_NAMES.index("chair")).sum()) for f in frames)
    assert chair > 0.01 * sum(f["labels"].numel() for f in frames)


def test_frame_contents(frames, scene):
    f = frames[0]
    H, W = scene.height, scene.width
    assert f["rgb"].shape == (3, H, W) and f["depth"].shape == (1, H, W) and f["labels"].shape == (1, H, W)
    assert f["rgb"].min() >= 0 and f["rgb"].max() <= 1
    # closed room: every pixel hits something, so labels are never 0 and depth is finite
    assert (f["labels"] > 0).all() and torch.isfinite(f["depth"]).all()
    K = f["intrinsics"].numpy()
    np.testing.assert_allclose(K[0, 2], (W - 1) / 2)
    np.testing.assert_allclose(K[1, 2], (H - 1) / 2)
    hfov = 2 * np.degrees(np.arctan(W / 2 / K[0, 0]))
    assert 65 < hfov < 85


def test_rgb_is_textured_not_flat_label_colours(frames):
    f = frames[3]
    rgb, lab = f["rgb"].numpy(), f["labels"][0].numpy()
    for c in np.unique(lab):
        m = lab == c
        if m.sum() < 50:
            continue
        px = rgb[:, m]
        assert px.std(axis=1).max() > 0.01, CLASS_NAMES[c]
        assert np.unique(px.round(3), axis=1).shape[1] > 10


@pytest.mark.slow  # ~1 min: every pixel of every frame against the room geometry
def test_depth_backprojects_onto_labelled_surfaces():
    """Integer-pixel-centre convention: unprojected pixels lie on known planes and on their class's surface."""
    ds = SyntheticScene(preset="test", height=48, width=64, num_frames=6, gt_points_per_m2=20000)
    Lx, Ly, Lz = ds.room_size
    xyz, lab = ds.gt_points()
    trees = {c: cKDTree(xyz[lab == c]) for c in np.unique(lab)}
    for f in ds:
        pts, ok = _backproject(f["depth"][0].numpy().astype(np.float64), f["intrinsics"].numpy().astype(np.float64),
                               f["pose"].numpy().astype(np.float64))  # fmt: skip
        cls = f["labels"][0].numpy()[ok]
        # known answers: floor z = 0, ceiling z = Lz, walls at |x| = Lx/2 or |y| = Ly/2 (a +0.5 pixel shift would
        # move these by ~1-3 cm at this resolution)
        np.testing.assert_allclose(pts[cls == 2, 2], 0.0, atol=2e-3)
        np.testing.assert_allclose(pts[cls == 3, 2], Lz, atol=2e-3)
        w = pts[cls == 1]
        wall_dist = np.minimum(np.abs(np.abs(w[:, 0]) - Lx / 2), np.abs(np.abs(w[:, 1]) - Ly / 2))
        assert wall_dist.max() < 2e-3
        for c in np.unique(cls):
            d, _ = trees[c].query(pts[cls == c])
            assert np.quantile(d, 0.99) < 0.02, (CLASS_NAMES[c], np.quantile(d, 0.99))


def test_poses_are_rigid_smooth_and_look_into_the_room():
    ds = SyntheticScene(preset="test", num_frames=60, height=8, width=8)
    P = ds.poses()
    assert P.shape == (60, 4, 4)
    for T in P:
        R = T[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(R), 1.0)
        np.testing.assert_array_equal(T[3], [0, 0, 0, 1])
        # inside the room, at camera height, never looking steeply up or down
        assert abs(T[0, 3]) < ds.room_size[0] / 2 and abs(T[1, 3]) < ds.room_size[1] / 2
        assert 1.2 < T[2, 3] < 1.8
        assert -0.8 < R[2, 2] < 0.5
        # image "down" (camera +y) points roughly down in the world
        assert R[2, 1] < 0
    # the gaze sweeps both below and above the horizon, so floor and ceiling are both observed
    assert P[:, 2, 2].min() < -0.3 and P[:, 2, 2].max() > 0.05
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.25
    angles = [np.degrees(np.arccos(np.clip((np.trace(P[i, :3, :3].T @ P[i + 1, :3, :3]) - 1) / 2, -1, 1)))
              for i in range(59)]  # fmt: skip
    assert max(angles) < 12
    # the trajectory goes around: camera positions cover all four quadrants
    q = {(x > 0, y > 0) for x, y in P[:, :2, 3]}
    assert len(q) == 4


def test_frame_skip_and_resizing(scene):
    ds = build_dataset("synthetic", preset="test", frame_skip=4, rgb_resolution=[48, 64], depth_resolution=[24, 32])
    assert [f["index"] for f in ds] == [0, 5, 10]
    f = ds[1]
    assert f["rgb"].shape == (3, 48, 64) and f["labels"].shape == (1, 48, 64) and f["depth"].shape == (1, 24, 32)
    native = scene[5]
    K = native["intrinsics"].clone()
    K[0] *= 32 / 128
    K[1] *= 24 / 96
    torch.testing.assert_close(f["intrinsics"], K)
    torch.testing.assert_close(f["pose"], native["pose"])
    # labels resized with nearest-exact: every output label is a native label at the nearest-exact source pixel
    src_r = np.floor((np.arange(48) + 0.5) * 2).astype(int)
    src_c = np.floor((np.arange(64) + 0.5) * 2).astype(int)
    np.testing.assert_array_equal(f["labels"][0].numpy(), native["labels"][0].numpy()[np.ix_(src_r, src_c)])
    src_r = np.floor((np.arange(24) + 0.5) * 4).astype(int)
    src_c = np.floor((np.arange(32) + 0.5) * 4).astype(int)
    np.testing.assert_array_equal(f["depth"][0].numpy(), native["depth"][0].numpy()[np.ix_(src_r, src_c)])
    cfg = ds.config()
    assert cfg["frame_skip"] == 4 and cfg["preset"] == "test" and cfg["rgb_resolution"] == [48, 64]
    assert SyntheticScene(**cfg)[2]["index"] == 10


def test_presets_and_overrides():
    demo = SyntheticScene()
    assert (demo.height, demo.width, demo.num_frames) == (240, 320, 72)
    t = SyntheticScene(preset="test", num_frames=5, height=30, width=40)
    assert len(t) == 5 and t[0]["rgb"].shape == (3, 30, 40)
    with pytest.raises(ValueError, match="preset"):
        SyntheticScene(preset="huge")
    with pytest.raises(ValueError, match="too small"):
        SyntheticScene(preset="test", room_size=[2.0, 2.0, 2.5])


def test_gt_points(scene):
    xyz, lab = scene.gt_points()
    assert xyz.dtype == np.float32 and xyz.shape[1] == 3 and lab.dtype == np.int64 and lab.shape == (len(xyz),)
    assert set(np.unique(lab)) == set(range(1, len(CLASS_NAMES)))
    Lx, Ly, Lz = scene.room_size
    assert np.all(np.abs(xyz[:, 0]) <= Lx / 2 + 1e-5) and np.all(np.abs(xyz[:, 1]) <= Ly / 2 + 1e-5)
    assert xyz[:, 2].min() >= -1e-5 and xyz[:, 2].max() <= Lz + 1e-5
    # density: nothing covers the ceiling, so all of its area Lx * Ly is sampled at gt_points_per_m2
    n_ceiling = (lab == 3).sum()
    assert abs(n_ceiling / (Lx * Ly * scene.gt_points_per_m2) - 1) < 0.05
    # covered surfaces are not sampled: no floor point under the rug, but the rug's top is sampled
    rug = next(o for o in scene.objects if o.name == "rug")
    x0, x1, y0, y1 = rug.footprint
    inside = (xyz[:, 0] > x0 + 0.02) & (xyz[:, 0] < x1 - 0.02) & (xyz[:, 1] > y0 + 0.02) & (xyz[:, 1] < y1 - 0.02)
    assert (inside & (lab == 2)).sum() == 0
    assert (inside & (lab == CLASS_NAMES.index("rug"))).sum() > 0.9 * (x1 - x0) * (y1 - y0) * scene.gt_points_per_m2
