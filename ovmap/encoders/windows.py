"""Stitching per-window feature grids into one frame-level feature canvas (SC-CLIP, Talk2DINO)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def paste_window(acc: Tensor, count: Tensor, grid: Tensor, box: tuple[int, int, int, int],
                 image_hw: tuple[int, int]) -> None:
    """Add one window's feature grid to a frame canvas, in place.

    The window ``box = (y1, x1, y2, x2)`` in image pixels maps to canvas cells by rounding its corners scaled by
    canvas / image size (at least one cell per side); a grid of another size is resized bilinearly to those cells.

    Args:
        acc: (C, n_y, n_x) running sum of the canvas.
        count: (1, n_y, n_x) number of windows summed into each cell.
        grid: (C, h, w) the window's features.
        box: the window in image pixels.
        image_hw: (H, W) of the image the boxes refer to.
    """
    height, width = image_hw
    ny, nx = acc.shape[-2:]
    y1, x1, y2, x2 = box
    cy1, cx1 = round(y1 * ny / height), round(x1 * nx / width)
    cy2, cx2 = max(cy1 + 1, round(y2 * ny / height)), max(cx1 + 1, round(x2 * nx / width))
    if grid.shape[-2:] != (cy2 - cy1, cx2 - cx1):
        grid = F.interpolate(grid[None], size=(cy2 - cy1, cx2 - cx1), mode="bilinear", align_corners=False)[0]
    acc[:, cy1:cy2, cx1:cx2] += grid
    count[:, cy1:cy2, cx1:cx2] += 1


__all__ = ["paste_window"]
