"""Turning per-voxel query scores into things a person reads: heat colours and the top-scoring region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Viridis end points (as RayFronts' query heat): low = dark purple, high = yellow.
_HEAT_LOW = np.array([68, 1, 84], dtype=np.float64)
_HEAT_HIGH = np.array([253, 231, 37], dtype=np.float64)


def heat_colors(scores: np.ndarray) -> np.ndarray:
    """(N,) scores -> (N, 3) uint8 colours, min-max normalised, ramp from purple (low) to yellow (high)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    lo, hi = float(np.min(scores)), float(np.max(scores))
    t = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return np.round(_HEAT_LOW + t[:, None] * (_HEAT_HIGH - _HEAT_LOW)).astype(np.uint8)


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
