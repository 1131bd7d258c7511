"""``ovmap view``: a saved map in the rerun viewer, with queries from the command line and stdin."""

from __future__ import annotations

import sys
from typing import Any

from ovmap.commands.common import fmt_vec


def _answer(vis: Any, voxel_map: Any, texts: list[str]) -> None:
    from ovmap.commands.common import check_queries
    from ovmap.regions import top_region

    check_queries(voxel_map, texts)
    result = voxel_map.query(texts)
    paths = vis.log_queries(voxel_map, result) if vis is not None else []
    keys = voxel_map.keys.cpu().numpy()
    for i, text in enumerate(texts):
        region = top_region(keys, result.similarity[i].cpu().numpy(), voxel_map.voxel_size)
        where = f" -> {paths[i]}" if paths else ""
        if region is None:
            print(f'  "{text}": the map is empty', flush=True)
        else:
            print(
                f'  "{text}": top region centroid {fmt_vec(region.centroid)} m, {region.num_voxels} voxels, '
                f"mean cos {region.mean_score:.3f}{where}",
                flush=True,
            )


def run_view(cfg: Any) -> None:
    from ovmap.pipeline import open_map
    from ovmap.vis import build_visualizer

    voxel_map = open_map(cfg.map, cfg.device)
    vis = build_visualizer(cfg.vis, class_names=list(cfg.labels) if cfg.labels else None)
    if vis is None:
        raise ValueError("ovmap view needs a viewer: use vis=rerun (vis.mode=save|serve|connect|spawn)")
    try:
        vis.set_time(0)
        vis.log_map(voxel_map)
        print(f"{len(voxel_map)} voxels ({voxel_map.mode} map, {voxel_map.voxel_size:.3f} m) from {cfg.map}")
        print(vis.describe(), flush=True)
        if cfg.queries:
            _answer(vis, voxel_map, list(cfg.queries))
            vis.show("queries: top")  # seen from outside, walls and ceiling would hide the heat inside
        if cfg.interactive:
            print("type a query and press Enter (empty line or Ctrl-D to finish)", flush=True)
            while True:
                print("query> ", end="", flush=True)
                line = sys.stdin.readline()
                text = line.strip()
                if not text:
                    print()
                    break
                try:
                    _answer(vis, voxel_map, [text])
                except ValueError as err:  # e.g. not a class name of a probability map
                    print(f"  error: {err}", flush=True)
        print(vis.describe(), flush=True)
        vis.finish(cfg.vis.get("serve_seconds"))
    finally:
        vis.close()
