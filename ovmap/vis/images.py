"""PNG outputs people look at: top-down query heat maps and segmentation overlays (matplotlib, no display).

Every top-down PNG carries its geometry in PNG text chunks, so a reader can map pixels back to metres:
``ovmap:axes_px`` = ``x0 y0 x1 y1`` (the map area in image pixels, top-left origin, exclusive ends) and
``ovmap:extent_m`` = ``xmin xmax ymin ymax`` (the world x/y range it shows; +x right, +y up).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ovmap.vis.colors import label_palette


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def topdown_grid(
    centers: np.ndarray, scores: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Max score per (x, y) voxel column: (H, W) float array (NaN = no voxel; row 0 = lowest y), its extent.

    Args:
        centers: (N, 3) voxel centres in metres (z up).
        scores: (N,) per-voxel scores.
        voxel_size: voxel edge in metres (one grid cell per voxel column).

    Returns:
        grid and ``(xmin, xmax, ymin, ymax)`` of the cell edges.
    """
    centers = np.asarray(centers, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if centers.shape[0] == 0:
        return np.full((1, 1), np.nan), (0.0, voxel_size, 0.0, voxel_size)
    # voxel centres lie on a lattice of spacing voxel_size: index columns relative to the smallest centre
    lo = centers[:, :2].min(axis=0)
    ij = np.round((centers[:, :2] - lo) / voxel_size).astype(np.int64)
    width, height = ij.max(axis=0) + 1
    grid = np.full((height, width), -np.inf)
    np.maximum.at(grid, (ij[:, 1], ij[:, 0]), scores)
    grid[np.isneginf(grid)] = np.nan
    x0, y0 = lo - voxel_size / 2
    return grid, (float(x0), float(x0 + width * voxel_size), float(y0), float(y0 + height * voxel_size))


def save_topdown_png(
    path: str | os.PathLike,
    centers: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    voxel_size: float,
    title: str = "",
    score_label: str = "cosine similarity",
    dpi: int = 100,
) -> Path:
    """Top-down orthographic image of a map: each pixel column coloured by its highest voxel score (viridis,
    min-max over the map), background white, with a colour bar and ``title`` on top.

    Returns:
        The written path.
    """
    plt = _pyplot()
    centers = (
        torch.as_tensor(centers).detach().cpu().numpy() if not isinstance(centers, np.ndarray) else centers
    )
    scores = torch.as_tensor(scores).detach().cpu().numpy() if not isinstance(scores, np.ndarray) else scores
    grid, extent = topdown_grid(centers, scores, voxel_size)
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    span_x, span_y = extent[1] - extent[0], extent[3] - extent[2]
    # map area about 6 inches on its long side, plus room for the colour bar and the title
    scale = 6.0 / max(span_x, span_y, 1e-6)
    map_w, map_h = max(span_x * scale, 1.5), max(span_y * scale, 1.5)
    fig_w, fig_h = map_w + 2.2, map_h + 1.3
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.8 / fig_w, 0.7 / fig_h, map_w / fig_w, map_h / fig_h))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        origin="lower",
        extent=extent,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        aspect="auto",
    )
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f'"{title}"' if title else "top-down view", fontsize=12)
    cax = fig.add_axes(((0.8 + map_w + 0.25) / fig_w, 0.7 / fig_h, 0.25 / fig_w, map_h / fig_h))
    fig.colorbar(im, cax=cax, label=f"max {score_label} in column")
    fig.canvas.draw()
    _, height_px = fig.canvas.get_width_height()
    bbox = ax.get_window_extent()
    axes_px = (bbox.x0, height_px - bbox.y1, bbox.x1, height_px - bbox.y0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path,
        dpi=dpi,
        metadata={
            "ovmap:axes_px": " ".join(f"{v:.2f}" for v in axes_px),
            "ovmap:extent_m": " ".join(f"{v:.6f}" for v in extent),
            "ovmap:score_range": f"{vmin:.6f} {vmax:.6f}",
        },
    )
    plt.close(fig)
    return path


def save_segmentation_overlay(
    path: str | os.PathLike,
    rgb: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    alpha: float = 0.5,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """The image with each pixel's class colour blended in (id 0 left as is), a legend of the classes present.

    Args:
        path: output PNG.
        rgb: (H, W, 3) uint8 image.
        labels: (H, W) integer class ids indexing ``class_names`` (0 = ignore / unlabelled).
        class_names: names by id.
        alpha: weight of the class colour.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    labels = np.asarray(labels).astype(np.int64)
    palette = label_palette(len(class_names))
    colour = palette[labels].astype(np.float32)
    blend = rgb.astype(np.float32)
    mask = labels > 0
    blend[mask] = (1 - alpha) * blend[mask] + alpha * colour[mask]
    height, width = labels.shape
    scale = 6.0 / max(height, width)
    img_w, img_h = max(width * scale, 2.0), max(height * scale, 2.0)
    fig_w = img_w + 2.6
    fig = plt.figure(figsize=(fig_w, img_h + 0.6), dpi=dpi)
    ax = fig.add_axes((0.1 / fig_w, 0.1 / (img_h + 0.6), img_w / fig_w, img_h / (img_h + 0.6)))
    ax.imshow(blend.clip(0, 255).astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=11)
    present, counts = np.unique(labels[mask], return_counts=True)
    order = present[np.argsort(-counts)]
    handles = [Patch(facecolor=palette[i] / 255.0, edgecolor="black", label=class_names[i]) for i in order]
    if handles:
        fig.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=((img_w + 0.25) / fig_w, 0.5),
            frameon=False,
            fontsize=9,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
