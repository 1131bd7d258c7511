"""``ovmap map``, ``ovmap demo``, ``ovmap query`` and ``ovmap export``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ovmap.commands.common import answer_queries, map_from_cfg


def run_map(cfg: Any) -> None:
    _, _, voxel_map, stats = map_from_cfg(cfg)
    out = Path(cfg.out_dir) / "map.npz"
    voxel_map.save(out)
    print(
        f"mapped {stats.frames} frames ({stats.frames_skipped} skipped) into {len(voxel_map)} voxels "
        f"in {stats.seconds_total:.1f} s ({stats.frames_per_second:.1f} frames/s)"
    )
    print(f"wrote {out}")


def run_demo(cfg: Any) -> None:
    t0 = time.perf_counter()
    dataset, encoder, voxel_map, stats = map_from_cfg(cfg)
    out_dir = Path(cfg.out_dir)
    map_path = out_dir / "map.npz"
    voxel_map.save(map_path)
    cloud = out_dir / "map_rgb.ply"
    voxel_map.export_ply(cloud)
    lines = answer_queries(voxel_map, list(cfg.queries), out_dir, cfg.region_margin)
    print()
    print("ovmap demo")
    print(f"  scene      : {dataset.scene_name} ({len(dataset)} frames, {len(dataset.class_names) - 1} classes)")
    print(f"  encoder    : {encoder.name} ({voxel_map.mode} space)")
    print(
        f"  map        : {len(voxel_map)} voxels of {voxel_map.voxel_size:.3f} m from {stats.frames} frames "
        f"({stats.frames_skipped} skipped), {stats.frames_per_second:.1f} frames/s"
    )
    print(f"  map file   : {map_path}")
    print(f"  RGB cloud  : {cloud}")
    print("  queries (PLY coloured by similarity, purple = low, yellow = high):")
    for line in lines:
        print(line)
    print(f"  total time : {time.perf_counter() - t0:.1f} s")
    print(f'next: ovmap query map={map_path} "a lamp" "somewhere to put books"')


def run_query(cfg: Any) -> None:
    from ovmap.pipeline import load_map

    texts = list(cfg.texts)
    if not texts:
        raise ValueError('no query given: ovmap query map=<file> "a chair" "a place to sleep"')
    voxel_map = load_map(cfg.map, cfg.device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.map).parent / "queries"
    lines = answer_queries(voxel_map, texts, out_dir, cfg.region_margin, cfg.softmax_temperature)
    print(f"{len(voxel_map)} voxels in {cfg.map}")
    for line in lines:
        print(line)


def run_export(cfg: Any) -> None:
    from ovmap.mapping import VoxelMap

    voxel_map = VoxelMap.load(cfg.map)
    voxel_map.export_ply(cfg.out)
    print(f"wrote {cfg.out} ({len(voxel_map)} points)")
