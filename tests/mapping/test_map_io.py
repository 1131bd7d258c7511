"""Saving, loading and exporting maps."""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
import torch
from _helpers_mapping import K, make_frames, sorted_map_arrays

from ovmap.mapping import VoxelMap

VOX = 0.05


class NamedEncoder:
    name = "fake"
    build_config: typing.ClassVar[dict] = {"name": "fake", "dim": 6}

    def align_to_language(self, x):
        return x

    def encode_text(self, texts):
        return torch.ones(len(texts), 6)


def _build(frames, **kw):
    vmap = VoxelMap(VOX, **kw)
    for depth, pose, feats, rgb in frames:
        vmap.integrate(depth, pose, K, feats, rgb=rgb)
    return vmap


def _npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_save_identical(tmp_path, dtype):
    frames = make_frames(3)
    vmap = _build(frames, feature_dtype=dtype, encoder=NamedEncoder(), max_depth=10.0)
    vmap.integrate(*frames[0][:1], torch.full((4, 4), float("nan")), K, frames[0][2])  # one skipped frame
    p1, p2 = tmp_path / "a.npz", tmp_path / "b.npz"
    vmap.save(p1)
    loaded = VoxelMap.load(p1)
    loaded.save(p2)
    a, b = _npz(p1), _npz(p2)
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "encoder":
            continue  # the loaded map has no encoder attached
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k
    assert loaded.feature_dtype == dtype and loaded.frames_skipped == 1 and loaded.frames_integrated == 3


def test_npz_contents_readable_with_numpy_alone(tmp_path):
    frames = make_frames(2)
    vmap = _build(frames, encoder=NamedEncoder())
    path = tmp_path / "map.npz"
    vmap.save(path)
    z = _npz(path)
    n = len(vmap)
    assert int(z["format_version"]) == 1
    assert (
        z["voxel_size"].dtype == np.float64 and z["voxel_size"].shape == () and float(z["voxel_size"]) == VOX
    )
    assert z["keys"].dtype == np.int32 and z["keys"].shape == (n, 3)
    assert z["centers"].dtype == np.float32
    assert z["features"].dtype == np.float32 and z["features"].shape == (n, 6)
    assert z["hits"].dtype == np.float32 and z["rgb"].dtype == np.uint8 and z["rgb_mean"].dtype == np.float32
    assert str(z["mode"]) == "feature" and z["class_names"].shape == (0,)
    assert json.loads(str(z["encoder"])) == {"dim": 6, "name": "fake"}
    # rows sorted lexicographically by (i, j, k)
    k = z["keys"].astype(np.int64)
    np.testing.assert_array_equal(np.lexsort((k[:, 2], k[:, 1], k[:, 0])), np.arange(n))
    ijk, feat, hits, rgb = sorted_map_arrays(vmap)
    np.testing.assert_array_equal(k, ijk)
    np.testing.assert_array_equal(z["features"], feat)
    np.testing.assert_array_equal(z["hits"], hits)
    np.testing.assert_allclose(z["centers"], ijk * np.float32(VOX), rtol=1e-6)
    np.testing.assert_array_equal(z["rgb"], np.round(rgb * 255).astype(np.uint8))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_load_then_continue_equals_uninterrupted(tmp_path):
    frames = make_frames(4)
    full = _build(frames)
    half = _build(frames[:2])
    half.save(tmp_path / "half.npz")
    resumed = VoxelMap.load(tmp_path / "half.npz")
    for depth, pose, feats, rgb in frames[2:]:
        resumed.integrate(depth, pose, K, feats, rgb=rgb)
    assert resumed.frames_integrated == full.frames_integrated == 4
    _assert_continued_equals(resumed, full)


def _assert_continued_equals(resumed, full):
    """A loaded map keeps the saved means and merges further frames with (W f + S) / (W + n); the uninterrupted
    float32 map keeps sums and divides once: the features agree to float32 rounding (a few ulp), all else exactly."""
    (ijk, feat, hits, rgb), (ijk0, feat0, hits0, rgb0) = sorted_map_arrays(resumed), sorted_map_arrays(full)
    np.testing.assert_array_equal(ijk, ijk0)
    np.testing.assert_array_equal(hits, hits0)
    np.testing.assert_array_equal(rgb, rgb0)
    np.testing.assert_allclose(feat, feat0, rtol=4 * np.finfo(np.float32).eps, atol=1e-7)


def test_state_dict_round_trip_and_continue():
    frames = make_frames(4)
    full = _build(frames)
    half = _build(frames[:2])
    state = half.state_dict()
    assert state["keys"].dtype == torch.int64 and state["keys"].shape == (len(half), 3)
    k = state["keys"].numpy()
    np.testing.assert_array_equal(np.lexsort(k.T[::-1]), np.arange(len(half)))  # lexicographic rows
    restored = VoxelMap.from_state_dict(state)
    for x, y in zip(sorted_map_arrays(restored), sorted_map_arrays(half)):
        np.testing.assert_array_equal(x, y)
    for depth, pose, feats, rgb in frames[2:]:
        restored.integrate(depth, pose, K, feats, rgb=rgb)
    _assert_continued_equals(restored, full)


def test_probability_map_round_trip(tmp_path):
    names = ["ignore", "chair", "table"]
    frames = make_frames(1)
    depth, pose, _, _ = frames[0]
    vmap = VoxelMap(VOX, mode="probability", class_names=names)
    vmap.integrate(depth, pose, K, torch.softmax(torch.randn(3, 24, 32), 0))
    vmap.save(tmp_path / "p.npz")
    loaded = VoxelMap.load(tmp_path / "p.npz")
    assert loaded.mode == "probability" and loaded.class_names == names
    a, b = sorted_map_arrays(loaded), sorted_map_arrays(vmap)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[1].shape == (len(vmap), 3)
    texts = ["table", "chair"]
    got, want = loaded.query(texts), vmap.query(texts)
    order_l = np.lexsort(loaded.keys.numpy().T[::-1])
    order_v = np.lexsort(vmap.keys.numpy().T[::-1])
    np.testing.assert_array_equal(got.similarity.numpy()[:, order_l], want.similarity.numpy()[:, order_v])
    np.testing.assert_array_equal(got.probabilities.numpy()[:, order_l], want.probabilities.numpy()[:, order_v])


def test_empty_map_round_trip(tmp_path):
    VoxelMap(VOX).save(tmp_path / "e.npz")
    loaded = VoxelMap.load(tmp_path / "e.npz")
    assert len(loaded) == 0 and loaded.voxel_size == VOX


def test_wrong_version_and_missing_keys_raise(tmp_path):
    vmap = _build(make_frames(1))
    path = tmp_path / "m.npz"
    vmap.save(path)
    z = _npz(path)
    z["format_version"] = np.array(7)
    bad = tmp_path / "v7.npz"
    np.savez(bad, **z)
    with pytest.raises(ValueError, match=r"v7\.npz.*7.*1"):
        VoxelMap.load(bad)
    z = _npz(path)
    del z["hits"], z["rgb_mean"]
    missing = tmp_path / "missing.npz"
    np.savez(missing, **z)
    with pytest.raises(ValueError, match=r"missing\.npz.*'hits'.*'rgb_mean'"):
        VoxelMap.load(missing)


def test_export_ply_readable_by_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    vmap = _build(make_frames(2))
    path = tmp_path / "map.ply"
    vmap.export_ply(path)
    pc = o3d.io.read_point_cloud(str(path))
    assert len(pc.points) == len(vmap)
    np.testing.assert_allclose(np.asarray(pc.points), vmap.centers.numpy(), atol=1e-6)
    expected = np.round(vmap.rgb.numpy() * 255) / 255
    np.testing.assert_allclose(np.asarray(pc.colors), expected, atol=1e-6)
    # explicit uint8 colours
    red = np.tile(np.array([[255, 0, 0]], dtype=np.uint8), (len(vmap), 1))
    vmap.export_ply(path, colors=red)
    pc = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(pc.colors), red / 255.0)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
