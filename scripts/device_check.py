#!/usr/bin/env python
"""GPU figures of ovmap, one section at a time (driven by ``scripts/device_check.sh``, which also runs the CUDA tests).

Sections (each writes one JSON file and prints one line; the shell script gives each its own timeout):

* ``fusion``: ``VoxelMap.integrate`` at 640x480, D = 1152 features on a 30x40 patch grid, 1 cm voxels, frames that
  each add fresh surface, until the map holds ``--voxels`` (default 1 M): median / p95 / max ms per frame (CUDA
  events, no per-frame host sync), achieved GB/s (bytes of map rows read and written per frame, a lower bound), peak
  GPU memory and the map's own bytes.
* ``radseg``: RADSeg at C-RADIOv3-B size with random weights, 480x640, ``encode_image`` in float32, bfloat16 and
  bfloat16 + ``torch.compile`` (all blocks but the last): median ms per frame.
* ``online``: end to end, the built-in synthetic room resized to 480x640 through ``build_map`` with that RADSeg in
  bfloat16: frames/s, with the encoder / fusion split.
* ``eval``: the 3D evaluator's kNN vote on the device, 10^6 GT voxels vs 3*10^5 map voxels, k = 5: seconds.
* ``table``: reads the JSON files of a folder and prints one table against the targets (map update <= 5 ms/frame,
  RADSeg-B bf16 <= 30 ms/frame, end to end >= 15 frames/s).

``--device cpu --quick`` runs every section small on a CPU (how the script is kept working without a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGETS = {"fusion_ms": 5.0, "radseg_bf16_ms": 30.0, "online_fps": 15.0}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], Any], runs: int, device: str) -> float:
    """``bench_encoders.time_call`` after one warm-up call (which also triggers compilation)."""
    from bench_encoders import time_call

    fn()
    return time_call(fn, runs, device)


def section_fusion(opts: argparse.Namespace) -> dict[str, Any]:
    from ovmap.mapping import VoxelMap

    dev, dim = opts.device, 1152
    H, W, h, w = (120, 160, 8, 10) if opts.quick else (480, 640, 30, 40)
    target = 20_000 if opts.quick else opts.voxels
    K = torch.tensor([[W * 0.9, 0, W / 2], [0, W * 0.9, H / 2], [0, 0, 1]], dtype=torch.float32, device=dev)
    vm = VoxelMap(voxel_size=0.01, feature_dim=dim, device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(dim, h, w, generator=g).to(dev)
    yy, xx = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    depth = (2.0 + 0.3 * torch.sin(xx / 37.0) * torch.cos(yy / 23.0)).float()[None]
    starts, ends, new_rows, rows = [], [], [], []
    frame = 0
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    while len(vm) < target and frame < 2000:
        pose = torch.eye(4, device=dev)
        pose[0, 3] = 3.0 * frame  # each frame looks at fresh surface
        if dev.startswith("cuda"):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            info = vm.integrate(depth, pose, K, feats)
            e.record()
            starts.append(s)
            ends.append(e)
        else:
            t0 = time.perf_counter()
            info = vm.integrate(depth, pose, K, feats)
            ends.append((time.perf_counter() - t0) * 1e3)
        new_rows.append(int(info.get("num_new_voxels", 0)))
        rows.append(int(info.get("num_voxels_in_frame", 0)))
        frame += 1
    sync(dev)
    wall = time.perf_counter() - t_start
    ms = [s.elapsed_time(e) for s, e in zip(starts, ends)] if dev.startswith("cuda") else list(ends)
    bytes_per_row = dim * 4
    # new rows written once; existing rows read and written; the frame's features read once per touched row
    moved = [(n * 1 + (r - n) * 2 + r) * bytes_per_row for n, r in zip(new_rows, rows)]
    gbps = [b / (t * 1e-3) / 1e9 for b, t in zip(moved, ms) if t > 0]
    out = {
        "frames": frame, "voxels": len(vm), "wall_s": wall,
        "ms_median": statistics.median(ms), "ms_p95": float(np.percentile(ms, 95)), "ms_max": max(ms),
        "gbps_median": statistics.median(gbps) if gbps else None,
        "map_bytes": len(vm) * (bytes_per_row + 4 * 8),
    }
    if dev.startswith("cuda"):
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _radseg(device: str, dtype: str, quick: bool) -> Any:
    from bench_encoders import random_radio_checkpoint

    from ovmap.encoders.radseg import RADSegEncoder

    ckpt = random_radio_checkpoint(embed=64, depth=2, heads=2, head_hidden=64, lang_dim=64, sam_dim=32) if quick \
        else random_radio_checkpoint()
    return RADSegEncoder(checkpoint=ckpt, device=device, dtype=dtype)


def section_radseg(opts: argparse.Namespace) -> dict[str, Any]:
    from bench_encoders import compile_blocks, synthetic_image

    H, W = (120, 160) if opts.quick else (480, 640)
    rgb = synthetic_image(H, W, opts.device)
    runs = 2 if opts.quick else 20
    out: dict[str, Any] = {"size": f"{H}x{W}"}
    for dtype in ("float32", "bfloat16"):
        enc = _radseg(opts.device, dtype, opts.quick)
        with torch.no_grad():
            out[f"{dtype}_ms"] = _median_ms(lambda: enc.encode_image(rgb), runs, opts.device)
    if not opts.no_compile:
        enc = _radseg(opts.device, "bfloat16", opts.quick)
        compile_blocks(enc)
        with torch.no_grad():
            out["bfloat16_compile_ms"] = _median_ms(lambda: enc.encode_image(rgb), runs, opts.device)
    return out


def section_online(opts: argparse.Namespace) -> dict[str, Any]:
    from ovmap.datasets import build_dataset
    from ovmap.pipeline import build_map

    scene = build_dataset("synthetic", preset="test") if opts.quick else \
        build_dataset("synthetic", preset="demo", height=480, width=640)
    enc = _radseg(opts.device, "bfloat16", opts.quick)
    build_map([scene[0]], enc, voxel_size=0.05, progress=False)  # warm-up
    sync(opts.device)
    t0 = time.perf_counter()
    vm, stats = build_map(scene, enc, voxel_size=0.05, progress=False)
    sync(opts.device)
    wall = time.perf_counter() - t0
    return {"frames": stats.frames, "frame_hw": list(scene[0]["depth"].shape[-2:]), "fps": stats.frames / wall,
            "seconds_encoder": stats.seconds_encoder, "seconds_fusion": stats.seconds_fusion, "voxels": len(vm)}


def section_eval(opts: argparse.Namespace) -> dict[str, Any]:
    from ovmap.eval3d.knn import knn_vote

    n_gt, n_map = (20_000, 6_000) if opts.quick else (1_000_000, 300_000)
    rng = np.random.default_rng(0)
    side = int(round(n_map ** (1 / 3) * 1.6))
    map_keys = np.unique(rng.integers(0, side, size=(n_map * 2, 3)), axis=0)[:n_map]
    gt_keys = rng.integers(0, side, size=(n_gt, 3))
    map_centers = (map_keys * 0.05).astype(np.float32)
    gt_centers = (gt_keys * 0.05).astype(np.float32)
    labels = rng.integers(1, 102, size=len(map_keys))
    t0 = time.perf_counter()
    knn_vote(gt_centers, map_centers, labels, k=5, backend="torch", device=opts.device)
    sync(opts.device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn_vote(gt_centers, map_centers, labels, k=5, backend="torch", device=opts.device)
    sync(opts.device)
    return {"gt_voxels": n_gt, "map_voxels": len(map_keys), "seconds": time.perf_counter() - t0,
            "seconds_first": first}


def table(folder: Path) -> str:
    def load(name: str) -> dict[str, Any]:
        p = folder / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    f, r, o, e, t = load("fusion"), load("radseg"), load("online"), load("eval"), load("pytest")

    def fmt(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [
        ("CUDA tests", t.get("summary", "not run"), "all pass"),
        ("map update, 640x480, D=1152, to 1 M voxels (median / p95 / max ms)",
         f"{fmt(f.get('ms_median'), '.2f')} / {fmt(f.get('ms_p95'), '.2f')} / {fmt(f.get('ms_max'), '.2f')}",
         f"<= {TARGETS['fusion_ms']} ms"),
        ("map update achieved GB/s (lower bound)", fmt(f.get("gbps_median")), ""),
        ("peak GPU memory / map bytes (GiB)",
         f"{fmt((f.get('peak_gpu_bytes') or 0) / 2**30, '.2f')} / {fmt((f.get('map_bytes') or 0) / 2**30, '.2f')}", ""),
        ("RADSeg-B 480x640 fp32 (ms)", fmt(r.get("float32_ms")), ""),
        ("RADSeg-B 480x640 bf16 (ms)", fmt(r.get("bfloat16_ms")), f"<= {TARGETS['radseg_bf16_ms']} ms"),
        ("RADSeg-B 480x640 bf16 + torch.compile (ms)", fmt(r.get("bfloat16_compile_ms")), ""),
        ("end to end RADSeg bf16 + map (frames/s)", fmt(o.get("fps")), f">= {TARGETS['online_fps']}"),
        ("evaluator kNN vote, 1e6 GT vs 3e5 map, k=5 (s)", fmt(e.get("seconds"), ".3f"), ""),
    ]
    lines = ["| check | result | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


SECTIONS = {"fusion": section_fusion, "radseg": section_radseg, "online": section_online, "eval": section_eval}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=[*SECTIONS, "table"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of the script itself)")
    p.add_argument("--voxels", type=int, default=1_000_000)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--dir", type=Path, default=REPO / "outputs" / "device_check", help="JSON folder")
    opts = p.parse_args(argv)
    opts.dir.mkdir(parents=True, exist_ok=True)
    if opts.section == "table":
        text = table(opts.dir)
        print(text)
        (opts.dir / "table.md").write_text(text + "\n", encoding="utf-8")
        summary = {n: json.loads((opts.dir / f"{n}.json").read_text())
                   for n in [*SECTIONS, "pytest"] if (opts.dir / f"{n}.json").is_file()}
        (opts.dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return 0
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device_check: {opts.section}: CUDA is not available (use --device cpu --quick for a smoke run)",
              file=sys.stderr)
        return 2
    result = SECTIONS[opts.section](opts)
    result["device"] = torch.cuda.get_device_name() if opts.device.startswith("cuda") else "cpu"
    (opts.dir / f"{opts.section}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{opts.section}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
