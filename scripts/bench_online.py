#!/usr/bin/env python
"""Real-time replay of the synthetic scene into the online mapper: what a live run would have done per encoder.

For each encoder, in one process and on the same preloaded frames (rendering is done before any clock starts):

1. baseline: offline ``build_map`` over the first ``--baseline-frames`` frames -> frames/s, and the real-time factor
   (offline frames/s divided by the replay rate; >= 1 means the encoder could keep up on its own);
2. replay: the frames pushed at ``--rate`` Hz into ``OnlineMapper`` (``--policy``, ``--queue``) by
   ``ovmap.online.replay``; printed: frames processed / dropped, latency push -> in map (median, p95), map staleness
   (median, p95), encoder and fusion time per frame.

Encoders: ``oracle`` (ground-truth labels), ``radseg-tiny`` (the tiny golden RADIO weights of
shared/golden/radseg/model, ``--tiny-checkpoint``), ``radseg-random`` (C-RADIOv3-B size with random weights, from
``scripts/bench_encoders.py``: real timings, meaningless features).

Examples:
    python scripts/bench_online.py                                    # demo preset (72 frames, 240x320), 30 Hz
    python scripts/bench_online.py --preset test --encoders oracle radseg-tiny --policy block
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ovmap.datasets import SyntheticScene
from ovmap.encoders import build_encoder
from ovmap.online import OnlineMapper, replay
from ovmap.pipeline import build_map

REPO = Path(__file__).resolve().parents[1]
TINY = (REPO / ".." / "shared" / "golden" / "radseg" / "model" / "tiny_c-radio_v3.safetensors").resolve()


def make_encoder(name: str, scene: SyntheticScene, args: argparse.Namespace):
    if name == "oracle":
        return build_encoder("oracle", class_names=scene.class_names, device=args.device)
    if name == "radseg-tiny":
        return build_encoder("radseg", checkpoint=str(args.tiny_checkpoint), device=args.device)
    if name == "radseg-random":
        from bench_encoders import random_radio_checkpoint  # scripts/ is on sys.path when run as a script

        return build_encoder("radseg", checkpoint=random_radio_checkpoint(), device=args.device)
    raise ValueError(f"unknown encoder {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=["demo", "test"])
    p.add_argument("--rate", type=float, default=30.0, help="replay rate in Hz")
    p.add_argument("--encoders", nargs="+", default=["oracle", "radseg-tiny", "radseg-random"])
    p.add_argument("--policy", default="drop_oldest", choices=["block", "drop_oldest", "latest_only"])
    p.add_argument("--queue", type=int, default=4)
    p.add_argument("--voxel-size", type=float, default=0.05)
    p.add_argument("--baseline-frames", type=int, default=8)
    p.add_argument("--tiny-checkpoint", type=Path, default=TINY)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    scene = SyntheticScene(preset=args.preset)
    t0 = time.perf_counter()
    frames = list(scene)
    h, w = frames[0]["rgb"].shape[1:]
    print(f"{len(frames)} frames {h}x{w} of {scene.scene_name} rendered in {time.perf_counter() - t0:.1f} s; "
          f"device {args.device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    rows = []
    for name in args.encoders:
        enc = make_encoder(name, scene, args)
        base = frames[: args.baseline_frames]
        build_map(base[:1], enc, voxel_size=args.voxel_size, progress=False)  # warm-up
        _, st = build_map(base, enc, voxel_size=args.voxel_size, progress=False)
        fps = st.frames_per_second
        mapper = OnlineMapper(enc, voxel_size=args.voxel_size, policy=args.policy, queue_size=args.queue)
        rep = replay(frames, mapper, rate_hz=args.rate, prefetch=len(frames), progress=False)
        s = rep.stats
        rows.append((name, fps, fps / args.rate, s))
        print(f"\n[{name}] offline {fps:.2f} frames/s over {len(base)} frames (real-time factor {fps / args.rate:.2f})")
        print(rep.format())
    print(f"\nsummary: replay at {args.rate:g} Hz, policy {args.policy}, queue {args.queue}")
    print("| encoder | offline frames/s | RT factor | processed | dropped | latency median / p95 (ms) | staleness median / p95 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, fps, rtf, s in rows:
        print(f"| {name} | {fps:.2f} | {rtf:.2f} | {s.processed}/{s.pushed} | {s.dropped} | "
              f"{1e3 * s.latency_median:.0f} / {1e3 * s.latency_p95:.0f} | "
              f"{1e3 * s.staleness_median:.0f} / {1e3 * s.staleness_p95:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
