"""Feature lifting and fusion maths: per-frame per-voxel sums and the running-mean merge.

Feature lifting follows ``F.interpolate(feat, size=(H, W), mode="bilinear", align_corners=False)`` exactly, but
never materialises the (C, H, W) upsampled tensor. Each valid depth pixel (u, v) is mapped to its bilinear source
coordinates in the (h, w) feature map,

    x = (u + 0.5) * w / W - 0.5,   y = (v + 0.5) * h / H - 0.5   (clamped at the border),

giving up to 4 patch neighbours with bilinear weights. The weights are accumulated into a sparse
(voxels x patches) matrix ``Wm[v, p] = sum over pixels i in voxel v of w_{i, p}``; the per-voxel feature sums are
then ``Wm @ F_patches`` (V x C). Memory is O(nnz + h*w*C) instead of O(H*W*C). When (h, w) == (H, W) the weights
are exactly one-hot, so full-resolution probability maps go through the same path. RGB at any resolution uses
the same sampling.

Fusion rule (per voxel v, a frame contributing n_v pixels with summed features S_v):

    f_v <- (W_v * f_v + S_v) / (W_v + n_v),   W_v <- W_v + n_v

so the stored mean is the exact running mean over every pixel ever projected into the voxel and ``W_v`` is the
pixel hit count.

Typical usage example:

    uniq_keys, sums, counts = frame_voxel_sums(keys, pix_idx, feat, H, W)
"""

from __future__ import annotations

import logging

import torch
from jaxtyping import Float, Int64
from torch import Tensor

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("bilinear", "nearest")
_TINY = 1e-30  # denominator floor: a row with no weight at all keeps mean 0 instead of 0 / 0


def sample_weights(
    u: Int64[Tensor, " N"],
    v: Int64[Tensor, " N"],
    H: int,
    W: int,
    h: int,
    w: int,
    sampling: str = "bilinear",
) -> tuple[Int64[Tensor, "N S"], Float[Tensor, "N S"]]:
    """Source texels and weights that sample an (h, w) map at the centres of (H, W) pixels.

    ``bilinear`` reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` (S = 4 neighbours, border
    clamped); ``nearest`` reproduces ``mode="nearest-exact"`` (S = 1).

    Args:
        u: pixel columns at the target (H, W) resolution, (N,).
        v: pixel rows at the target resolution, (N,).
        H: target height (depth resolution).
        W: target width.
        h: source map height.
        w: source map width.
        sampling: "bilinear" or "nearest".

    Returns:
        idx: flat indices into the (h, w) source grid, (N, S) int64.
        weights: (N, S) float32 weights summing to 1 per row (zero weights possible).
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    sx = torch.tensor(w / W, dtype=torch.float32, device=u.device)
    sy = torch.tensor(h / H, dtype=torch.float32, device=u.device)
    if sampling == "nearest":
        x = torch.floor((u.float() + 0.5) * sx).long().clamp_(max=w - 1)
        y = torch.floor((v.float() + 0.5) * sy).long().clamp_(max=h - 1)
        return (y * w + x).unsqueeze(1), torch.ones(u.shape[0], 1, dtype=torch.float32, device=u.device)

    def axis(coord: Tensor, scale: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        src = ((coord.float() + 0.5) * scale - 0.5).clamp_(min=0.0)
        i0 = src.floor().long().clamp_(max=size - 1)
        i1 = (i0 + 1).clamp_(max=size - 1)
        l1 = (src - i0.float()).clamp_(0.0, 1.0)
        return i0, i1, 1.0 - l1, l1

    x0, x1, wx0, wx1 = axis(u, sx, w)
    y0, y1, wy0, wy1 = axis(v, sy, h)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=1)
    weights = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], dim=1)
    return idx, weights


def group_keys(
    keys: Int64[Tensor, " N"],
) -> tuple[Int64[Tensor, " V"], Int64[Tensor, " N"], Float[Tensor, " V"]]:
    """Group points by packed voxel key.

    Args:
        keys: (N,) int64 packed voxel keys.

    Returns:
        uniq_keys: (V,) sorted unique keys.
        inverse: (N,) row of each point in ``uniq_keys``.
        counts: (V,) float32 number of points per voxel.
    """
    uniq, inv, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    return uniq, inv, counts.float()


def voxel_patch_weights(
    inverse: Int64[Tensor, " N"],
    num_voxels: int,
    pix_idx: Int64[Tensor, " N"],
    H: int,
    W: int,
    h: int,
    w: int,
    sampling: str = "bilinear",
) -> Tensor:
    """Sparse (V, h*w) matrix of summed sampling weights: ``Wm[v, p] = sum_{i in v} w_{i,p}``.

    Args:
        inverse: voxel row of each point, (N,) int64 in [0, V).
        num_voxels: V.
        pix_idx: flat pixel index of each point in the single-frame (H, W) grid, (N,).
        H: depth height.
        W: depth width.
        h: source map height.
        w: source map width.
        sampling: "bilinear" or "nearest".

    Returns:
        A coalesced sparse COO float32 tensor of shape (V, h*w) with duplicate (v, p) pairs summed and zero weights dropped.
    """
    device = pix_idx.device
    P = h * w
    v = torch.div(pix_idx, W, rounding_mode="floor")
    u = pix_idx - v * W
    idx, wts = sample_weights(u, v, H, W, h, w, sampling)
    pair = (inverse.unsqueeze(1) * P + idx).reshape(-1)
    wts = wts.reshape(-1)
    keep = wts > 0
    pair, wts = pair[keep], wts[keep]
    uniq_pair, pinv = torch.unique(pair, sorted=True, return_inverse=True)
    vals = torch.zeros(uniq_pair.shape[0], dtype=torch.float32, device=device).index_add_(0, pinv, wts)
    rows = torch.div(uniq_pair, P, rounding_mode="floor")
    cols = uniq_pair - rows * P
    # Sorted unique (row, col) pairs are already coalesced (row-major order).
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals, size=(num_voxels, P), is_coalesced=True, check_invariants=False
    )


def lift_to_voxels(weights: Tensor, feat: Float[Tensor, "C h w"]) -> Float[Tensor, "V C"]:
    """Per-voxel sums ``weights @ F_patches`` in float32.

    Args:
        weights: sparse (V, h*w) matrix from :func:`voxel_patch_weights`.
        feat: (C, h, w) source map (any float dtype; computed in float32).

    Returns:
        (V, C) float32 per-voxel sums of the sampled per-pixel values.
    """
    C = feat.shape[0]
    patches = feat.reshape(C, -1).t().float().contiguous()  # (P, C)
    if weights.shape[0] == 0:
        return torch.zeros(0, C, dtype=torch.float32, device=feat.device)
    return torch.sparse.mm(weights, patches)


def frame_voxel_sums(
    keys: Int64[Tensor, " N"],
    pix_idx: Int64[Tensor, " N"],
    feat: Float[Tensor, "C h w"],
    H: int,
    W: int,
    sampling: str = "bilinear",
) -> tuple[Int64[Tensor, " V"], Float[Tensor, "V C"], Float[Tensor, " V"]]:
    """Reduce one frame to per-voxel feature sums and pixel counts.

    The per-pixel feature is the bilinear sample of ``feat`` at the pixel centre, identical to
    ``F.interpolate(feat[None], size=(H, W), mode="bilinear", align_corners=False)[0, :, v, u]`` (or
    ``nearest-exact`` with ``sampling="nearest"``), without materialising the upsampled map.

    Args:
        keys: packed voxel key of each valid pixel, (N,) int64.
        pix_idx: flat index ``v * W + u`` of each valid pixel in the frame's (H, W) grid, (N,) int64.
        feat: feature (or probability) map, (C, h, w), any resolution including (H, W).
        H: depth height.
        W: depth width.
        sampling: "bilinear" (default) or "nearest".

    Returns:
        uniq_keys: (V,) sorted unique keys.
        sums: (V, C) float32 sums of the per-pixel features.
        counts: (V,) float32 number of pixels per voxel.
    """
    if feat.ndim != 3:
        raise ValueError(f"feat must have shape (C, h, w), got {tuple(feat.shape)}")
    uniq, inv, counts = group_keys(keys)
    weights = voxel_patch_weights(inv, uniq.shape[0], pix_idx, H, W, feat.shape[1], feat.shape[2], sampling)
    return uniq, lift_to_voxels(weights, feat), counts


def points_touching(
    bad_cells: Tensor, pix_idx: Int64[Tensor, " N"], H: int, W: int, sampling: str = "bilinear"
) -> Tensor:
    """(N,) bool: the point's sample of an (h, w) map gives a nonzero weight to a cell flagged in ``bad_cells``.

    Args:
        bad_cells: (h, w) bool mask of cells (e.g. non-finite features).
        pix_idx: flat pixel index ``v * W + u`` of each point at depth resolution (H, W).
        H: depth height.
        W: depth width.
        sampling: "bilinear" or "nearest" (as used for lifting).
    """
    h, w = bad_cells.shape
    v = torch.div(pix_idx, W, rounding_mode="floor")
    idx, wts = sample_weights(pix_idx - v * W, v, H, W, h, w, sampling)
    return (bad_cells.reshape(-1)[idx] & (wts > 0)).any(dim=1)


def point_colour_sums(
    inverse: Int64[Tensor, " N"], num_voxels: int, pix_idx: Int64[Tensor, " N"], H: int, W: int,
    rgb: Float[Tensor, "3 Hr Wr"],
) -> tuple[Float[Tensor, "V 3"], Float[Tensor, " V"], int]:
    """Per-voxel colour sums and counts, bilinear samples of ``rgb`` at the pixel centres (one-hot at equal size).

    Points whose sampled colour is not finite are left out of both (their number is returned).

    Args:
        inverse: voxel row of each point, (N,) in [0, V).
        num_voxels: V.
        pix_idx: flat pixel index of each point at depth resolution (H, W).
        H: depth height.
        W: depth width.
        rgb: (3, Hr, Wr) colour in [0, 1], any resolution.

    Returns:
        sums: (V, 3) float32; counts: (V,) float32 points with a finite colour; the number of points left out.
    """
    Hr, Wr = rgb.shape[1:]
    flat = rgb.reshape(3, -1).float()
    if (Hr, Wr) == (H, W):  # one-hot weights: a plain gather
        col = flat[:, pix_idx].t()
    else:
        v = torch.div(pix_idx, W, rounding_mode="floor")
        idx, wts = sample_weights(pix_idx - v * W, v, H, W, Hr, Wr, "bilinear")
        taps = flat.t()[idx] * wts.unsqueeze(2)  # (N, 4, 3)
        col = torch.where(wts.unsqueeze(2) > 0, taps, torch.zeros((), device=taps.device)).sum(dim=1)
    ok = torch.isfinite(col).all(dim=1)
    n_bad = int((~ok).sum())
    if n_bad:
        col = torch.where(ok.unsqueeze(1), col, torch.zeros((), device=col.device))
    sums = torch.zeros(num_voxels, 3, dtype=torch.float32, device=col.device).index_add_(0, inverse, col)
    counts = torch.zeros(num_voxels, dtype=torch.float32, device=col.device).index_add_(0, inverse, ok.float())
    return sums, counts, n_bad


def merge_running_mean(
    mean: Float[Tensor, "M C"] | None,
    weight: Float[Tensor, " M"] | None,
    sums: Float[Tensor, "M C"],
    counts: Float[Tensor, " M"],
    inplace: bool = False,
) -> tuple[Float[Tensor, "M C"], Float[Tensor, " M"]]:
    """Running-mean update ``(W * mean + sums) / (W + n)`` computed in float32.

    The one implementation of the fusion rule: :class:`~ovmap.mapping.voxel_map.VoxelMap` calls it for every
    merge (features and colour).

    Args:
        mean: current per-voxel means (any float dtype), (M, C); None for voxels seen for the first time
            (``W = 0``, the result is ``sums / n``).
        weight: current weights W (pixel hit counts), (M,); None when ``mean`` is None.
        sums: this frame's per-voxel sums, (M, C).
        counts: this frame's per-voxel pixel counts n >= 0, (M,). Rows with ``W + n = 0`` get mean 0.
        inplace: a float32 ``mean`` may be overwritten with the result (saves an (M, C) temporary).

    Returns:
        new_mean: (M, C) float32.
        new_weight: (M,) float32.
    """
    counts = counts.float()
    if mean is None:
        return sums.float() / counts.clamp(min=_TINY).unsqueeze(1), counts.clone()
    w = weight.float()
    new_w = w + counts
    new_mean = mean.float() if inplace else mean.float().clone()
    new_mean.mul_(w.unsqueeze(1)).add_(sums).div_(new_w.clamp(min=_TINY).unsqueeze(1))
    return new_mean, new_w
