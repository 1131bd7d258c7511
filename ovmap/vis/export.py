"""PLY export of a saved map coloured by RGB, class label, pixel hits or a query's similarity heat."""

from __future__ import annotations

import os

import numpy as np

from ovmap.vis.colors import heat_colors, label_palette, log_hit_colors
from ovmap.vis.labels import voxel_labels

COLORINGS = ("rgb", "label", "hits", "query")


def map_colors(
    voxel_map, color: str = "rgb", labels: list[str] | None = None, query: str | None = None
) -> np.ndarray:
    """(N, 3) uint8 colours of a map's voxels.

    Args:
        voxel_map: a :class:`~ovmap.mapping.VoxelMap` (with its encoder for ``query`` / feature-map ``label``).
        color: ``rgb`` (mean colour), ``label`` (class palette of :func:`ovmap.vis.labels.voxel_labels`),
            ``hits`` (heat of log2 pixel hits) or ``query`` (min-max similarity heat of ``query``).
        labels: class table for ``label`` on feature maps (index 0 = ignore); None = the encoder's.
        query: the text for ``query``.
    """
    if color == "rgb":
        return (voxel_map.rgb.detach().cpu().numpy().clip(0, 1) * 255).round().astype(np.uint8)
    if color == "hits":
        return log_hit_colors(voxel_map.hits)
    if color == "label":
        ids, names = voxel_labels(voxel_map, list(labels) if labels else None)
        return label_palette(len(names))[ids]
    if color == "query":
        if not query:
            raise ValueError("color=query needs the query text: add query='a chair'")
        return heat_colors(voxel_map.query([str(query)]).similarity[0].cpu().numpy())
    raise ValueError(f"color must be one of {', '.join(COLORINGS)}, got '{color}'")


def export_colored_ply(
    map_path: str | os.PathLike,
    out: str | os.PathLike,
    color: str = "rgb",
    labels: list[str] | None = None,
    query: str | None = None,
    device: str = "auto",
) -> int:
    """Load ``map_path`` (with its encoder when the colouring needs one), write ``out``; returns N points."""
    if color not in COLORINGS:
        raise ValueError(f"color must be one of {', '.join(COLORINGS)}, got '{color}'")
    if color in ("rgb", "hits"):
        from ovmap.mapping import VoxelMap

        voxel_map = VoxelMap.load(map_path)
    else:
        from ovmap.pipeline import open_map

        voxel_map = open_map(map_path, device)
    voxel_map.export_ply(out, colors=map_colors(voxel_map, color, labels, query))
    return len(voxel_map)
