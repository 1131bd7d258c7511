"""Small synthetic posed frames and a naive per-voxel reference, shared by the mapping tests."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from ovmap.mapping.geometry import backproject

H, W = 24, 32
K = torch.tensor([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])


def _rot(axis: list[float], angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    skew = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.linalg.matrix_exp(angle * skew).float()


def make_frames(n: int, C: int = 6, hw: tuple[int, int] = (3, 4), seed: int = 0, rgb_hw=(48, 64)):
    """n overlapping frames of a wavy surface: (depth (1,H,W), pose (4,4), feats (C,h,w), rgb (3,Hr,Wr))."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    frames = []
    for i in range(n):
        phase = float(torch.rand(1, generator=g)) * 6.0
        depth = 1.2 + 0.2 * torch.sin(u / 5.0 + phase) + 0.1 * torch.cos(v / 4.0)
        depth[torch.rand(H, W, generator=g) < 0.1] = float("nan")
        depth[0, :3] = 0.0
        pose = torch.eye(4)
        pose[:3, :3] = _rot([0.2, 1.0, 0.1], 0.15 * i)
        pose[:3, 3] = torch.tensor([0.05 * i, -0.03 * i, 0.02 * i])
        feats = torch.randn(C, *hw, generator=g)
        rgb = torch.rand(3, *rgb_hw, generator=g)
        frames.append((depth[None], pose, feats, rgb))
    return frames


def naive_map(frames, voxel_size: float, with_rgb: bool = True):
    """Dict keyed by (i,j,k): per-pixel features from a float64 full upsample, summed over all pixels of all frames.

    Returns sorted ijk (M,3), mean features (M,C), hits (M,), mean rgb (M,3).
    """
    fsum: dict = defaultdict(lambda: 0.0)
    csum: dict = defaultdict(lambda: 0.0)
    hits: dict = defaultdict(int)
    for depth, pose, feats, rgb in frames:
        xyz, pix = backproject(depth[None], K, pose[None])
        ijk = np.round(xyz.numpy() / np.float32(voxel_size)).astype(np.int64)
        up = F.interpolate(feats[None].double(), size=(H, W), mode="bilinear", align_corners=False)[0]
        upc = F.interpolate(rgb[None].double(), size=(H, W), mode="bilinear", align_corners=False)[0]
        pf = up.reshape(feats.shape[0], -1).t().numpy()[pix.numpy()]
        pc = upc.reshape(3, -1).t().numpy()[pix.numpy()]
        for key, f, c in zip(map(tuple, ijk.tolist()), pf, pc):
            fsum[key] = fsum[key] + f
            csum[key] = csum[key] + c
            hits[key] += 1
    keys = sorted(hits)
    n = np.array([hits[k] for k in keys], dtype=np.float64)
    feat = np.stack([fsum[k] for k in keys]) / n[:, None]
    col = np.stack([csum[k] for k in keys]) / n[:, None]
    return np.array(keys, dtype=np.int64), feat, n, col


def sorted_map_arrays(vmap):
    """Map arrays sorted lexicographically by (i, j, k), as numpy."""
    ijk = vmap.keys.cpu().numpy()
    order = np.lexsort((ijk[:, 2], ijk[:, 1], ijk[:, 0]))
    return (
        ijk[order],
        vmap.features.float().cpu().numpy()[order],
        vmap.hits.cpu().numpy()[order],
        vmap.rgb.cpu().numpy()[order],
    )
