"""Turning per-voxel query scores into a region a person reads: the top-scoring connected voxel group.

(Heat colours of scores live in :mod:`ovmap.vis.colors`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Region:
    """A connected set of voxels. Coordinates in the map's world frame, metres."""

    indices: np.ndarray  # (M,) rows of the map
    centroid: np.ndarray  # (3,)
    extent: np.ndarray  # (3,) axis-aligned size, voxel faces included
    bbox_min: np.ndarray  # (3,)
    bbox_max: np.ndarray  # (3,)
    mean_score: float

    @property
    def num_voxels(self) -> int:
        return int(self.indices.size)


def top_region(keys: np.ndarray, scores: np.ndarray, voxel_size: float, margin: float = 0.05) -> Region | None:
    """The largest 26-connected group of voxels scoring within ``margin`` of the best score.

    Args:
        keys: (N, 3) integer voxel indices (centre = key * voxel_size).
        scores: (N,) per-voxel scores (e.g. cosine similarity to one query).
        voxel_size: voxel edge in metres.
        margin: voxels with score >= max(score) - margin are candidates.

    Returns:
        The candidate component with the most voxels (ties: the higher mean score), or None for an empty map.
    """
    keys = np.asarray(keys, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return None
    candidates = np.flatnonzero(scores >= scores.max() - margin)
    cand_keys = keys[candidates]
    lo = cand_keys.min(0)
    grid_shape = tuple(cand_keys.max(0) - lo + 1)
    grid = np.zeros(grid_shape, dtype=bool)
    local = cand_keys - lo
    grid[local[:, 0], local[:, 1], local[:, 2]] = True
    components, count = ndimage.label(grid, structure=np.ones((3, 3, 3), dtype=bool))
    comp_of = components[local[:, 0], local[:, 1], local[:, 2]]  # 1..count
    sizes = np.bincount(comp_of, minlength=count + 1)
    score_sums = np.bincount(comp_of, weights=scores[candidates], minlength=count + 1)
    means = score_sums / np.maximum(sizes, 1)
    best = max(range(1, count + 1), key=lambda c: (sizes[c], means[c]))
    rows = candidates[comp_of == best]
    centers = keys[rows].astype(np.float64) * voxel_size
    bbox_min = centers.min(0) - voxel_size / 2
    bbox_max = centers.max(0) + voxel_size / 2
    return Region(
        indices=rows,
        centroid=centers.mean(0),
        extent=bbox_max - bbox_min,
        bbox_min=bbox_min,
        bbox_max=bbox_max,
        mean_score=float(means[best]),
    )
