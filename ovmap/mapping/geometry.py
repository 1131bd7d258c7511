"""Camera geometry: back-projection of depth images to world points and the inverse projection.

Conventions (the same everywhere in ``ovmap``):

* ``pose_c2w``: 4x4 camera-to-world transform T_wc (last row ``[0, 0, 0, 1]``), metres.
* Camera axes: OpenCV "RDF" (x right, y down, z forward).
* ``depth``: z-depth (not ray length) in metres, float32. A pixel is valid iff its depth is finite, > 0 and
  within ``[min_depth, max_depth]``. NaN = missing, +Inf = beyond range.
* ``intrinsics``: 3x3 K in pixels **at depth resolution**.
* Pixel centres: integer indices; pixel (u, v) is column u, row v, its centre is at (u, v) (no +0.5).

Voxel indices, packed keys and centres live in :mod:`ovmap.voxel_keys` (the one home of the voxel-grid arithmetic).

Typical usage example:

    xyz, pix = backproject(depth[None], K, pose_c2w[None], max_depth=5.0)
    keys = ovmap.voxel_keys.voxel_keys(xyz, 0.05)
"""

from __future__ import annotations

import functools
import logging

import torch
from jaxtyping import Float, Int64
from torch import Tensor

logger = logging.getLogger(__name__)

def _as_batched_intrinsics(intrinsics: Tensor, batch: int) -> Tensor:
    if intrinsics.shape == (3, 3):
        return intrinsics.unsqueeze(0).expand(batch, 3, 3)
    if intrinsics.shape == (batch, 3, 3):
        return intrinsics
    raise ValueError(f"intrinsics must have shape (3, 3) or ({batch}, 3, 3), got {tuple(intrinsics.shape)}")


def valid_depth_mask(depth: Tensor, min_depth: float = 0.0, max_depth: float = float("inf")) -> Tensor:
    """Boolean mask of valid depth pixels: finite, > 0 and within ``[min_depth, max_depth]``.

    Args:
        depth: z-depth in metres, any shape.
        min_depth: smallest accepted depth (inclusive), metres.
        max_depth: largest accepted depth (inclusive), metres.

    Returns:
        Bool tensor with the shape of ``depth``.
    """
    mask = torch.isfinite(depth) & (depth > 0)
    if min_depth > 0:
        mask &= depth >= min_depth
    if max_depth != float("inf"):
        mask &= depth <= max_depth
    return mask


@functools.lru_cache(maxsize=4)
def _pixel_coords(H: int, W: int, device: torch.device) -> tuple[Float[Tensor, " HW"], Float[Tensor, " HW"]]:
    """Column u and row v (float32, exact integers) of every flat pixel index ``v * W + u``, cached per shape."""
    flat = torch.arange(H * W, device=device)
    return (flat % W).float(), torch.div(flat, W, rounding_mode="floor").float()


def backproject(
    depth: Float[Tensor, "B 1 H W"],
    intrinsics: Float[Tensor, "3 3"] | Float[Tensor, "B 3 3"],
    pose_c2w: Float[Tensor, "B 4 4"],
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
) -> tuple[Float[Tensor, "N 3"], Int64[Tensor, " N"]]:
    """Back-project the valid pixels of a batch of depth images to world points.

    For each valid pixel (u, v) with depth d: ``p_c = d * K^-1 (u, v, 1)^T`` and ``p_w = R_wc p_c + t_wc``,
    computed as ``d * M (u, v, 1)^T + t_wc`` with ``M = R_wc K^-1`` composed in float64.

    Args:
        depth: z-depth in metres, shape (B, 1, H, W). Invalid pixels (non-finite, <= 0, outside
            ``[min_depth, max_depth]``) are dropped.
        intrinsics: K in pixels at depth resolution, (3, 3) shared or (B, 3, 3) per image.
        pose_c2w: camera-to-world poses, (B, 4, 4), OpenCV camera axes.
        min_depth: smallest accepted depth (inclusive), metres.
        max_depth: largest accepted depth (inclusive), metres.

    Returns:
        xyz: world points, (N, 3) float32, ordered by flat pixel index.
        pix_idx: flat index of each point in the (B, H, W) layout, (N,) int64
            (``b * H * W + v * W + u``).

    Raises:
        ValueError: on malformed shapes.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (B, 1, H, W), got {tuple(depth.shape)}")
    B, _, H, W = depth.shape
    if pose_c2w.shape != (B, 4, 4):
        raise ValueError(f"pose_c2w must have shape ({B}, 4, 4), got {tuple(pose_c2w.shape)}")
    device = depth.device
    K = _as_batched_intrinsics(intrinsics.to(device), B)
    k_inv = torch.linalg.inv(K.double())  # (B, 3, 3)
    pose = pose_c2w.to(device=device, dtype=torch.float64)
    # M = R_wc K^-1 composed once per image in float64 (as the reference composes T_wc diag(K^-1, 1)), so
    # p_w = d * M (u, v, 1)^T + t_wc costs a few passes over the points.
    m_all = (pose[:, :3, :3] @ k_inv).float()  # (B, 3, 3)
    t_all = pose[:, :3, 3].float()  # (B, 3)

    d_all = depth.reshape(B, H * W).float()
    mask = valid_depth_mask(d_all, min_depth, max_depth)
    xyz_parts, pix_parts = [], []
    for b in range(B):
        idx = torch.nonzero(mask[b]).squeeze(1)
        d = d_all[b].index_select(0, idx)
        u_of, v_of = _pixel_coords(H, W, device)
        u, v = u_of.index_select(0, idx), v_of.index_select(0, idx)
        m = m_all[b]
        p_w = torch.outer(u, m[:, 0])
        p_w.add_(torch.outer(v, m[:, 1])).add_(m[:, 2]).mul_(d.unsqueeze(1)).add_(t_all[b])
        xyz_parts.append(p_w)
        pix_parts.append(idx + b * H * W)
    xyz = torch.cat(xyz_parts) if B > 1 else xyz_parts[0]
    pix_idx = torch.cat(pix_parts) if B > 1 else pix_parts[0]
    return xyz, pix_idx


def world_points_to_depth_image(
    xyz: Float[Tensor, "N 3"],
    intrinsics: Float[Tensor, "3 3"],
    pose_c2w: Float[Tensor, "4 4"],
    H: int,
    W: int,
) -> Float[Tensor, "1 H W"]:
    """Project world points into a camera and keep the minimum z-depth per pixel (inverse of :func:`backproject`).

    Projected pixel coordinates are rounded to the nearest integer pixel centre. Points behind the camera
    (z <= 0) or outside the image are ignored.

    Args:
        xyz: world points, (N, 3).
        intrinsics: K in pixels, (3, 3).
        pose_c2w: camera-to-world pose, (4, 4), OpenCV camera axes.
        H: image height in pixels.
        W: image width in pixels.

    Returns:
        Depth image (1, H, W) float32 in metres, NaN where no point projects.
    """
    device = xyz.device
    pose = pose_c2w.to(device=device, dtype=torch.float64)
    K = intrinsics.to(device=device, dtype=torch.float64)
    rot = pose[:3, :3]
    trans = pose[:3, 3]
    p_c = (xyz.double() - trans) @ rot  # R^T (p - t), row-vector form
    z = p_c[:, 2]
    front = z > 0
    p_c, z = p_c[front], z[front]
    proj = p_c @ K.T
    u = torch.round(proj[:, 0] / z).long()
    v = torch.round(proj[:, 1] / z).long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    flat = v[inside] * W + u[inside]
    out = torch.full((H * W,), float("inf"), dtype=torch.float32, device=device)
    out.scatter_reduce_(0, flat, z[inside].float(), reduce="amin", include_self=True)
    out[torch.isinf(out)] = float("nan")
    return out.reshape(1, H, W)
