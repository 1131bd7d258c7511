#!/usr/bin/env python
"""Benchmark the eval3d core: 10^6 GT voxels against 3*10^5 map voxels, k = 5, 101 classes.

Stages timed (synthetic voxels on a 5 cm lattice in a 12 x 12 x 3 m volume):
  predict   predicted labels of the map voxels (feature space: D-dim features + 101 text embeddings, and
            probability space: 102 channels), chunked denoising (reference) and global denoising (default)
  knn       GT -> map 5-NN + mode vote, per backend (cKDTree, BallTree, tiled torch brute force)
  metrics   per-class counts, mIoU, f-mIoU, acc
  independent  per-class AP over the GT voxels (101 classes)

Usage:
  python scripts/bench_eval.py                     # CPU: cKDTree + BallTree (a few minutes on 2 cores)
  python scripts/bench_eval.py --device cuda       # adds the tiled torch brute force on the GPU
  python scripts/bench_eval.py --num-gt 200000     # smaller run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import ovmap  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovmap.eval3d import (
    class_scores,
    independent_query_metrics,
    knn_search,
    knn_vote,
    predict_labels,
    predict_labels_probability_space,
    scene_metrics,
)


def lattice_cells(rng: np.random.Generator, n: int, dims=(240, 240, 60)) -> np.ndarray:
    flat = rng.choice(int(np.prod(dims)), size=n, replace=False)
    return np.stack(np.unravel_index(flat, dims), axis=1).astype(np.int64)


def timed(label: str, fn, results: dict):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    results[label] = dt
    print(f"  {label:<52s} {dt:8.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-gt", type=int, default=1_000_000)
    ap.add_argument("--num-map", type=int, default=300_000)
    ap.add_argument("--num-classes", type=int, default=101)
    ap.add_argument("--dim", type=int, default=768, help="feature dimension for the feature-space prediction")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-balltree", action="store_true", help="skip the (slow) reference BallTree backend")
    ap.add_argument("--torch-cpu", action="store_true", help="also time the brute-force torch path on CPU (slow)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    vs = np.float32(0.05)
    c = args.num_classes
    print(f"eval3d benchmark: {args.num_gt:,} GT voxels vs {args.num_map:,} map voxels, k={args.k}, C={c}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    cells = lattice_cells(rng, args.num_gt + args.num_map // 2)
    gt_keys = cells[: args.num_gt]
    map_keys = np.concatenate([gt_keys[: args.num_map // 2], cells[args.num_gt :]])[: args.num_map]
    map_keys = map_keys[np.lexsort((map_keys[:, 2], map_keys[:, 1], map_keys[:, 0]))]
    gt_centers = gt_keys.astype(np.float32) * vs
    map_centers = map_keys.astype(np.float32) * vs
    gt_labels = rng.integers(0, c + 1, size=args.num_gt)

    results: dict[str, float] = {}
    print("predict (map voxels):")
    text = torch.nn.functional.normalize(torch.randn(c, args.dim, generator=torch.Generator().manual_seed(1)), dim=1)
    cls = rng.integers(0, c, size=args.num_map)
    feats = (text.numpy()[cls] + 0.5 * rng.standard_normal((args.num_map, args.dim), dtype=np.float32)).astype(
        np.float32)
    dev = args.device
    timed(f"feature space D={args.dim}, chunked (reference)", lambda: predict_labels(
        feats, text, reference_compatible=True, device=dev), results)
    map_labels = timed(f"feature space D={args.dim}, global (default)", lambda: predict_labels(
        feats, text, reference_compatible=False, device=dev), results)
    probs = rng.dirichlet(np.full(c + 1, 0.1), size=args.num_map).astype(np.float32)
    timed(f"probability space {c + 1} channels, chunked", lambda: predict_labels_probability_space(
        probs, reference_compatible=True, device=dev), results)
    del probs

    print(f"kNN matching ({args.num_gt:,} queries, k={args.k}) + mode vote:")
    pred = timed("cKDTree (scipy, all cores)", lambda: knn_vote(
        gt_centers, map_centers, map_labels, k=args.k, backend="ckdtree"), results)
    if not args.skip_balltree:
        pb = timed("BallTree (scikit-learn, reference)", lambda: knn_vote(
            gt_centers, map_centers, map_labels, k=args.k, backend="balltree"), results)
        print(f"    labels differing cKDTree vs BallTree (distance ties on the lattice): "
              f"{int((pb != pred).sum()):,} of {args.num_gt:,}")
    if args.device.startswith("cuda") and torch.cuda.is_available():
        timed("torch tiled brute force (warm-up + run)", lambda: knn_search(
            gt_centers[:10000], map_centers, args.k, backend="torch", device=dev), {})
        pt = timed(f"torch tiled brute force on {args.device}", lambda: knn_vote(
            gt_centers, map_centers, map_labels, k=args.k, backend="torch", device=dev), results)
        print(f"    labels differing torch vs cKDTree (distance ties on the lattice): "
              f"{int((pt != pred).sum()):,} of {args.num_gt:,}")
    if args.torch_cpu:
        n = min(args.num_gt, 20000)
        timed(f"torch tiled brute force on CPU, first {n:,} queries", lambda: knn_vote(
            gt_centers[:n], map_centers, map_labels, k=args.k, backend="torch", device="cpu"), results)

    print("metrics:")
    m = timed("per-class counts, mIoU, f-mIoU, acc", lambda: scene_metrics(gt_labels, pred, c), results)
    print(f"    (random labels) mIoU {m.miou:.4f} f-mIoU {m.fmiou:.4f} acc {m.acc:.4f}")

    print("independent queries:")
    scores = timed("cosine scores of map voxels", lambda: class_scores(feats, text, device=dev), results)
    _, idx = knn_search(gt_centers, map_centers, args.k, backend="ckdtree")

    def transfer_and_ap():
        gs = np.empty((args.num_gt, c), dtype=np.float32)
        for j in range(c):
            gs[:, j] = scores[:, j][idx].mean(axis=1)
        return independent_query_metrics(gt_labels, gs, threshold=0.1)

    r = timed(f"score transfer + AP/IoU for {c} classes", transfer_and_ap, results)
    print(f"    (random) mAP {r.mean_ap:.4f}")
    total = results.get("feature space D=%d, chunked (reference)" % args.dim, 0) + results["cKDTree (scipy, all cores)"] \
        + results["per-class counts, mIoU, f-mIoU, acc"]
    print(f"total, reference-style pipeline with cKDTree (predict + match + metrics): {total:.2f} s")


if __name__ == "__main__":
    main()
