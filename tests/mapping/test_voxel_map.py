"""VoxelMap fusion, validation, skipping and cached queries against naive numpy references."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _helpers_mapping import H, K, W, make_frames, naive_map, sorted_map_arrays

from ovmap.mapping import VoxelMap, backproject

VOX = 0.05


def _integrate(vmap, frames, rgb=True):
    for depth, pose, feats, col in frames:
        vmap.integrate(depth, pose, K, feats, rgb=col if rgb else None)
    return vmap


def test_fusion_matches_naive_per_voxel_accumulation(device):
    frames = make_frames(4)
    vmap = _integrate(VoxelMap(VOX, device=device), frames)
    assert vmap.frames_integrated == 4 and vmap.frames_skipped == 0
    ref_ijk, ref_feat, ref_hits, ref_rgb = naive_map(frames, VOX)
    ijk, feat, hits, rgb = sorted_map_arrays(vmap)
    assert len(vmap) == len(ref_ijk)
    np.testing.assert_array_equal(ijk, ref_ijk)
    np.testing.assert_array_equal(hits, ref_hits)
    np.testing.assert_allclose(feat, ref_feat, atol=1e-5)
    np.testing.assert_allclose(rgb, ref_rgb, atol=1e-5)
    # the frames overlap, so the incremental path (hit + new voxels) was exercised
    assert ref_hits.max() > 1
    assert vmap.features.device.type == device.type


def test_properties_are_row_aligned():
    frames = make_frames(3)
    vmap = _integrate(VoxelMap(VOX), frames)
    n = len(vmap)
    assert vmap.keys.shape == (n, 3) and vmap.keys.dtype == torch.int64
    assert vmap.centers.dtype == torch.float32
    np.testing.assert_allclose(vmap.centers.numpy(), vmap.keys.numpy() * np.float32(VOX), rtol=1e-6)
    assert vmap.features.shape == (n, 6) and vmap.hits.shape == (n,) and vmap.rgb.shape == (n, 3)
    # row order is stable: the first frame's rows keep their voxel after more frames
    first = _integrate(VoxelMap(VOX), frames[:1])
    m = len(first)
    np.testing.assert_array_equal(vmap.keys[:m].numpy(), first.keys.numpy())


def test_one_by_one_equals_one_big_frame():
    """Two frames with the same pose side by side equal one frame twice as wide (same pixels, same points)."""
    depth, pose, feats, _ = make_frames(1, C=4, hw=(H, W))[0]
    left, right = depth[..., : W // 2], depth[..., W // 2 :]
    K_right = K.clone()
    K_right[0, 2] -= W // 2
    vmap = VoxelMap(VOX)
    vmap.integrate(left, pose, K, feats[:, :, : W // 2])
    vmap.integrate(right, pose, K_right, feats[:, :, W // 2 :])
    big = VoxelMap(VOX)
    big.integrate(depth, pose, K, feats)  # full-resolution features: one-hot sampling, identical pixels
    a, b = sorted_map_arrays(vmap), sorted_map_arrays(big)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_float16_storage_within_tolerance():
    frames = make_frames(4)
    vmap = _integrate(VoxelMap(VOX, feature_dtype="float16"), frames)
    assert vmap.features.dtype == torch.float16
    ref_ijk, ref_feat, ref_hits, _ = naive_map(frames, VOX)
    ijk, feat, hits, _ = sorted_map_arrays(vmap)
    np.testing.assert_array_equal(ijk, ref_ijk)
    np.testing.assert_array_equal(hits, ref_hits)
    np.testing.assert_allclose(feat, ref_feat, atol=4e-3, rtol=4e-3)


def test_rgb_optional_has_its_own_weight():
    frames = make_frames(2)
    vmap = VoxelMap(VOX)
    d0, p0, f0, c0 = frames[0]
    d1, p1, f1, _ = frames[1]
    vmap.integrate(d0, p0, K, f0, rgb=c0)
    vmap.integrate(d1, p1, K, f1)  # no colour
    _, _, _, ref_rgb = naive_map(frames[:1], VOX)
    ref_ijk1, _, ref_hits1, _ = naive_map(frames[:1], VOX)
    ijk, _, _, rgb = sorted_map_arrays(vmap)
    # colour of voxels seen in frame 0 is frame 0's mean only; voxels only seen in frame 1 stay 0
    lookup = {tuple(k): i for i, k in enumerate(ijk.tolist())}
    rows = [lookup[tuple(k)] for k in ref_ijk1.tolist()]
    np.testing.assert_allclose(rgb[rows], ref_rgb, atol=1e-5)
    only_second = np.setdiff1d(np.arange(len(ijk)), rows)
    assert len(only_second) > 0
    np.testing.assert_array_equal(rgb[only_second], 0.0)
    assert vmap.rgb_hits.sum().item() == ref_hits1.sum()
    assert vmap.hits.sum().item() > ref_hits1.sum()


def test_non_finite_pose_is_skipped(caplog):
    frames = make_frames(2)
    vmap = _integrate(VoxelMap(VOX), frames[:1])
    before = (vmap.keys.clone(), vmap.features.clone(), vmap.hits.clone())
    depth, pose, feats, rgb = frames[1]
    bad = pose.clone()
    bad[0, 3] = float("-inf")
    with caplog.at_level(logging.WARNING, logger="ovmap.mapping.voxel_map"):
        info = vmap.integrate(depth, bad, K, feats, rgb=rgb)
    assert info["skipped"] is True and info["num_points"] == 0
    assert vmap.frames_skipped == 1 and vmap.frames_integrated == 1
    assert "frame 1" in caplog.text and "not finite" in caplog.text
    for a, b in zip(before, (vmap.keys, vmap.features, vmap.hits)):
        assert torch.equal(a, b)


def test_far_points_overflow_the_packed_key_with_a_clear_error():
    depth, pose, feats, _ = make_frames(1)[0]
    far = pose.clone()
    far[0, 3] = 1.0e5  # 100 km: index 2e6 at 5 cm, beyond the +-2**20 range of a packed key
    with pytest.raises(ValueError, match="overflows the packed key"):
        VoxelMap(VOX).integrate(depth, far, K, feats)


def test_integrate_info_and_empty_depth():
    depth, pose, feats, _ = make_frames(1)[0]
    vmap = VoxelMap(VOX)
    info = vmap.integrate(depth, pose, K, feats)
    assert info["skipped"] is False
    assert info["num_points"] == int((torch.isfinite(depth) & (depth > 0)).sum())
    assert info["num_voxels_in_frame"] == info["num_new_voxels"] == len(vmap)
    info = vmap.integrate(depth, pose, K, feats)
    assert info["num_new_voxels"] == 0 and info["num_voxels_in_frame"] == len(vmap)
    info = vmap.integrate(torch.full((H, W), float("nan")), pose, K, feats)
    assert info["num_points"] == 0 and info["reason"] == "no valid depth"


def test_validation_errors():
    depth, pose, feats, _ = make_frames(1)[0]
    vmap = VoxelMap(VOX)
    vmap.integrate(depth, pose, K, feats)
    with pytest.raises(ValueError, match="6"):
        vmap.integrate(depth, pose, K, torch.randn(5, 3, 4))
    with pytest.raises(ValueError, match="pose_c2w"):
        vmap.integrate(depth, pose[:3], K, feats)
    with pytest.raises(ValueError, match="intrinsics"):
        vmap.integrate(depth, pose, torch.eye(4), feats)
    with pytest.raises(ValueError, match="depth"):
        vmap.integrate(torch.ones(2, H, W), pose, K, feats)
    with pytest.raises(ValueError, match="rgb"):
        vmap.integrate(depth, pose, K, feats, rgb=torch.rand(4, H, W))
    with pytest.raises(ValueError, match="feature_dtype"):
        VoxelMap(VOX, feature_dtype="int8")
    with pytest.raises(ValueError, match="chunk_rows"):
        VoxelMap(VOX, chunk_rows=1000)
    with pytest.raises(ValueError, match="voxel_size must be finite"):
        VoxelMap(float("inf"))
    with pytest.raises(ValueError, match="class_names"):
        VoxelMap(VOX, mode="probability", feature_dim=3, class_names=["ignore", "a"])


class FakeEncoder:
    """align_to_language = fixed linear map (counts the rows it sees); encode_text = fixed vectors."""

    name = "fake"

    def __init__(self, C: int = 6, D: int = 5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(C, D, generator=g)
        self.vocab = {t: torch.randn(D, generator=g) for t in ["chair", "table", "wall"]}
        self.rows_seen = 0

    def align_to_language(self, feats):
        self.rows_seen += feats.shape[0]
        return feats.float() @ self.A

    def encode_text(self, texts):
        return torch.stack([self.vocab[t] for t in texts])


def _numpy_query(features, A, text, temperature):
    lang = features.astype(np.float64) @ A.numpy().astype(np.float64)
    lang /= np.linalg.norm(lang, axis=1, keepdims=True)
    t = text.numpy().astype(np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    sim = t @ lang.T
    z = sim / temperature
    p = np.exp(z - z.max(0, keepdims=True))
    return sim, p / p.sum(0, keepdims=True)


def test_query_matches_numpy_and_cache_tracks_dirty_rows():
    frames = make_frames(4)
    enc = FakeEncoder()
    vmap = _integrate(VoxelMap(VOX, encoder=enc), frames[:2])
    texts = ["chair", "table", "wall"]
    res = vmap.query(texts, softmax_temperature=0.05)
    assert enc.rows_seen == len(vmap)
    sim, prob = _numpy_query(vmap.features.numpy(), enc.A, enc.encode_text(texts), 0.05)
    assert res.similarity.shape == (3, len(vmap)) and res.similarity.dtype == torch.float32
    np.testing.assert_allclose(res.similarity.numpy(), sim, atol=1e-5)
    np.testing.assert_allclose(res.probabilities.numpy(), prob, atol=1e-4)
    np.testing.assert_allclose(res.centers.numpy(), vmap.centers.numpy())

    # a second query without new frames re-projects nothing
    enc.rows_seen = 0
    vmap.query(texts)
    assert enc.rows_seen == 0

    # new frames: only touched/new rows are re-projected, and the result equals a fresh computation
    touched = 0
    for depth, pose, feats, col in frames[2:]:
        touched_before = set(map(tuple, vmap.keys.tolist()))
        info = vmap.integrate(depth, pose, K, feats, rgb=col)
        touched += info["num_voxels_in_frame"]
        assert info["num_new_voxels"] == len(vmap) - len(touched_before)
    res = vmap.query(texts, softmax_temperature=0.05)
    assert 0 < enc.rows_seen <= touched
    sim, prob = _numpy_query(vmap.features.numpy(), enc.A, enc.encode_text(texts), 0.05)
    np.testing.assert_allclose(res.similarity.numpy(), sim, atol=1e-5)
    np.testing.assert_allclose(res.probabilities.numpy(), prob, atol=1e-4)

    # helpers
    top = res.top("table", 5)
    np.testing.assert_array_equal(np.sort(top.numpy()), np.sort(np.argsort(-sim[1])[:5]))
    np.testing.assert_array_equal(res.mask(2, 0.5).numpy(), prob[2] >= 0.5)


def test_query_cache_rows_counted_exactly():
    frames = make_frames(2)
    enc = FakeEncoder()
    vmap = _integrate(VoxelMap(VOX, encoder=enc), frames[:1])
    vmap.query(["chair"])
    enc.rows_seen = 0
    depth, pose, feats, _ = frames[1]
    info = vmap.integrate(depth, pose, K, feats)
    vmap.query(["chair"])
    assert enc.rows_seen == info["num_voxels_in_frame"]


def test_query_errors():
    frames = make_frames(1)
    with pytest.raises(ValueError, match="empty"):
        VoxelMap(VOX, encoder=FakeEncoder()).query(["chair"])
    vmap = _integrate(VoxelMap(VOX), frames)
    with pytest.raises(ValueError, match="encoder"):
        vmap.query(["chair"])
    vmap.encoder = FakeEncoder(D=5)
    vmap.encoder.vocab = {"chair": torch.randn(7)}
    with pytest.raises(
        ValueError, match="text embedding dimension 7 does not match the map's language dimension 5"
    ):
        vmap.query(["chair"])


def test_probability_mode_query():
    names = ["ignore", "chair", "table"]
    g = torch.Generator().manual_seed(1)
    frames = make_frames(2)
    vmap = VoxelMap(VOX, mode="probability", class_names=names)
    for depth, pose, _, _ in frames:
        probs = torch.softmax(torch.randn(3, H, W, generator=g) * 3, dim=0)
        vmap.integrate(depth, pose, K, probs)
    assert vmap.feature_dim == 3
    res = vmap.query(["table", "chair"])
    p = vmap.features.numpy().astype(np.float64)
    sim = (p[:, [2, 1]] / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(res.similarity.numpy(), sim, atol=1e-6)
    z = sim / 0.01
    e = np.exp(z - z.max(0))
    np.testing.assert_allclose(res.probabilities.numpy(), e / e.sum(0), atol=1e-4)
    with pytest.raises(ValueError, match="sofa"):
        vmap.query(["sofa"])


def test_key_index_invariant_under_random_merges():
    """White-box: after arbitrary merges every key seen maps to the row holding it, and unseen keys to none."""
    vmap = VoxelMap(VOX, feature_dim=2)
    g = torch.Generator().manual_seed(5)
    seen: set[int] = set()
    for _ in range(25):
        size = int(torch.randint(1, 500, (1,), generator=g))
        uniq = torch.unique(torch.randint(-3000, 3000, (size,), generator=g))
        sums = torch.randn(len(uniq), 2, generator=g)
        vmap._merge(uniq, torch.ones(len(uniq)), sums)
        seen |= set(uniq.tolist())
        row_of = {k: r for r, k in enumerate(vmap.packed_keys.tolist())}
        assert set(row_of) == seen and len(row_of) == len(vmap)
        probe = torch.arange(-3100, 3100)
        expect = [row_of.get(k, -1) for k in probe.tolist()]
        assert vmap._index.lookup(probe).tolist() == expect
    assert len(vmap) == len(seen)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chunked_storage_and_blocked_merge_match_naive(dtype):
    """Tiny chunks (many chunks, rows spread over them) and 7-voxel merge blocks give the naive map exactly."""
    frames = make_frames(4)
    vmap = VoxelMap(VOX, chunk_rows=64, feature_dtype=dtype)
    vmap.merge_block_bytes = 4 * 6 * 7  # 7 voxels of 6 float32 channels per block
    _integrate(vmap, frames)
    assert len(vmap) > 5 * 64  # several chunks in use
    ref_ijk, ref_feat, ref_hits, ref_rgb = naive_map(frames, VOX)
    ijk, feat, hits, rgb = sorted_map_arrays(vmap)
    np.testing.assert_array_equal(ijk, ref_ijk)
    np.testing.assert_array_equal(hits, ref_hits)
    tol = 1e-5 if dtype == "float32" else 4e-3
    np.testing.assert_allclose(feat, ref_feat, atol=tol, rtol=tol)
    np.testing.assert_allclose(rgb, ref_rgb, atol=1e-5)
    # the same map built with one chunk and one block is identical bit for bit
    one = _integrate(VoxelMap(VOX, feature_dtype=dtype), frames)
    for x, y in zip(sorted_map_arrays(vmap), sorted_map_arrays(one)):
        np.testing.assert_array_equal(x, y)


def test_query_over_chunks_with_and_without_language_cache():
    frames = make_frames(3)
    enc = FakeEncoder()
    texts = ["chair", "table", "wall"]
    cached = _integrate(VoxelMap(VOX, encoder=enc, chunk_rows=64), frames)
    plain = _integrate(VoxelMap(VOX, encoder=enc, chunk_rows=64, cache_language=False), frames)
    sim, prob = _numpy_query(cached.features.numpy(), enc.A, enc.encode_text(texts), 0.01)
    for vmap in (cached, plain):
        res = vmap.query(texts)
        np.testing.assert_allclose(res.similarity.numpy(), sim, atol=1e-5)
        np.testing.assert_allclose(res.probabilities.numpy(), prob, atol=1e-4)
    assert cached.nbytes()["language_cache"] > 0 and plain.nbytes()["language_cache"] == 0
    lang = cached.language_features()
    ref = cached.features.numpy().astype(np.float64) @ enc.A.numpy().astype(np.float64)
    np.testing.assert_allclose(lang.numpy(), ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_one_hot_probabilities_average_to_exact_class_fractions():
    """Full-resolution one-hot label maps over several frames: every stored probability is exactly
    float32(count of the class) / float32(pixels), counted here per voxel with a plain dict (a float32 map sums
    integers and divides once)."""
    frames = make_frames(4)
    g = torch.Generator().manual_seed(11)
    names = ["ignore", "a", "b", "c"]
    vmap = VoxelMap(VOX, mode="probability", class_names=names)
    counts: dict = {}
    for depth, pose, _, _ in frames:
        labels = torch.randint(0, 4, (H, W), generator=g)
        labels[:, : W // 2] = 2  # large regions of one class, mixed elsewhere
        onehot = torch.nn.functional.one_hot(labels, 4).permute(2, 0, 1).float()
        vmap.integrate(depth, pose, K, onehot)
        xyz, pix = backproject(depth[None], K, pose[None])
        ijk = np.round(xyz.numpy() / np.float32(VOX)).astype(np.int64)
        for key, lab in zip(map(tuple, ijk.tolist()), labels.reshape(-1)[pix].tolist()):
            counts.setdefault(key, np.zeros(4, dtype=np.int64))[lab] += 1
    ijk, feat, hits, _ = sorted_map_arrays(vmap)
    ref = np.stack([counts[tuple(k)] for k in ijk.tolist()])
    np.testing.assert_array_equal(hits, ref.sum(1).astype(np.float32))
    np.testing.assert_array_equal(feat, ref.astype(np.float32) / ref.sum(1, keepdims=True).astype(np.float32))
    assert (feat == 1.0).any(axis=1).sum() > len(feat) // 4  # many voxels saw a single class: exactly 1.0
