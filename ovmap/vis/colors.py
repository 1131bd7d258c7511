"""Colourings shared by the live viewer and the PNG outputs: class palettes, PCA colours of features, heat."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from torch import Tensor

__all__ = ["PCAColorizer", "heat_colors", "label_palette", "log_hit_colors"]

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


# ids 1..20: the distinct hues of matplotlib's tab20 (strong shades first, then the light ones)
_BASE = [
    "1f77b4",
    "ff7f0e",
    "2ca02c",
    "d62728",
    "9467bd",
    "8c564b",
    "e377c2",
    "7f7f7f",
    "bcbd22",
    "17becf",
    "aec7e8",
    "ffbb78",
    "98df8a",
    "ff9896",
    "c5b0d5",
    "c49c94",
    "f7b6d2",
    "c7c7c7",
    "dbdb8d",
    "9edae5",
]


def label_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, one per class id; id 0 (ignore) is black.

    Ids 1..20 take the tab20 colours; further ids get golden-ratio hues. The same id always gets the same
    colour, whatever ``num_classes`` is, so the viewer, the overlay PNGs and the PLY exports agree.
    """
    colors = np.zeros((max(int(num_classes), 0), 3), dtype=np.uint8)
    for i in range(1, len(colors)):
        if i <= len(_BASE):
            colors[i] = [int(_BASE[i - 1][k : k + 2], 16) for k in (0, 2, 4)]
            continue
        hue = (i * 0.618033988749895) % 1.0
        val = 0.95 - 0.25 * (i % 2)
        colors[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.8, val)) * 255)
    return colors


def log_hit_colors(hits: np.ndarray | Tensor) -> np.ndarray:
    """(N,) pixel-hit weights -> (N, 3) uint8 heat of log2(hits) (purple = few, yellow = many)."""
    hits = torch.as_tensor(hits).detach().float().cpu().numpy()
    return heat_colors(np.log2(np.maximum(hits, 1.0)))


class PCAColorizer:
    """Features -> RGB by a fixed 3-component PCA.

    The projection is fitted once, on the first batch seen (e.g. the first frame's feature map), and never
    refitted, so a colour keeps its meaning over time. Each of the three components is scaled to [0, 1] by a
    **running** min/max over everything coloured so far (the range only widens), as in RayFronts.

    Args:
        max_fit_samples: rows sampled (deterministically) from the first batch to fit the PCA.
    """

    def __init__(self, max_fit_samples: int = 20000) -> None:
        self.max_fit_samples = int(max_fit_samples)
        self.mean: Tensor | None = None  # (C,)
        self.components: Tensor | None = None  # (C, 3)
        self.lo: Tensor | None = None  # (3,)
        self.hi: Tensor | None = None  # (3,)

    @property
    def fitted(self) -> bool:
        return self.components is not None

    def fit(self, feats: Tensor) -> None:
        """Fit the projection on (N, C) features."""
        x = feats.detach().float().cpu().reshape(-1, feats.shape[-1])
        x = x[torch.isfinite(x).all(dim=1)]
        if x.shape[0] > self.max_fit_samples:
            step = x.shape[0] / self.max_fit_samples
            x = x[(torch.arange(self.max_fit_samples) * step).long()]
        channels = x.shape[1]
        self.mean = x.mean(dim=0) if x.shape[0] else torch.zeros(channels)
        centred = x - self.mean
        if x.shape[0] >= 2:
            # right singular vectors = principal axes; sign fixed so the largest |loading| is positive
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            comps = vh[:3].t()
        else:
            comps = torch.eye(channels)[:, :3]
        if comps.shape[1] < 3:  # fewer than 3 channels or samples: pad with zero components
            comps = torch.cat([comps, torch.zeros(channels, 3 - comps.shape[1])], dim=1)
        signs = torch.sign(comps.gather(0, comps.abs().argmax(dim=0, keepdim=True)))
        self.components = comps * torch.where(signs == 0, torch.ones_like(signs), signs)

    def __call__(self, feats: Tensor) -> np.ndarray:
        """(..., C) features -> (..., 3) uint8 colours (fits on the first call, then updates the range)."""
        shape = feats.shape[:-1]
        x = feats.detach().float().cpu().reshape(-1, feats.shape[-1])
        if not self.fitted:
            self.fit(x)
        assert self.mean is not None and self.components is not None
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"PCA was fitted on {self.mean.shape[0]} channels, got {x.shape[1]}")
        proj = torch.nan_to_num((x - self.mean) @ self.components)
        if proj.shape[0]:
            lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
            self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.lo is None or self.hi is None:
            return np.zeros((*shape, 3), dtype=np.uint8)
        span = (self.hi - self.lo).clamp(min=1e-12)
        rgb = ((proj - self.lo) / span).clamp(0, 1)
        return (rgb * 255).round().to(torch.uint8).numpy().reshape(*shape, 3)
