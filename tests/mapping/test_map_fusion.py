"""frame_voxel_sums and the running-mean rule against naive references (full upsample + python dict)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovmap.mapping.fusion import (
    frame_voxel_sums,
    group_points,
    group_voxel_indices,
    lift_bags,
    merge_running_mean,
    permute_bags,
    sample_weights,
    voxel_patch_bags,
)
from ovmap.voxel_keys import pack_indices, unpack_keys


def _naive_voxel_sums(keys, pix_idx, feat, H, W, mode="bilinear"):
    """Upsample the whole map in float64 with F.interpolate, then sum per key with a python dict."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(feat[None].double(), size=(H, W), mode=mode, **kwargs)[0]  # (C, H, W)
    per_pixel = up.reshape(feat.shape[0], -1).t().numpy()  # (H*W, C)
    sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(feat.shape[0]))
    counts: dict[int, int] = defaultdict(int)
    for k, p in zip(keys.tolist(), pix_idx.tolist()):
        sums[k] = sums[k] + per_pixel[p]
        counts[k] += 1
    order = sorted(sums)
    return np.array(order), np.stack([sums[k] for k in order]), np.array([counts[k] for k in order], float)


@pytest.mark.parametrize(
    ("hw", "HW"),
    [((3, 4), (12, 16)), ((5, 7), (24, 20)), ((30, 40), (30, 40)), ((40, 30), (24, 20)), ((1, 1), (6, 5))],
)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_frame_voxel_sums_matches_upsample_reference(hw, HW, mode):
    (h, w), (H, W) = hw, HW
    g = torch.Generator().manual_seed(h * 1000 + w * 100 + H * 10 + W + (mode == "nearest"))
    C = 5
    feat = torch.randn(C, h, w, generator=g)
    n_pix = H * W
    pix_idx = torch.sort(torch.randperm(n_pix, generator=g)[: int(0.8 * n_pix)]).values
    keys = torch.randint(-20, 20, (pix_idx.shape[0],), generator=g) * 1_000_003  # arbitrary int64 keys
    uniq, sums, counts = frame_voxel_sums(keys, pix_idx, feat, H, W, sampling=mode)
    ref_keys, ref_sums, ref_counts = _naive_voxel_sums(
        keys, pix_idx, feat, H, W, "bilinear" if mode == "bilinear" else "nearest-exact"
    )
    assert sums.dtype == torch.float32 and counts.dtype == torch.float32
    np.testing.assert_array_equal(uniq.numpy(), ref_keys)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    np.testing.assert_allclose(sums.numpy(), ref_sums, atol=1e-5, rtol=1e-5)


def test_full_resolution_weights_are_one_hot():
    H, W = 7, 9
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    idx, wts = sample_weights(u.reshape(-1), v.reshape(-1), H, W, H, W)
    # exactly one weight of 1 on the pixel itself, the rest exactly 0
    assert torch.all((wts == 0) | (wts == 1))
    assert torch.all(wts.sum(1) == 1)
    hit = idx[wts == 1]
    assert hit.tolist() == list(range(H * W))


def test_sample_weights_bad_mode():
    with pytest.raises(ValueError, match="sampling"):
        sample_weights(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 2, 2, 1, 1, "cubic"
        )


def test_frame_voxel_sums_empty_frame():
    uniq, sums, counts = frame_voxel_sums(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.randn(4, 2, 3), 8, 12
    )
    assert uniq.shape == (0,) and sums.shape == (0, 4) and counts.shape == (0,)


def test_frame_voxel_sums_on_device(device):
    feat = torch.randn(3, 4, 5, device=device)
    pix = torch.arange(0, 80, 3, device=device)
    keys = pix % 4
    _, sums, counts = frame_voxel_sums(keys, pix, feat, 8, 10)
    assert sums.device.type == device.type
    _, ref_sums, ref_counts = _naive_voxel_sums(keys.cpu(), pix.cpu(), feat.cpu(), 8, 10)
    np.testing.assert_allclose(sums.cpu().numpy(), ref_sums, atol=1e-5)
    np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)


def test_merge_running_mean_is_the_mean_over_all_pixels():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(10, 4, generator=g, dtype=torch.float64)  # 10 pixels in one voxel, first frame
    b = torch.randn(3, 4, generator=g, dtype=torch.float64)  # 3 more pixels, second frame
    mean0 = a.mean(0, keepdim=True).float()
    mean, w = merge_running_mean(
        mean0, torch.tensor([10.0]), b.sum(0, keepdim=True).float(), torch.tensor([3.0])
    )
    np.testing.assert_allclose(mean.numpy(), torch.cat([a, b]).mean(0, keepdim=True).numpy(), atol=1e-6)
    assert w.item() == 13.0
    # first observation: the mean of the pixels
    first, wf = merge_running_mean(None, None, a.sum(0, keepdim=True).float(), torch.tensor([10.0]))
    np.testing.assert_allclose(first.numpy(), a.mean(0, keepdim=True).numpy(), atol=1e-6)
    assert wf.item() == 10.0
    # one-hot probabilities stay exactly one-hot: (3 * 1 + 2) / 5 == 1 with a true division
    exact, _ = merge_running_mean(torch.tensor([[1.0, 0.0]]), torch.tensor([3.0]), torch.tensor([[2.0, 0.0]]),
                                  torch.tensor([2.0]))
    assert exact.tolist() == [[1.0, 0.0]]


def test_bags_are_deduplicated_and_permutable():
    """Bag entries: one run of 4 texels per (voxel, cell) run; permuting bags permutes the lifted sums exactly."""
    g = torch.Generator().manual_seed(7)
    H, W, h, w = 24, 32, 3, 4
    feat = torch.randn(5, h, w, generator=g)
    pix = torch.arange(H * W)
    keys = (pix // W // 2) * 100 + (pix % W) // 2  # 2 x 2 pixel voxels
    order, uniq, counts, voxel_of = group_points(keys)
    patch, weight, start = voxel_patch_bags(voxel_of, pix[order], uniq.shape[0], H, W, h, w)
    assert patch.shape[0] < 4 * H * W  # merged runs: fewer entries than 4 per pixel
    assert torch.equal(start[1:] - start[:-1] > 0, torch.ones(uniq.shape[0], dtype=torch.bool))
    table = feat.reshape(5, -1).t().contiguous()
    base = lift_bags(patch, weight, start, table)
    _, ref, _ = _naive_voxel_sums(keys, pix, feat, H, W)
    np.testing.assert_allclose(base.numpy(), ref, atol=1e-5)
    perm = torch.randperm(uniq.shape[0], generator=g)
    pp, pw, ps = permute_bags(patch, weight, start, perm)
    np.testing.assert_array_equal(lift_bags(pp, pw, ps, table).numpy(), base[perm].numpy())
    # blocks give the same rows as one call
    np.testing.assert_array_equal(torch.cat([lift_bags(pp, pw, ps, table, 0, 7),
                                             lift_bags(pp, pw, ps, table, 7, uniq.shape[0])]).numpy(),
                                  lift_bags(pp, pw, ps, table).numpy())


@pytest.mark.parametrize("span", [3, 200, 1 << 19])
def test_group_voxel_indices_matches_a_naive_grouping(span):
    """Frame-local int32 sort (small spans) and the packed-key fallback (a box over 2**31 cells) both give the
    grouping of a plain Python sort of the index triples: order stable within a voxel, keys, counts, voxel rows."""
    g = torch.Generator().manual_seed(span)
    ijk = torch.randint(-span, span, (4000, 3), generator=g)
    ijk[::7] = ijk[3]  # many points in one voxel
    order, uniq, counts, voxel_of = group_voxel_indices(ijk)
    triples = [tuple(t) for t in ijk.tolist()]
    ref_order = sorted(range(len(triples)), key=lambda i: (triples[i], i))
    assert order.tolist() == ref_order
    distinct = sorted(set(triples))
    assert unpack_keys(uniq).tolist() == [list(t) for t in distinct]
    assert counts.tolist() == [float(triples.count(t)) for t in distinct]
    pos = {t: r for r, t in enumerate(distinct)}
    assert voxel_of.tolist() == [pos[triples[i]] for i in ref_order]
    # the same as group_points of the packed keys
    for x, y in zip((order, uniq, counts, voxel_of), group_points(pack_indices(ijk))):
        assert torch.equal(x, y)


def test_group_voxel_indices_range_check():
    with pytest.raises(ValueError, match="overflows the packed key"):
        group_voxel_indices(torch.tensor([[0, 0, 0], [1 << 20, 0, 0]]))
