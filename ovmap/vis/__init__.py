"""Seeing the map: the rerun live view, top-down query images and colourings.

This package owns:
    * :class:`RerunVisualizer` (``rerun_vis.py``): logs a mapping run (camera, images, PCA feature colours,
      the voxel map coloured four ways, query heat, a ``frame`` timeline) to a ``.rrd`` file, a served web
      viewer, a running viewer or a spawned one (``mode = save | serve | connect | spawn``; spawn falls back to save
      without a display);
    * :func:`build_visualizer`: the same from a ``vis`` config (``ovmap/configs/vis/*.yaml``);
    * ``images.py``: top-down query heat PNGs and segmentation overlays (matplotlib, headless);
    * ``colors.py`` / ``labels.py``: class palette, PCA colours, hit heat, per-voxel labels.

Typical usage example:

    >>> from ovmap.vis import RerunVisualizer  # doctest: +SKIP
    >>> vis = RerunVisualizer(mode="save", save_path="out/recording.rrd")  # doctest: +SKIP
    >>> voxel_map, _ = build_map(dataset, encoder, on_frame=vis.on_frame)  # doctest: +SKIP
    >>> vis.log_map(voxel_map)  # doctest: +SKIP
    >>> vis.log_queries(voxel_map, voxel_map.query(["a chair"]))  # doctest: +SKIP
    >>> vis.close()  # doctest: +SKIP

See README.md in this folder for the entity layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ovmap.vis.rerun_vis import RerunVisualizer

__all__ = ["MODES", "RerunVisualizer", "build_visualizer", "has_display", "viewer_url"]

_LAZY = ("MODES", "RerunVisualizer", "has_display", "viewer_url")


def __getattr__(name: str) -> Any:
    """The rerun names are imported on first use: ``ovmap.vis.colors`` users do not pay for rerun/open3d."""
    if name in _LAZY:
        from ovmap.vis import rerun_vis

        return getattr(rerun_vis, name)
    raise AttributeError(f"module 'ovmap.vis' has no attribute '{name}'")

# keys of a vis config that are not RerunVisualizer arguments (used by the commands)
_COMMAND_KEYS = ("name", "serve_seconds")


def build_visualizer(cfg: Any, class_names: list[str] | None = None) -> RerunVisualizer | None:
    """A visualiser from a ``vis`` config node or dict: ``name: none`` -> None, ``rerun`` -> RerunVisualizer.

    Args:
        cfg: the ``vis`` group (OmegaConf node or dict), e.g. ``{"name": "rerun", "mode": "save"}``.
        class_names: class table for label colours (index 0 = ignore); None = from the map.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg)
    name = cfg.get("name", "none")
    if name in (None, "none"):
        return None
    if name != "rerun":
        raise ValueError(f"unknown visualiser '{name}': use vis=rerun or vis=none")
    from ovmap.vis.rerun_vis import RerunVisualizer

    kwargs = {k: v for k, v in cfg.items() if k not in _COMMAND_KEYS}
    if class_names is not None:
        kwargs["class_names"] = class_names
    return RerunVisualizer(**kwargs)


def finish_visualizer(
    vis: RerunVisualizer | None,
    voxel_map: Any,
    query_texts: list[str] | None = None,
    serve_seconds: float | None = None,
) -> None:
    """End of a command's run: log the final map (and query heat), say where it went, serve if asked, close.

    Args:
        vis: the visualiser (None = nothing to do).
        voxel_map: the final map.
        query_texts: queries to log as heat clouds (``world/queries/<slug>``).
        serve_seconds: ``serve`` mode: how long to keep the viewer up (None = until Ctrl-C).
    """
    if vis is None:
        return
    try:
        vis.log_map(voxel_map)
        if query_texts and len(voxel_map):
            vis.log_queries(voxel_map, voxel_map.query(list(query_texts)))
        print(vis.describe(), flush=True)
        vis.finish(serve_seconds)
    finally:
        vis.close()
