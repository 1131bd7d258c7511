"""Feature lifting and fusion maths: per-frame per-voxel sums and the running-mean merge.

Feature lifting follows ``F.interpolate(feat, size=(H, W), mode="bilinear", align_corners=False)`` exactly, but
never materialises the (C, H, W) upsampled tensor. Each valid depth pixel (u, v) is mapped to its bilinear source
coordinates in the (h, w) feature map,

    x = (u + 0.5) * w / W - 0.5,   y = (v + 0.5) * h / H - 0.5   (clamped at the border),

giving up to 4 patch neighbours with bilinear weights (:func:`sampling_table`, cached per shape). Points are
grouped by voxel with one stable sort (:func:`group_points`); consecutive points of a voxel that fall in the same
bilinear cell form a run whose 4 weights are summed (:func:`voxel_patch_bags`), and the per-voxel sums
``sum_runs sum_taps w * F[texel]`` come from one weighted ``embedding_bag`` over the (h*w, C) texel table
(:func:`lift_bags`): no (C, H, W) upsample, no per-pixel (N, C) rows, no global ``unique`` over (voxel, texel)
pairs. When (h, w) == (H, W) the weights are one-hot and nearest sampling is used, so full-resolution probability
maps go through the same path. RGB has its own cheap per-point path (:func:`point_colour_sums`).

Fusion rule (per voxel v, a frame contributing n_v pixels with summed features S_v): a float32 map adds S_v to
the voxel's stored sum and divides by the pixel count ``W_v`` when read; a reduced-precision (or loaded) map keeps the
running mean

    f_v <- (W_v * f_v + S_v) / (W_v + n_v),   W_v <- W_v + n_v     (:func:`merge_running_mean`)

either way the mean over every pixel ever projected into the voxel.

Typical usage example:

    uniq_keys, sums, counts = frame_voxel_sums(keys, pix_idx, feat, H, W)
"""

from __future__ import annotations

import functools
import logging

import torch
from jaxtyping import Float, Int64
from torch import Tensor

from ovmap.voxel_keys import pack_indices

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
    idx_table, w_table = sampling_table(H, W, h, w, sampling, u.device)
    pix = v * W + u
    return idx_table.index_select(0, pix), w_table.index_select(0, pix)


def _axis(size_out: int, size_in: int, sampling: str, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per output coordinate: first source index, second source index, weight of the second (float32 maths)."""
    coord = torch.arange(size_out, device=device).float()
    scale = torch.tensor(size_in / size_out, dtype=torch.float32, device=device)
    if sampling == "nearest":
        i0 = torch.floor((coord + 0.5) * scale).long().clamp_(max=size_in - 1)
        return i0, i0, torch.zeros_like(coord)
    src = ((coord + 0.5) * scale - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=size_in - 1)
    i1 = (i0 + 1).clamp_(max=size_in - 1)
    return i0, i1, (src - i0.float()).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def sampling_table(
    H: int, W: int, h: int, w: int, sampling: str, device: torch.device
) -> tuple[Int64[Tensor, "HW S"], Float[Tensor, "HW S"]]:
    """Source texels and weights of every pixel of an (H, W) grid sampling an (h, w) map (cached per shape).

    Returns ``idx`` (H*W, S) int64 flat texel indices and ``weights`` (H*W, S) float32, S = 4 (bilinear, in the
    order (y0, x0), (y0, x1), (y1, x0), (y1, x1)) or 1 (nearest). The table is computed once per
    (H, W, h, w, sampling, device): 12 * S bytes per pixel (15 MB at 640 x 480 bilinear).
    """
    x0, x1, lx = _axis(W, w, sampling, device)
    y0, y1, ly = _axis(H, h, sampling, device)
    if sampling == "nearest":
        idx = (y0[:, None] * w + x0[None, :]).reshape(-1, 1)
        return idx, torch.ones(H * W, 1, dtype=torch.float32, device=device)
    wx0, wy0 = 1.0 - lx, 1.0 - ly
    idx = torch.stack(
        [y0[:, None] * w + x0, y0[:, None] * w + x1, y1[:, None] * w + x0, y1[:, None] * w + x1], dim=-1
    ).reshape(-1, 4)
    weights = torch.stack(
        [wy0[:, None] * wx0, wy0[:, None] * lx, ly[:, None] * wx0, ly[:, None] * lx], dim=-1
    ).reshape(-1, 4)
    return idx, weights


@functools.lru_cache(maxsize=8)
def _cell_table(H: int, W: int, h: int, w: int, sampling: str, device: torch.device) -> Int64[Tensor, " HW"]:
    """(H*W,) first source texel of every pixel (the bilinear cell), contiguous: a 1-D gather per point is much
    cheaper than gathering the (N, S) texel rows."""
    return sampling_table(H, W, h, w, sampling, device)[0][:, 0].contiguous()


def group_points(
    keys: Int64[Tensor, " N"],
) -> tuple[Int64[Tensor, " N"], Int64[Tensor, " V"], Float[Tensor, " V"], Int64[Tensor, " N"]]:
    """Group points by packed voxel key with one stable sort (no ``unique``).

    Args:
        keys: (N,) int64 packed voxel keys.

    Returns:
        order: (N,) permutation sorting the points by key; points of one voxel keep their input order.
        uniq_keys: (V,) sorted unique keys.
        counts: (V,) float32 number of points per voxel.
        voxel_of: (N,) voxel row (index into ``uniq_keys``) of each point **in sorted order**.
    """
    sorted_keys, order = torch.sort(keys, stable=True)
    starts, counts, voxel_of = _groups_of_sorted(sorted_keys)
    return order, sorted_keys.index_select(0, starts), counts, voxel_of


def _groups_of_sorted(
    sorted_keys: Tensor,
) -> tuple[Int64[Tensor, " V"], Float[Tensor, " V"], Int64[Tensor, " N"]]:
    """Runs of equal values in a sorted (N,) tensor: first position and length (float32) of each run, and the run
    of every element."""
    n = sorted_keys.shape[0]
    new = torch.ones(n, dtype=torch.bool, device=sorted_keys.device)
    if n > 1:
        torch.ne(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    starts = torch.nonzero(new).squeeze(1)
    voxel_of = torch.cumsum(new, 0) - 1
    bounds = torch.cat([starts, torch.full((1,), n, dtype=starts.dtype, device=sorted_keys.device)])
    return starts, (bounds[1:] - bounds[:-1]).float(), voxel_of


def group_voxel_indices(
    ijk: Int64[Tensor, "N 3"],
) -> tuple[Int64[Tensor, " N"], Int64[Tensor, " V"], Float[Tensor, " V"], Int64[Tensor, " N"]]:
    """:func:`group_points` of ``pack_indices(ijk)``, the same four results, computed cheaper.

    A frame spans a small box of voxels, so when the box has fewer than 2**31 cells the stable sort runs on a
    frame-local int32 key ``((i - i0) * Ej + (j - j0)) * Ek + (k - k0)`` (lexicographic like the packed key, and
    about half the cost of sorting int64 keys) and only the V distinct voxels are packed.

    Args:
        ijk: (N, 3) int64 voxel indices.

    Raises:
        ValueError: if an index is outside the packed key's range (see :func:`ovmap.voxel_keys.pack_indices`).
    """
    n = ijk.shape[0]
    if n == 0:
        return group_points(pack_indices(ijk))
    lo, hi = torch.aminmax(ijk, dim=0)
    ext = (hi - lo + 1).tolist()
    if ext[0] * ext[1] * ext[2] >= 1 << 31:
        return group_points(pack_indices(ijk))
    rel = (ijk - lo).to(torch.int32)
    local = (rel[:, 0] * ext[1] + rel[:, 1]) * ext[2] + rel[:, 2]
    sorted_local, order = torch.sort(local, stable=True)
    starts, counts, voxel_of = _groups_of_sorted(sorted_local)
    # every voxel of the frame is among these V rows, so packing them also range-checks the whole frame
    uniq = pack_indices(ijk.index_select(0, order.index_select(0, starts)))
    return order, uniq, counts, voxel_of


def voxel_patch_bags(
    voxel_of: Int64[Tensor, " N"],
    pix_idx: Int64[Tensor, " N"],
    num_voxels: int,
    H: int,
    W: int,
    h: int,
    w: int,
    sampling: str = "bilinear",
) -> tuple[Int64[Tensor, " E"], Float[Tensor, " E"], Int64[Tensor, " V1"]]:
    """Per-voxel bags of (patch, summed weight) pairs: ``sum_v = sum_e weight[e] * F[patch[e]]`` over bag v.

    The points must be grouped by voxel (``voxel_of`` non-decreasing, as :func:`group_points` returns them).
    Consecutive points of one voxel that sample the same bilinear cell (the same 4 source texels) are merged into
    one run whose 4 weights are the sums of the points' weights, so a bag holds about 4 entries per (voxel, cell)
    instead of 4 per pixel; no global ``unique`` over (voxel, patch) pairs is needed. A texel may appear twice in
    a bag (from two cells); the sum is the same. When (h, w) == (H, W) the weights are one-hot and nearest
    sampling is used (1 entry per run).

    Args:
        voxel_of: (N,) voxel row of each point, non-decreasing.
        pix_idx: (N,) flat pixel index ``v * W + u`` of each point at depth resolution (H, W).
        num_voxels: V.
        H: depth height.
        W: depth width.
        h: source map height.
        w: source map width.
        sampling: "bilinear" or "nearest".

    Returns:
        patch: (E,) int64 flat texel index in the (h, w) map.
        weight: (E,) float32 summed weights.
        bag_start: (V + 1,) int64 offsets; bag v is ``patch[bag_start[v]:bag_start[v + 1]]``.
    """
    if (h, w) == (H, W):
        sampling = "nearest"
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    device = pix_idx.device
    n = pix_idx.shape[0]
    idx_table, w_table = sampling_table(H, W, h, w, sampling, device)
    wts = w_table.index_select(0, pix_idx)  # (N, S)
    S = wts.shape[1]
    cell = _cell_table(H, W, h, w, sampling, device).index_select(0, pix_idx)  # (y0, x0) determines all S texels
    new_run = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        new_run[1:] = (voxel_of[1:] != voxel_of[:-1]) | (cell[1:] != cell[:-1])
    run_starts = torch.nonzero(new_run).squeeze(1)
    R = run_starts.shape[0]
    run_of = torch.cumsum(new_run, 0) - 1
    run_w = torch.zeros(R, S, dtype=torch.float32, device=device).index_add_(0, run_of, wts)
    run_idx = idx_table.index_select(0, pix_idx.index_select(0, run_starts))  # (R, S): gathered per run only
    # first run of every voxel: runs are grouped by voxel, so count runs per voxel and take a cumulative sum
    runs_per_voxel = torch.zeros(num_voxels, dtype=torch.int64, device=device).index_add_(
        0, voxel_of.index_select(0, run_starts), torch.ones(R, dtype=torch.int64, device=device)
    )
    bag_start = torch.zeros(num_voxels + 1, dtype=torch.int64, device=device)
    torch.cumsum(runs_per_voxel * S, 0, out=bag_start[1:])
    return run_idx.reshape(-1), run_w.reshape(-1), bag_start


def permute_bags(
    patch: Int64[Tensor, " E"],
    weight: Float[Tensor, " E"],
    bag_start: Int64[Tensor, " V1"],
    perm: Int64[Tensor, " V"],
) -> tuple[Int64[Tensor, " E"], Float[Tensor, " E"], Int64[Tensor, " V1"]]:
    """Reorder bags: bag j of the result is bag ``perm[j]`` of the input (an O(E) gather of the small entries).

    Lets the map compute per-voxel sums directly in the order it merges them (no (V, C) reshuffle).
    """
    lens = bag_start[1:] - bag_start[:-1]
    plens = lens.index_select(0, perm)
    new_start = torch.zeros_like(bag_start)
    torch.cumsum(plens, 0, out=new_start[1:])
    E = patch.shape[0]
    shift = bag_start[:-1].index_select(0, perm) - new_start[:-1]
    src = torch.repeat_interleave(shift, plens, output_size=E) + torch.arange(E, device=patch.device)
    return patch.index_select(0, src), weight.index_select(0, src), new_start


def lift_bags(
    patch: Int64[Tensor, " E"],
    weight: Float[Tensor, " E"],
    bag_start: Int64[Tensor, " V1"],
    table: Float[Tensor, "P C"],
    v0: int = 0,
    v1: int | None = None,
) -> Float[Tensor, "B C"]:
    """Per-voxel sums of bags ``v0 .. v1`` (default all): ``out[v] = sum_e weight[e] * table[patch[e]]``.

    One ``embedding_bag`` (weighted sum) call: no (E, C) temporary is built.

    Args:
        patch, weight, bag_start: from :func:`voxel_patch_bags`.
        table: (P, C) float32 source texels (the (C, h, w) map as rows), contiguous.
        v0: first voxel.
        v1: one past the last voxel.

    Returns:
        (v1 - v0, C) float32 sums.
    """
    if v1 is None:
        v1 = bag_start.shape[0] - 1
    if v1 <= v0:
        return torch.zeros(0, table.shape[1], dtype=torch.float32, device=table.device)
    if v0 == 0 and v1 == bag_start.shape[0] - 1:
        offsets, inp, wts = bag_start, patch, weight
    else:
        lo, hi = int(bag_start[v0]), int(bag_start[v1])
        offsets = bag_start[v0 : v1 + 1] - lo
        inp, wts = patch[lo:hi], weight[lo:hi]
    return torch.nn.functional.embedding_bag(
        inp, table, offsets, mode="sum", per_sample_weights=wts, include_last_offset=True
    )


def feature_table(feat: Float[Tensor, "C h w"]) -> Float[Tensor, "P C"]:
    """(h*w, C) float32 contiguous rows of a (C, h, w) map, the table :func:`lift_bags` gathers from."""
    return feat.reshape(feat.shape[0], -1).t().float().contiguous()


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
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    order, uniq, counts, voxel_of = group_points(keys)
    patch, weight, bag_start = voxel_patch_bags(
        voxel_of, pix_idx.index_select(0, order), uniq.shape[0], H, W, feat.shape[1], feat.shape[2], sampling
    )
    return uniq, lift_bags(patch, weight, bag_start, feature_table(feat)), counts


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
    idx_table, w_table = sampling_table(H, W, h, w, sampling, pix_idx.device)
    idx, wts = idx_table.index_select(0, pix_idx), w_table.index_select(0, pix_idx)
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
    device = rgb.device
    if (Hr, Wr) == (H, W):  # one-hot weights: one gather of the 3 channels
        vals = flat.index_select(1, pix_idx)  # (3, N)
    else:
        idx_table, w_table = sampling_table(H, W, Hr, Wr, "bilinear", device)
        idx, wts = idx_table.index_select(0, pix_idx), w_table.index_select(0, pix_idx)
        vals = torch.empty(3, pix_idx.shape[0], dtype=torch.float32, device=device)
        for c in range(3):
            taps = flat[c][idx] * wts  # (N, 4); a NaN tap with weight 0 must not count
            vals[c] = torch.where(wts > 0, taps, torch.zeros((), device=device)).sum(dim=1)
    sums = torch.zeros(3, num_voxels, dtype=torch.float32, device=device).index_add_(1, inverse, vals)
    # the common case: every sampled colour is finite (a NaN/inf sample makes the total non-finite; an overflowing
    # total only sends finite colours through the exact check below)
    if bool(torch.isfinite(sums.sum())):
        return sums.t().contiguous(), torch.bincount(inverse, minlength=num_voxels).float(), 0
    ok = torch.isfinite(vals).all(dim=0)
    n_bad = int((~ok).sum())
    if n_bad:
        vals = torch.where(ok, vals, torch.zeros((), device=device))
        sums = torch.zeros(3, num_voxels, dtype=torch.float32, device=device).index_add_(1, inverse, vals)
    counts = torch.zeros(num_voxels, dtype=torch.float32, device=device).index_add_(0, inverse, ok.float())
    return sums.t().contiguous(), counts, n_bad


def merge_running_mean(
    mean: Float[Tensor, "M C"] | None,
    weight: Float[Tensor, " M"] | None,
    sums: Float[Tensor, "M C"],
    counts: Float[Tensor, " M"],
    inplace: bool = False,
    out: Tensor | None = None,
) -> tuple[Float[Tensor, "M C"], Float[Tensor, " M"]]:
    """Running-mean update ``(W * mean + sums) / (W + n)`` computed in float32.

    The one implementation of the running-mean rule: :class:`~ovmap.mapping.voxel_map.VoxelMap` calls it for
    colour and for the features of mean-storing (float16 / bfloat16 / loaded) maps; float32 maps add sums instead.
    A true division (not a multiplication by ``1 / (W + n)``), so means of one-hot vectors stay exactly one-hot.

    Args:
        mean: current per-voxel means (any float dtype), (M, C); None for voxels seen for the first time
            (``W = 0``, the result is ``sums / n``).
        weight: current weights W (pixel hit counts), (M,); None when ``mean`` is None.
        sums: this frame's per-voxel sums, (M, C).
        counts: this frame's per-voxel pixel counts n >= 0, (M,). Rows with ``W + n = 0`` get mean 0.
        inplace: a float32 ``mean`` (or, when ``mean`` is None, float32 ``sums``) may be overwritten with the
            result (saves an (M, C) temporary).
        out: only when ``mean`` is None: an (M, C) tensor (e.g. a view of the map's storage) that receives
            ``sums / n`` directly, with no temporary.

    Returns:
        new_mean: (M, C) float32.
        new_weight: (M,) float32.
    """
    counts = counts.float()
    if mean is None and out is not None:
        return torch.div(sums, counts.clamp(min=_TINY).unsqueeze(1), out=out), counts.clone()
    if mean is None:
        out = sums if inplace and sums.dtype == torch.float32 else sums.float().clone()
        return out.div_(counts.clamp(min=_TINY).unsqueeze(1)), counts.clone()
    w = weight.float()
    new_w = w + counts
    out = mean.float() if inplace else mean.float().clone()
    torch.addcmul(sums.float(), out, w.unsqueeze(1), out=out)  # W * mean + S in one pass
    out.div_(new_w.clamp(min=_TINY).unsqueeze(1))
    return out, new_w
