"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020): the one home of the refinement SC-CLIP and Talk2DINO
run on their per-pixel logits (``baselines.md`` §6.2 / §6.4, golden READMEs K7 / Q9).

For a guide image I (B, C_I, H, W) and dilations d₁…d_n, every pixel p has 8 neighbours per dilation (the 3×3 ring
at distance d, replicate padding), 8·n in all. The affinity to neighbour q is

    a(p, q) = mean over colour channels of −|I(p) − I(q)| / (1e-8 + 0.1·σ(p)),

with σ(p) the unbiased standard deviation of the 9·n samples (each dilation's 3×3 window, centre included), then a
softmax over the 8·n neighbours. One step replaces the mask M (B, K, H, W) by Σ_q softmax(a)(p, q)·M(q) (the centre
itself is not a neighbour). The affinities depend on the image only, so they are computed once.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: (dy, dx) of the 8 ring neighbours in a 3×3 window (unit dilation), row-major without the centre.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_WINDOW = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(x: Tensor, offsets: Sequence[tuple[int, int]], dilations: Sequence[int]) -> Tensor:
    """x (B, K, H, W) sampled at p + d·(dy, dx) with replicate padding: (B, K, len(dilations)·len(offsets), H, W)."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        xp = F.pad(x, [d, d, d, d], mode="replicate")
        for dy, dx in offsets:
            out.append(xp[..., d + d * dy:d + d * dy + h, d + d * dx:d + d * dx + w])
    return torch.stack(out, dim=2)


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights (B, 1, 8·n, H, W) of a guide image (B, C_I, H, W) (softmax over the 8·n neighbours)."""
    image = image.float()
    std = _shifted(image, _WINDOW, dilations).std(dim=2, keepdim=True)  # (B, C_I, 1, H, W), unbiased
    diff = (image[:, :, None] - _shifted(image, _RING, dilations)).abs()  # (B, C_I, 8n, H, W)
    aff = (-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True)
    return aff.softmax(dim=2)


def pamr(image: Tensor, mask: Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Refine ``mask`` (B, K, H, W) with ``steps`` PAMR iterations guided by ``image`` (B, C_I, H, W).

    The mask is resized bilinearly (align_corners=True) to the image size first when the sizes differ, as the
    reference does. ``steps`` = 0 returns the mask unchanged.
    """
    if steps < 0:
        raise ValueError(f"pamr steps must be >= 0, got {steps}")
    if not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"pamr dilations must be positive integers, got {list(dilations)}")
    if steps == 0:
        return mask
    if mask.shape[-2:] != image.shape[-2:]:
        mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    dil = [int(d) for d in dilations]
    aff = pamr_affinity(image, dil).to(mask.dtype)
    h, w = mask.shape[-2:]
    for _ in range(int(steps)):  # accumulate neighbour by neighbour: memory O(K·H·W), not O(8n·K·H·W)
        out = torch.zeros_like(mask)
        i = 0
        for d in dil:
            mp = F.pad(mask, [d, d, d, d], mode="replicate")
            for dy, dx in _RING:
                out += mp[..., d + d * dy:d + d * dy + h, d + d * dx:d + d * dx + w] * aff[:, :, i]
                i += 1
        mask = out
    return mask


__all__ = ["pamr", "pamr_affinity"]
