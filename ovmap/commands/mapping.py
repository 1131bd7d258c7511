"""``ovmap map``, ``ovmap demo``, ``ovmap query`` and ``ovmap export``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ovmap.commands.common import answer_queries, map_from_cfg


def run_map(cfg: Any) -> None:
    from ovmap.vis import build_visualizer, finish_visualizer

    if cfg.get("online") or cfg.get("realtime"):
        return run_map_online(cfg)
    from ovmap.commands import LAUNCHED

    vis = build_visualizer(cfg.vis)
    out = Path(cfg.out_dir) / "map.npz"
    _, _, voxel_map, stats = map_from_cfg(cfg, on_frame=vis.on_frame if vis else None, partial_target=out)
    voxel_map.save(out)
    refused = "".join(f", {n} {kind.replace('_', ' ')}" for kind, n in stats.input_skips.items())
    print(
        f"mapped {stats.frames} frames ({stats.frames_skipped} skipped{refused}) into {len(voxel_map)} voxels "
        f"in {stats.seconds_total:.1f} s ({stats.frames_per_second:.1f} frames/s; first frame done "
        f"{stats.started_at + stats.seconds_to_first_frame - LAUNCHED:.2f} s after launch)"
    )
    print(f"wrote {out}")
    finish_visualizer(vis, voxel_map, serve_seconds=cfg.vis.get("serve_seconds"))


def run_map_online(cfg: Any) -> None:
    """``ovmap map ... online=true`` (recorded rate) or ``realtime=<Hz>``: replay into the online mapper."""
    from ovmap.commands.common import build_dataset_from_cfg, log, plain
    from ovmap.online import OnlineMapper, replay
    from ovmap.pipeline import make_encoder, resolve_device

    if cfg.get("vis") is not None and cfg.vis.get("name", "none") != "none":
        raise ValueError(f"vis={cfg.vis.name} is not available with online=true / realtime=; drop vis= or map offline")
    device = resolve_device(cfg.device)
    dataset = build_dataset_from_cfg(plain(cfg.dataset))
    encoder_cfg = plain(cfg.encoder)
    encoder = make_encoder(encoder_cfg["name"], encoder_cfg, dataset, device)
    mapping = plain(cfg.mapping)
    timestamps = None
    if not cfg.get("realtime"):
        ts = getattr(dataset, "timestamps", None)
        if ts is None:
            raise ValueError(
                f"dataset '{dataset.scene_name}' has no timestamps to replay at; give a rate instead: realtime=30"
            )
        timestamps = ts[dataset.raw_indices]
    class_names = dataset.class_names if mapping["mode"] == "probability" else None
    mapper = OnlineMapper(encoder, class_names=class_names, policy=cfg.online_policy,
                          queue_size=cfg.online_queue_size, **mapping)  # fmt: skip
    log.info("replaying %d frames of '%s' into the online mapper (%s, queue %d) with encoder '%s' on %s",
             len(dataset), dataset.scene_name, cfg.online_policy, cfg.online_queue_size, encoder.name, device)  # fmt: skip
    report = replay(dataset, mapper, rate_hz=cfg.get("realtime"), timestamps=timestamps,
                    prefetch=int(cfg.online_prefetch), progress=bool(cfg.progress))  # fmt: skip
    out = Path(cfg.out_dir) / "map.npz"
    mapper.voxel_map.save(out)
    print(report.format())
    print(f"{len(mapper.voxel_map)} voxels; wrote {out}")


def run_demo(cfg: Any) -> None:
    from ovmap.vis import build_visualizer, finish_visualizer

    t0 = time.perf_counter()
    vis = build_visualizer(cfg.vis)
    out_dir = Path(cfg.out_dir)
    map_path = out_dir / "map.npz"
    dataset, encoder, voxel_map, stats = map_from_cfg(cfg, on_frame=vis.on_frame if vis else None,
                                                      partial_target=map_path)
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
    print("  queries (PLY and top-down PNG coloured by similarity, purple = low, yellow = high):")
    for line in lines:
        print(line)
    print(f"  total time : {time.perf_counter() - t0:.1f} s")
    print(f'next: ovmap query map={map_path} "a lamp" "somewhere to put books"')
    finish_visualizer(vis, voxel_map, list(cfg.queries), serve_seconds=cfg.vis.get("serve_seconds"))


def run_query(cfg: Any) -> None:
    from ovmap.pipeline import open_map

    texts = list(cfg.texts)
    if not texts:
        raise ValueError('no query given: ovmap query map=<file> "a chair" "a place to sleep"')
    voxel_map = open_map(cfg.map, cfg.device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.map).parent / "queries"
    lines = answer_queries(voxel_map, texts, out_dir, cfg.region_margin, cfg.softmax_temperature)
    print(f"{len(voxel_map)} voxels in {cfg.map}")
    for line in lines:
        print(line)


def run_export(cfg: Any) -> None:
    from ovmap.vis.export import export_colored_ply

    n = export_colored_ply(cfg.map, cfg.out, color=cfg.color, labels=cfg.labels, query=cfg.query, device=cfg.device)
    print(f"wrote {cfg.out} ({n} points, coloured by {cfg.color})")
