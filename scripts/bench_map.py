#!/usr/bin/env python
"""Benchmark ovmap's incremental voxel-map fusion against a "re-voxelise everything" baseline.

A camera random-walks over a large procedural height-field surface, looking down, so that the map keeps growing
(>= 1 M voxels at 1 cm by default). Every frame is a 640x480 depth image with a random (D, 30, 40) feature map.
ovmap integrates each frame incrementally; at a few map sizes the same frame is also merged with two baselines in
the same process:

* ``revox``: reference-style merge of the frame's per-voxel sums: multiply the map rows by their weights,
  concatenate with the frame rows, ``torch.unique`` over all keys, scatter-sum (``index_add_``), divide;
* ``reference``: the full reference path: upsample the feature map to 640x480 (``F.interpolate``), gather per
  pixel, concatenate with the weighted map rows, ``unique`` over all keys, scatter-sum, divide.

Both baselines' results are checked against ovmap's map after the frame (max abs difference on sampled rows).

Usage:
    python scripts/bench_map.py                       # CPU, D = 768 and 1152
    python scripts/bench_map.py --device cuda --dims 1152 --target-voxels 2e6
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import ovmap  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovmap.mapping import VoxelMap, backproject, group_keys, lift_to_voxels, voxel_keys, voxel_patch_weights


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bump(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Procedural terrain height (metres)."""
    return (
        0.15 * torch.sin(1.3 * x) * torch.cos(0.9 * y)
        + 0.08 * torch.sin(3.1 * x + 2.0 * y)
        + 0.03 * torch.cos(7.0 * y - x)
    )


class Walker:
    """Downward-looking camera random-walking over the terrain; renders z-depth by fixed-point ray marching."""

    def __init__(self, H: int, W: int, device: torch.device, step: float, seed: int) -> None:
        self.H, self.W, self.device, self.step = H, W, device, step
        self.K = torch.tensor(
            [[525.0, 0.0, (W - 1) / 2], [0.0, 525.0, (H - 1) / 2], [0.0, 0.0, 1.0]], device=device
        )
        v, u = torch.meshgrid(
            torch.arange(H, dtype=torch.float32, device=device),
            torch.arange(W, dtype=torch.float32, device=device),
            indexing="ij",
        )
        self.rays_c = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3) @ torch.linalg.inv(self.K).T
        self.g = torch.Generator().manual_seed(seed)
        self.pos = torch.tensor([0.0, 0.0, 2.5])
        self.heading = 0.0

    def next_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.heading += float(torch.randn(1, generator=self.g)) * 0.6
        self.pos = self.pos + torch.tensor([math.cos(self.heading), math.sin(self.heading), 0.0]) * self.step
        yaw = float(torch.rand(1, generator=self.g)) * 2 * math.pi
        tilt = float(torch.randn(1, generator=self.g)) * 0.1
        # camera x -> world x, y -> world -y, z -> world -z (looking down), then yaw about world z and a tilt
        base = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
        cz, sz = math.cos(yaw), math.sin(yaw)
        rz = torch.tensor([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        ct, st = math.cos(tilt), math.sin(tilt)
        rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, ct, -st], [0.0, st, ct]])
        pose = torch.eye(4)
        pose[:3, :3] = rz @ rx @ base
        pose[:3, 3] = self.pos
        pose = pose.to(self.device)
        rays_w = self.rays_c @ pose[:3, :3].T  # camera z-component 1 -> t is the z-depth
        o = pose[:3, 3]
        t = (o[2] / -rays_w[:, 2]).clamp(min=0.1)
        for _ in range(4):
            p = o + t[:, None] * rays_w
            t = ((o[2] - bump(p[:, 0], p[:, 1])) / -rays_w[:, 2]).clamp(min=0.1)
        return t.reshape(1, self.H, self.W), pose


def revoxelise(map_keys, map_mean, map_w, new_keys, new_sums, new_w):
    """Reference-style weighted merge: concat weighted rows, unique over all keys, scatter-sum, divide."""
    keys = torch.cat([map_keys, new_keys])
    vals = torch.cat([map_mean.float() * map_w[:, None], new_sums])
    w = torch.cat([map_w, new_w])
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    out = torch.zeros(uniq.shape[0], vals.shape[1], dtype=torch.float32, device=vals.device).index_add_(
        0, inv, vals
    )
    del vals
    ws = torch.zeros(uniq.shape[0], dtype=torch.float32, device=w.device).index_add_(0, inv, w)
    out /= ws[:, None]
    return uniq, out, ws


def bench_dim(args, D: int, device: torch.device) -> list[dict]:
    H, W, h, w = args.height, args.width, args.patch_h, args.patch_w
    walker = Walker(H, W, device, args.step, args.seed)
    vmap = VoxelMap(
        voxel_size=args.voxel_size, feature_dim=D, device=device, feature_dtype=args.feature_dtype
    )
    vmap._ensure_capacity(int(args.target_voxels * 1.15))  # avoid a doubling at the end of the run (memory)
    marks = sorted(float(m) * 1e6 for m in args.baseline_at)
    g = torch.Generator(device=device).manual_seed(args.seed)
    rows = []
    frame = 0
    while len(vmap) < args.target_voxels and frame < args.max_frames:
        depth, pose = walker.next_frame()
        feats = torch.randn(D, h, w, device=device, generator=g)
        n_before = len(vmap)
        run_baseline = bool(marks) and n_before >= marks[0]
        if run_baseline:
            while marks and n_before >= marks[0]:
                marks.pop(0)

        # --- ovmap: identical steps to VoxelMap.integrate, timed separately
        sync(device)
        t0 = time.perf_counter()
        xyz, pix = backproject(depth[None], walker.K, pose[None])
        keys = voxel_keys(xyz, args.voxel_size)
        uniq, inv, counts = group_keys(keys)
        wm = voxel_patch_weights(inv, uniq.shape[0], pix, H, W, h, w)
        sums = lift_to_voxels(wm, feats)
        sync(device)
        t1 = time.perf_counter()
        base, checks = {}, []
        if run_baseline:  # baselines see the same map state and frame, before ovmap merges it
            base, checks = run_baselines(args, vmap, depth, feats, keys, pix, uniq, sums, counts)
            sync(device)
            t1b = time.perf_counter()
        else:
            t1b = t1
        num_new = vmap._merge(uniq, counts, sums, None)
        vmap.frames_integrated += 1
        sync(device)
        t2 = time.perf_counter()
        row = {
            "D": D,
            "frame": frame,
            "map_before": n_before,
            "frame_voxels": int(uniq.shape[0]),
            "new": num_new,
            "reduce_ms": (t1 - t0) * 1e3,
            "merge_ms": (t2 - t1b) * 1e3,
            **base,
        }
        if checks:
            row.update(check_against_map(vmap, checks))
            del checks
        rows.append(row)
        if args.verbose or run_baseline:
            print(
                f"  D={D} frame {frame:3d}: map {n_before:>9,d} -> {len(vmap):>9,d} voxels, frame {row['frame_voxels']:,d}"
                f" ({num_new:,d} new), reduce {row['reduce_ms']:.0f} ms, merge {row['merge_ms']:.0f} ms",
                flush=True,
            )
        frame += 1
    return rows


def run_baselines(args, vmap, depth, feats, keys, pix, uniq, sums, counts) -> tuple[dict, list]:
    """Time both baselines on the map state before this frame; return timings and sampled results to check."""
    device = vmap.device
    n = len(vmap)
    rows_sorted = vmap._sorted_rows[:n]
    map_keys = vmap._sorted_keys[:n]
    map_mean = vmap._feat[rows_sorted]  # the baseline keeps its map in float32 (as the reference does)
    map_w = vmap._hits[rows_sorted]
    out: dict = {"revox_ms": float("nan"), "revox_err": float("nan")}
    checks = []
    sample = None
    if 4 * feats.shape[0] * 2 * (n + uniq.shape[0]) / 2**30 <= args.max_baseline_gb:
        sync(device)
        t0 = time.perf_counter()
        rk, rm, _ = revoxelise(map_keys, map_mean, map_w, uniq, sums, counts)
        sync(device)
        out["revox_ms"] = (time.perf_counter() - t0) * 1e3
        sample = torch.randint(0, rk.shape[0], (20000,), device=device)
        checks.append(("revox_err", rk[sample], rm[sample]))
        del rk, rm
    bytes_needed = 4 * feats.shape[0] * (2 * (n + pix.shape[0]) + depth.numel())
    if bytes_needed / 2**30 <= args.max_baseline_gb:
        sync(device)
        t0 = time.perf_counter()
        up = F.interpolate(feats[None], size=depth.shape[-2:], mode="bilinear", align_corners=False)[0]
        per_pixel = up.reshape(feats.shape[0], -1)[:, pix].t()
        del up
        ones = torch.ones(pix.shape[0], dtype=torch.float32, device=device)
        rk, rm, _ = revoxelise(map_keys, map_mean, map_w, keys, per_pixel, ones)
        sync(device)
        out["reference_ms"] = (time.perf_counter() - t0) * 1e3
        if sample is None:
            sample = torch.randint(0, rk.shape[0], (20000,), device=device)
        checks.append(("reference_err", rk[sample], rm[sample]))
        del rk, rm, per_pixel
    else:
        out["reference_ms"] = float("nan")
        out["reference_err"] = float("nan")
    return out, checks


def check_against_map(vmap, checks) -> dict:
    """Max abs difference between baseline rows and ovmap's rows for the same keys."""
    n = len(vmap)
    res = {}
    for name, k, m in checks:
        pos = torch.searchsorted(vmap._sorted_keys[:n], k)
        assert bool((vmap._sorted_keys[:n][pos] == k).all()), "baseline produced a voxel ovmap does not have"
        res[name] = float((vmap._feat[vmap._sorted_rows[pos]].float() - m).abs().max())
    return res


def _nanmax(*xs) -> float:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return max(vals) if vals else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dims", type=int, nargs="+", default=[768, 1152], help="feature dimensions D")
    p.add_argument("--voxel-size", type=float, default=0.01, help="metres")
    p.add_argument(
        "--target-voxels", type=float, default=1.05e6, help="stop when the map has this many voxels"
    )
    p.add_argument("--max-frames", type=int, default=400)
    p.add_argument(
        "--baseline-at", type=float, nargs="+", default=[0.1, 0.3, 0.6, 1.0], help="millions of voxels"
    )
    p.add_argument(
        "--max-baseline-gb",
        type=float,
        default=9.0,
        help="skip a baseline whose estimated extra memory (GiB) exceeds this",
    )
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--patch-h", type=int, default=30)
    p.add_argument("--patch-w", type=int, default=40)
    p.add_argument("--step", type=float, default=1.0, help="camera step per frame, metres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--window", type=int, default=3, help="ovmap timings: median over +-window frames")
    p.add_argument("--verbose", action="store_true", help="print every frame")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {device} ({name}), torch threads {torch.get_num_threads()}, "
        f"frames {args.width}x{args.height}, features {args.patch_w}x{args.patch_h}, voxel {args.voxel_size} m, "
        f"storage {args.feature_dtype}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    all_rows = []
    for D in args.dims:
        all_rows += bench_dim(args, D, device)
        torch.cuda.empty_cache() if device.type == "cuda" else None

    print()
    print(
        f"load average at the end: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs; > CPUs means contention)"
    )
    print(
        f"ovmap columns: median over the baseline frame and its neighbours (+-{args.window} frames) to damp noise; "
        "baselines: single run on the baseline frame"
    )
    hdr = (
        f"{'D':>5} {'map voxels':>11} {'frame vox':>9} {'new':>7} {'ovmap reduce':>12} {'ovmap merge':>11} "
        f"{'ovmap total':>11} {'revox merge':>11} {'merge ratio':>11} {'ref total':>10} {'total ratio':>11} "
        f"{'max|diff|':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in all_rows:
        if "revox_ms" not in r:
            continue
        near = [x for x in all_rows if x["D"] == r["D"] and abs(x["frame"] - r["frame"]) <= args.window]
        red = statistics.median(x["reduce_ms"] for x in near)
        mer = statistics.median(x["merge_ms"] for x in near)
        tot = statistics.median(x["reduce_ms"] + x["merge_ms"] for x in near)
        print(
            f"{r['D']:>5} {r['map_before']:>11,d} {r['frame_voxels']:>9,d} {r['new']:>7,d} "
            f"{red:>9.0f} ms {mer:>8.0f} ms {tot:>8.0f} ms {r['revox_ms']:>8.0f} ms "
            f"{r['revox_ms'] / mer:>10.1f}x {r['reference_ms']:>7.0f} ms "
            f"{r['reference_ms'] / tot:>10.1f}x {_nanmax(r.get('revox_err'), r.get('reference_err')):>9.1e}"
        )
    for D in args.dims:
        rs = [r for r in all_rows if r["D"] == D]
        tot = [r["reduce_ms"] + r["merge_ms"] for r in rs]
        print(
            f"D={D}: {len(rs)} frames, final map {rs[-1]['map_before'] + rs[-1]['new']:,d} voxels, ovmap per frame "
            f"mean {sum(tot) / len(tot):.0f} ms (merge mean {sum(r['merge_ms'] for r in rs) / len(rs):.0f} ms, "
            f"last {rs[-1]['merge_ms']:.0f} ms)"
        )
    print("revox = weighted map rows + frame per-voxel sums, unique over all keys, scatter-sum, divide;")
    print("ref total = reference path: full-resolution upsample + per-pixel rows re-voxelised with the map.")
    print("nan = baseline skipped: its estimated extra memory exceeds --max-baseline-gb.")


if __name__ == "__main__":
    main()
