"""Non-finite values never enter the map (dropped and counted), and damaged map files fail in one clear line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers_mapping import H, K, W, make_frames, naive_map, sorted_map_arrays

from ovmap.mapping import VoxelMap

VOX = 0.05


def _touching(bad_cells: torch.Tensor) -> torch.Tensor:
    """(H, W) pixels whose bilinear sample gives weight > 0 to a bad cell: upsample the indicator (float64)."""
    ind = F.interpolate(bad_cells[None, None].double(), size=(H, W), mode="bilinear", align_corners=False)
    return ind[0, 0] > 0


def _valid_depth(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth[0]) & (depth[0] > 0)


def test_nonfinite_features_are_dropped_and_counted(caplog):
    frames = make_frames(3)
    depth, pose, feats, rgb = frames[1]
    feats = feats.clone()
    feats[2, 1, 1] = float("nan")
    feats[0, 0, 3] = float("inf")
    bad = torch.zeros(feats.shape[1:], dtype=torch.bool)
    bad[1, 1] = bad[0, 3] = True
    drop = _touching(bad) & _valid_depth(depth)
    assert 0 < int(drop.sum()) < int(_valid_depth(depth).sum())
    # the reference: the same frame with the dropped pixels' depth removed
    depth_ref = depth.clone()
    depth_ref[0][drop] = float("nan")
    vmap = VoxelMap(VOX)
    with caplog.at_level(logging.WARNING, logger="ovmap.mapping.voxel_map"):
        for i, (d, p, f, c) in enumerate(frames):
            info = vmap.integrate(depth if i == 1 else d, p, K, feats if i == 1 else f, rgb=c)
            if i == 1:
                assert info["num_dropped_nonfinite"] == int(drop.sum())
    assert "frame 1" in caplog.text and "not finite" in caplog.text
    assert "frame 0" not in caplog.text and "frame 2" not in caplog.text
    assert vmap.points_dropped_nonfinite == int(drop.sum())
    assert vmap.stats["points_dropped_nonfinite"] == int(drop.sum())
    ref_frames = [frames[0], (depth_ref, pose, torch.nan_to_num(feats), rgb), frames[2]]
    ref_ijk, ref_feat, ref_hits, ref_rgb = naive_map(ref_frames, VOX)
    ijk, feat, hits, col = sorted_map_arrays(vmap)
    np.testing.assert_array_equal(ijk, ref_ijk)
    np.testing.assert_array_equal(hits, ref_hits)
    np.testing.assert_allclose(feat, ref_feat, atol=1e-5)
    np.testing.assert_allclose(col, ref_rgb, atol=1e-5)
    assert np.isfinite(feat).all()


def test_nonfinite_probabilities_are_dropped_per_pixel(tmp_path):
    names = ["ignore", "chair", "table"]
    depth, pose, _, _ = make_frames(1)[0]
    probs = torch.softmax(torch.randn(3, H, W, generator=torch.Generator().manual_seed(2)), 0)
    probs[1, 5, 7] = float("nan")
    probs[0, 10, 20] = float("-inf")
    valid = _valid_depth(depth)
    expected = int(valid[5, 7]) + int(valid[10, 20])
    assert expected > 0
    vmap = VoxelMap(VOX, mode="probability", class_names=names)
    vmap.integrate(depth, pose, K, probs)
    assert vmap.points_dropped_nonfinite == expected
    assert vmap.hits.sum().item() == int(valid.sum()) - expected
    assert torch.isfinite(vmap.features).all()
    # queries work and the counter travels with the map
    res = vmap.query(["chair", "table"])
    assert torch.isfinite(res.similarity).all() and torch.isfinite(res.probabilities).all()
    vmap.save(tmp_path / "p.npz")
    loaded = VoxelMap.load(tmp_path / "p.npz")
    assert loaded.points_dropped_nonfinite == expected
    with np.load(tmp_path / "p.npz") as z:
        assert int(z["points_dropped_nonfinite"]) == expected


def test_nonfinite_colour_fuses_the_point_without_colour():
    depth, pose, feats, rgb = make_frames(1, rgb_hw=(H, W))[0]
    rgb = rgb.clone()
    rgb[:, 4, 9] = float("nan")
    valid = _valid_depth(depth)
    assert valid[4, 9]
    vmap = VoxelMap(VOX)
    vmap.integrate(depth, pose, K, feats, rgb=rgb)
    assert vmap.rgb_points_dropped_nonfinite == 1 and vmap.points_dropped_nonfinite == 0
    assert vmap.hits.sum().item() == int(valid.sum())
    assert vmap.rgb_hits.sum().item() == int(valid.sum()) - 1
    assert torch.isfinite(vmap.rgb).all()


def test_nonfinite_world_points_are_dropped_and_counted():
    depth, pose, feats, _ = make_frames(1)[0]
    tiny_f = K.clone()
    tiny_f[0, 0] = 1e-39  # K^-1 overflows float32: every valid pixel back-projects to +-inf in x
    vmap = VoxelMap(VOX)
    info = vmap.integrate(depth, pose, tiny_f, feats)
    n_valid = int(_valid_depth(depth).sum())
    assert vmap.points_dropped_nonfinite == n_valid == info["num_dropped_nonfinite"]
    assert len(vmap) == 0 and info["reason"] == "no finite point"


# ---------------------------------------------------------------------------------------------------- map files


def _good_map(tmp_path):
    vmap = VoxelMap(VOX)
    for depth, pose, feats, rgb in make_frames(2):
        vmap.integrate(depth, pose, K, feats, rgb=rgb)
    path = tmp_path / "good.npz"
    vmap.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return path, arrays


def _expect_one_line(path, match):
    with pytest.raises(ValueError) as err:
        VoxelMap.load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "pickle" not in msg.replace(str(path), "").lower(), msg
    assert err.match(match), msg
    return msg


def _rewrite(tmp_path, arrays, name, **changes):
    out = dict(arrays)
    for k, v in changes.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    path = tmp_path / name
    np.savez(path, **out)
    return path


@pytest.mark.parametrize(
    ("key", "edit", "match"),
    [
        ("features", lambda a: np.where(np.arange(a.shape[0])[:, None] == 3, np.nan, a), r"'features'.*non-finite.*row 3"),
        ("rgb_mean", lambda a: np.where(np.arange(a.shape[0])[:, None] == 0, np.inf, a), r"'rgb'.*non-finite.*row 0"),
        ("hits", lambda a: np.where(np.arange(a.shape[0]) == 2, -1.0, a).astype(np.float32), r"'hits'.*non-positive.*row 2"),
        ("hits", lambda a: np.where(np.arange(a.shape[0]) == 5, 0.0, a).astype(np.float32), r"'hits'.*non-positive.*row 5"),
        ("rgb_hits", lambda a: -a, r"'rgb_hits'.*negative"),
        ("keys", lambda a: np.concatenate([a[:1], a[:-1]]), r"duplicate voxel keys.*1 rows"),
        ("features", lambda a: a[:-1], r"'features' has shape"),
        ("hits", lambda a: a[:, None], r"'hits' has shape"),
        ("keys", lambda a: a[:, :2], r"'keys' must be an \(N, 3\)"),
        ("keys", lambda a: a.astype(np.float32), r"'keys' has dtype float32"),
        ("voxel_size", lambda a: np.array(np.inf), r"voxel_size must be finite"),
        ("mode", lambda a: np.array("semantic"), r"mode must be one of"),
    ],
)
def test_inconsistent_map_rows_give_one_clear_line(tmp_path, key, edit, match):
    _, arrays = _good_map(tmp_path)
    bad = _rewrite(tmp_path, arrays, "bad.npz", **{key: edit(arrays[key])})
    _expect_one_line(bad, match)


def test_missing_array_and_wrong_version(tmp_path):
    _, arrays = _good_map(tmp_path)
    _expect_one_line(_rewrite(tmp_path, arrays, "m.npz", features=None), r"missing required arrays \['features'\]")
    _expect_one_line(_rewrite(tmp_path, arrays, "v.npz", format_version=np.array(9)), "format_version 9")


def test_damaged_files_give_one_clear_line(tmp_path):
    good, _ = _good_map(tmp_path)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_one_line(truncated, "corrupt or truncated")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _expect_one_line(empty, r"empty \(0 bytes\)")
    text = tmp_path / "notes.npz"
    text.write_text("this is not a map\n")
    _expect_one_line(text, "not an .npz archive")
    pickled = tmp_path / "objects.npz"
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled.write_bytes((tmp_path / "obj.npy").read_bytes())
    _expect_one_line(pickled, "not an .npz archive")
    objects = tmp_path / "objarr.npz"
    np.savez(objects, features=np.array([{"a": 1}], dtype=object))
    _expect_one_line(objects, "object arrays")
    # one flipped bit in the middle of the feature payload: the zip CRC catches it
    with np.load(good) as z:
        feats = z["features"]
    needle = feats.tobytes()[: 64]
    at = data.index(needle) + 32
    flipped = bytearray(data)
    flipped[at] ^= 0x10
    bitflip = tmp_path / "bitflip.npz"
    bitflip.write_bytes(bytes(flipped))
    _expect_one_line(bitflip, "CRC")
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        VoxelMap.load(tmp_path / "nowhere.npz")


def test_damaged_header_bytes_give_one_clear_line(tmp_path):
    """Flip bytes across the whole file (headers included): always a ValueError line, never another exception."""
    good, _ = _good_map(tmp_path)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for n, at in enumerate(sorted(rng.choice(len(data), size=40, replace=False))):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        path = tmp_path / f"flip{n}.npz"
        path.write_bytes(bytes(flipped))
        try:
            loaded = VoxelMap.load(path)
        except ValueError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            refused += 1
        else:  # a flip in a zip field nobody checks (e.g. a timestamp) leaves a valid, identical map
            for x, y in zip(sorted_map_arrays(loaded), sorted_map_arrays(VoxelMap.load(good))):
                np.testing.assert_array_equal(x, y)
    assert refused >= 30  # almost every byte is covered by a CRC, a header or a length
