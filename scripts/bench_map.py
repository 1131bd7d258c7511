#!/usr/bin/env python
"""Benchmark ovmap's VoxelMap fusion against the peer's merge strategy and the memory-bandwidth floor.

A camera random-walks over a large procedural height-field, looking down, so the map keeps growing (to >= 1 M
voxels at 1 cm by default). Every frame is a 640x480 depth image with a random (D, 30, 40) feature map and a
640x480 RGB image. For each feature dimension D, in one process:

1. **floor**: one ``index_add_`` of a frame's point features (H*W x D float32) into a 1 M x D tensor, measured
   before the run and every few frames during it (ratios use the floor measured near the same frames);
2. **ovmap**: ``VoxelMap.integrate`` of every frame (the public API, RGB included), timed per frame; peak RSS above
   the RSS before the map existed ("footprint") and the map's own tensor bytes;
3. **peer**: at 0.2 / 0.5 / 1 M voxels, the peer's merge strategy step by step (RayFronts ``SemanticVoxelMap``:
   upsample the feature map to depth resolution, gather per pixel, concatenate the whole map (weighted rows,
   layout [rgb | features | weight]) with the frame's points, ``unique(dim=0)`` on the voxel coordinates,
   scatter-sum, divide), on a map holding the same voxels ovmap had at that size, for a few frames; per-frame time
   (median, max) and footprint. Skipped (and said so) when its estimated memory exceeds ``--max-peer-gib``.

Anchor figures measured with the real peer (RayFronts SemanticVoxelMap run unmodified on the same kind of frames,
D=768, 5 cm voxels, ~45 k new voxels per frame; issue 13 and docs/specs): peer frame time 13-18 s at 1 M voxels
(re-voxelising everything: 3.1-4.6 s at 0.2 M, 9-28 s at 1 M); ovmap before this work ~0.3 s/frame flat,
peak RSS 6.9 GiB for a 3.1 GiB map (2.2x, capacity doubling); the floor ~0.15 s on the same 2-core machine.

Usage:
    python scripts/bench_map.py --quick                  # small run (0.25 M voxels, D=768), about a minute
    python scripts/bench_map.py                          # the full run: D = 768 and 1152 to 1.05 M voxels
    python scripts/bench_map.py --dims 1152 --feature-dtype float16
    python scripts/bench_map.py --device cuda --dims 1152
"""

from __future__ import annotations

import argparse
import gc
import json
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

from ovmap.mapping import VoxelMap, backproject

GIB = 2**30
MIB = 2**20


def device_is_cpu(name: str) -> bool:
    return torch.device(name).type == "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------- memory accounting
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


def start_footprint(device: torch.device) -> int:
    """Reset the peak counter and return the current resident bytes (CPU) / allocated bytes (CUDA)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_peak()
    return rss_bytes()


# ----------------------------------------------------------------------------------------- the scene
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
            [[525.0 * W / 640, 0.0, (W - 1) / 2], [0.0, 525.0 * W / 640, (H - 1) / 2], [0.0, 0.0, 1.0]],
            device=device,
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


# ----------------------------------------------------------------------------------------- the peer
class PeerMap:
    """The peer's map layout: voxel centres (N, 3) and one (N, 3 + D + 1) float32 tensor [rgb | features | weight]."""

    def __init__(self, xyz: torch.Tensor, vals: torch.Tensor) -> None:
        self.xyz, self.vals = xyz, vals

    def integrate(self, depth, pose, K, feats, rgb, voxel_size: float) -> None:
        """One frame, the peer's way: full-resolution upsample, per-pixel rows, re-voxelise map + frame."""
        H, W = depth.shape[-2:]
        xyz, pix = backproject(depth[None], K, pose[None])
        up = F.interpolate(feats[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0]
        pts_feat = up.reshape(up.shape[0], -1)[:, pix].t()
        del up
        pts_rgb = rgb.reshape(3, -1)[:, pix].t()
        m = self.vals.shape[0]
        # add_weighted_sparse_voxels: weighted map rows concatenated with the new points (weight 1) ...
        allv = torch.cat([self.vals, torch.cat([pts_rgb, pts_feat, torch.ones_like(pts_rgb[:, :1])], 1)])
        del pts_feat
        allv[:m, :-1] *= allv[:m, -1:]
        all_xyz = torch.cat([self.xyz, xyz])
        # ... voxelised together: unique(dim=0) over the voxel coordinates, scatter-sum, divide by the weight
        ijk = torch.round(all_xyz / voxel_size).long()
        del all_xyz
        uniq, inv = torch.unique(ijk, dim=0, return_inverse=True)
        del ijk
        out = torch.zeros(uniq.shape[0], allv.shape[1], dtype=torch.float32, device=allv.device)
        out.index_add_(0, inv, allv)
        del allv
        out[:, :-1] /= out[:, -1:]
        self.xyz, self.vals = uniq.float() * voxel_size, out


def peer_from_ovmap(vmap: VoxelMap, m: int) -> PeerMap:
    """The peer's map holding ovmap's first m rows (the voxels ovmap had when it reached m voxels)."""
    D = vmap.feature_dim
    vals = torch.empty(m, 3 + D + 1, dtype=torch.float32, device=vmap.device)
    vals[:, :3] = vmap.rgb[:m]
    for lo, block in vmap.feature_blocks():  # row-order views of the storage, no copy of the whole map
        if lo >= m:
            break
        k = min(block.shape[0], m - lo)
        vals[lo : lo + k, 3:-1] = block[:k]
    vals[:, -1] = vmap.hits[:m]
    return PeerMap(vmap.centers[:m].clone(), vals)


# ----------------------------------------------------------------------------------------- the run
class Floor:
    """One index_add_ of a frame's point features (n_points, D) float32 into a (1 M, D) tensor, re-measured
    during the run so that every ratio uses a floor measured under the same machine load."""

    def __init__(self, D: int, n_points: int, device: torch.device) -> None:
        self.device = device
        self.big = torch.zeros(1_000_000, D, device=device)
        self.src = torch.randn(n_points, D, device=device)
        self.idx = torch.randint(0, 1_000_000, (n_points,), device=device)
        self.big.index_add_(0, self.idx, self.src)  # warm up
        self.samples: list[tuple[int, float]] = []  # (frame, ms)

    def measure(self, frame: int, repeats: int = 1) -> float:
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            self.big.index_add_(0, self.idx, self.src)
            sync(self.device)
            self.samples.append((frame, (time.perf_counter() - t0) * 1e3))
        return self.samples[-1][1]

    def near(self, frames: set[int], window: int = 3) -> float:
        vals = [ms for f, ms in self.samples if any(abs(f - g) <= window for g in frames)]
        return statistics.median(vals) if vals else self.median()

    def median(self) -> float:
        return statistics.median(ms for _, ms in self.samples)


def bench_dim(args, D: int, device: torch.device) -> dict:
    H, W, h, w = args.height, args.width, args.patch_h, args.patch_w
    res: dict = {"D": D}
    floor = Floor(D, H * W, device)
    floor.measure(-1, args.floor_repeats)
    print(f"D={D}: floor (index_add_ of {H * W:,d} x {D} into 1 M x {D}): {floor.median():.0f} ms", flush=True)

    walker = Walker(H, W, device, args.step, args.seed)
    g = torch.Generator(device=device).manual_seed(args.seed)
    base = start_footprint(device)
    vmap = VoxelMap(voxel_size=args.voxel_size, feature_dim=D, device=device, feature_dtype=args.feature_dtype)
    marks = sorted(float(m) * 1e6 for m in args.marks)
    stash: dict[float, list] = {m: [] for m in marks}
    frames = []
    while len(vmap) < args.target_voxels and len(frames) < args.max_frames:
        depth, pose = walker.next_frame()
        feats = torch.randn(D, h, w, device=device, generator=g)
        rgb = torch.rand(3, H, W, device=device, generator=g)
        n_before = len(vmap)
        for m in marks:  # keep the inputs of the frames right after each mark for the peer
            if n_before >= m and len(stash[m]) < args.peer_frames:
                stash[m].append((n_before, depth, pose, feats, rgb))
        sync(device)
        t0 = time.perf_counter()
        info = vmap.integrate(depth, pose, walker.K, feats, rgb=rgb)
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        frames.append({"map_before": n_before, "ms": ms, "new": info["num_new_voxels"],
                       "frame_voxels": info["num_voxels_in_frame"]})
        if len(frames) % args.floor_every == 0:
            floor.measure(len(frames) - 1)
        if args.verbose:
            print(f"  frame {len(frames) - 1:3d}: map {n_before:>9,d} voxels, frame {info['num_voxels_in_frame']:,d}"
                  f" ({info['num_new_voxels']:,d} new): {ms:.0f} ms", flush=True)
    res["ovmap_peak"] = peak_bytes(device) - base
    res["rss_before_map"] = base  # torch runtime + the floor's tensors (1 M x D, freed before the peer runs)
    res["floor_ms"] = floor.median()
    nb = vmap.nbytes()
    n = len(vmap)
    itemsize = torch.empty(0, dtype=vmap.features.dtype).element_size()
    res["map_bytes"] = n * D * itemsize + nb["rows"]  # rows actually written + the small per-row arrays
    res["map_voxels"] = n
    res["frames"] = frames
    times = [f["ms"] for f in frames]
    med = statistics.median(times)
    res["ovmap_median_ms"], res["ovmap_max_ms"] = med, max(times)
    res["ovmap_over_2x"] = sum(t > 2 * med for t in times)
    print(f"D={D}: ovmap {len(frames)} frames to {n:,d} voxels: median {med:.0f} ms, max {max(times):.0f} ms, "
          f"{res['ovmap_over_2x']} frames > 2x median; footprint {res['ovmap_peak'] / GIB:.2f} GiB for "
          f"{res['map_bytes'] / GIB:.2f} GiB of map tensors", flush=True)

    # ovmap per mark: median / max over the frames with the map within [m / 1.2, m * 1.2)
    res["marks"] = []
    for m in [args.flat_from * 1e6] + marks:
        idx = {i for i, f in enumerate(frames) if m / 1.2 <= f["map_before"] < m * 1.2}
        near = [frames[i]["ms"] for i in sorted(idx)]
        res["marks"].append({"voxels": m, "ovmap_median_ms": statistics.median(near) if near else float("nan"),
                             "ovmap_max_ms": max(near) if near else float("nan"), "ovmap_frames": len(near),
                             "floor_ms": floor.near(idx) if idx else float("nan")})
    del floor
    gc.collect()

    # the peer, at each mark, on the voxels ovmap had then
    for mk in res["marks"][1:]:
        m = mk["voxels"]
        items = stash[m]
        if args.no_peer or not items:
            mk["peer_skipped"] = "--no-peer" if args.no_peer else "map never reached this size"
            continue
        m0 = items[0][0]
        est = 4 * (D + 4) * (3 * m0 + 2 * H * W) + 4 * D * H * W
        if est > args.max_peer_gib * GIB:
            mk["peer_skipped"] = f"needs ~{est / GIB:.1f} GiB > --max-peer-gib {args.max_peer_gib}"
            print(f"D={D}: peer at {m0:,d} voxels skipped: {mk['peer_skipped']}", flush=True)
            continue
        last = m == marks[-1]
        base = start_footprint(device)
        peer = peer_from_ovmap(vmap, m0)
        if last:  # the largest peer run needs the memory: ovmap's map is not needed any more
            del vmap
            gc.collect()
        ptimes = []
        for _, depth, pose, feats, rgb in items:
            sync(device)
            t0 = time.perf_counter()
            peer.integrate(depth, pose, walker.K, feats, rgb, args.voxel_size)
            sync(device)
            ptimes.append((time.perf_counter() - t0) * 1e3)
        mk["peer_peak"] = peak_bytes(device) - base
        mk["peer_median_ms"], mk["peer_max_ms"] = statistics.median(ptimes), max(ptimes)
        mk["peer_voxels"] = m0
        mk["peer_frames"] = len(ptimes)
        print(f"D={D}: peer at {m0:,d} voxels, {len(ptimes)} frames: median {mk['peer_median_ms']:.0f} ms, max "
              f"{mk['peer_max_ms']:.0f} ms, footprint {mk['peer_peak'] / GIB:.2f} GiB", flush=True)
        del peer
        gc.collect()
    return res


def report(args, results: list[dict], device: torch.device) -> None:
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (> CPUs: contention)")
    print("per-frame ms (median / max) over the frames with the map within [M/1.2, 1.2 M); footprint = peak "
          "RSS above the RSS before the map existed (CUDA: peak allocated)")
    hdr = (f"{'D':>5} {'voxels':>7} {'ovmap ms':>13} {'peer ms':>15} {'speed-up':>8} {'floor ms':>8} "
           f"{'ovmap/floor':>11} {'peer GiB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for mk in r["marks"]:
            o = f"{mk['ovmap_median_ms']:.0f} / {mk['ovmap_max_ms']:.0f}"
            if "peer_median_ms" in mk:
                p = f"{mk['peer_median_ms']:.0f} / {mk['peer_max_ms']:.0f}"
                sp = f"{mk['peer_median_ms'] / mk['ovmap_median_ms']:.1f}x"
                pg = f"{mk['peer_peak'] / GIB:.2f}"
            else:
                p, sp, pg = "skipped" if "peer_skipped" in mk else "-", "-", "-"
            print(f"{r['D']:>5} {mk['voxels'] / 1e6:>6.2f}M {o:>13} {p:>15} {sp:>8} {mk['floor_ms']:>8.0f} "
                  f"{mk['ovmap_median_ms'] / mk['floor_ms']:>10.2f}x {pg:>8}")
    print()
    for r in results:
        flat = r["marks"][-1]["ovmap_median_ms"] / r["marks"][0]["ovmap_median_ms"]
        budget = r["map_bytes"] + 1.5 * GIB
        print(f"D={r['D']}: {r['map_voxels']:,d} voxels; ovmap median {r['ovmap_median_ms']:.0f} ms, max "
              f"{r['ovmap_max_ms']:.0f} ms ({r['ovmap_max_ms'] / r['ovmap_median_ms']:.2f}x median, "
              f"{r['ovmap_over_2x']} frames > 2x); median at the last mark / at {args.flat_from} M = {flat:.2f}; "
              f"footprint {r['ovmap_peak'] / GIB:.2f} GiB = map tensors {r['map_bytes'] / GIB:.2f} GiB + "
              f"{(r['ovmap_peak'] - r['map_bytes']) / GIB:.2f} GiB (budget map + 1.5 GiB = {budget / GIB:.2f}: "
              f"{'ok' if r['ovmap_peak'] <= budget else 'OVER'})")
        for mk in r["marks"]:
            if "peer_peak" in mk:
                print(f"    peer at {mk['peer_voxels']:,d} voxels: footprint {mk['peer_peak'] / GIB:.2f} GiB; "
                      f"time ratio peer/ovmap {mk['peer_median_ms'] / mk['ovmap_median_ms']:.1f}x")
            elif "peer_skipped" in mk:
                print(f"    peer at {mk['voxels'] / 1e6:.2f} M: skipped ({mk['peer_skipped']})")
    print("anchors, real peer (RayFronts SemanticVoxelMap, D=768, 5 cm, issue 13): 13-18 s/frame at 1 M voxels; "
          "re-voxelise-all 3.1-4.6 s at 0.2 M, 9-28 s at 1 M (spec 12.3); ovmap before: ~0.3 s/frame, peak 6.9 GiB "
          "for a 3.1 GiB map; floor ~0.15 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dims", type=int, nargs="+", default=[768, 1152], help="feature dimensions D")
    p.add_argument("--voxel-size", type=float, default=0.01, help="metres")
    p.add_argument("--target-voxels", type=float, default=1.05e6, help="stop when the map has this many voxels")
    p.add_argument("--max-frames", type=int, default=400)
    p.add_argument("--marks", type=float, nargs="+", default=[0.2, 0.5, 1.0], help="millions of voxels")
    p.add_argument("--flat-from", type=float, default=0.1, help="first mark for the flatness check (M voxels)")
    p.add_argument("--peer-frames", type=int, default=2, help="peer frames timed at each mark")
    p.add_argument("--no-peer", action="store_true", help="skip the peer baseline")
    p.add_argument("--max-peer-gib", type=float, default=11.0, help="skip a peer run estimated above this")
    p.add_argument("--floor-repeats", type=int, default=5, help="floor measurements before the run")
    p.add_argument("--floor-every", type=int, default=3, help="re-measure the floor every this many frames")
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--patch-h", type=int, default=30)
    p.add_argument("--patch-w", type=int, default=40)
    p.add_argument("--step", type=float, default=1.0, help="camera step per frame, metres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (CPU; default 1: on a busy shared machine, OpenMP threads that wait for a "
                        "core turn every parallel op into a scheduling delay; floor, ovmap and peer use the same)")
    p.add_argument("--quick", action="store_true",
                   help="small run: D=768, 0.25 M voxels, marks 0.1 / 0.2 M, 2 peer frames")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--verbose", action="store_true", help="print every frame")
    args = p.parse_args()
    if args.quick:
        args.dims, args.target_voxels, args.marks, args.flat_from = [768], 0.25e6, [0.1, 0.2], 0.1
        args.peer_frames, args.floor_repeats = 2, 3
    if args.threads and device_is_cpu(args.device):
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
    results = []
    with torch.no_grad():
        for D in args.dims:
            results.append(bench_dim(args, D, device))
            gc.collect()
    report(args, results, device)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
