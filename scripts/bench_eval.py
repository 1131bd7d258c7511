#!/usr/bin/env python
"""Benchmark the eval3d core: 10^6 GT voxels against 3*10^5 map voxels, k = 5, 101 classes (issue 13).

Synthetic voxels on a 5 cm lattice in a 12 x 12 x 3 m volume (random cells, so many exact distance ties
between the 5th and 6th neighbours), map labels from D-dim features and 101 text embeddings. Timed, end to
end from map features to the predicted label of every GT voxel:

  default path      predicted map labels with global denoising + exact "lattice" kNN vote
  reference path    predicted map labels with chunked denoising + "balltree" vote (labels identical to a full
                    scikit-learn BallTree query; BallTree is asked only about ambiguous distance ties)
  old default       the same labels + scipy cKDTree 5-NN vote (the previous default backend)
  old reference     the same labels + full BallTree 5-NN vote (the previous reference path)

and the label agreement of each with the full BallTree result (the reference). Ratios are old / new, all
measured in this process. Optional: metrics, independent-query AP, the tiled torch kNN on a GPU.

Usage:
  python scripts/bench_eval.py                     # CPU, the issue's sizes (about a minute on 2 quiet cores)
  python scripts/bench_eval.py --num-gt 200000     # smaller run
  python scripts/bench_eval.py --device cuda       # adds the tiled torch brute force on the GPU
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
    print(f"  {label:<58s} {dt:8.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-gt", type=int, default=1_000_000)
    ap.add_argument("--num-map", type=int, default=300_000)
    ap.add_argument("--num-classes", type=int, default=101)
    ap.add_argument("--dim", type=int, default=768, help="feature dimension for the feature-space prediction")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="device of the label computation (and the torch kNN)")
    ap.add_argument("--skip-balltree", action="store_true",
                    help="skip the full BallTree query (old reference path; no agreement check then)")
    ap.add_argument("--extras", action="store_true", help="also time metrics and independent-query AP")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import scipy.spatial  # noqa: F401  (imported before timing: ~1 s each on a cold start)
    import sklearn.neighbors  # noqa: F401

    rng = np.random.default_rng(args.seed)
    vs = np.float32(0.05)
    c = args.num_classes
    print(f"eval3d benchmark: {args.num_gt:,} GT voxels vs {args.num_map:,} map voxels, k={args.k}, C={c}, "
          f"D={args.dim}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    cells = lattice_cells(rng, args.num_gt + args.num_map // 2)
    gt_ijk = cells[: args.num_gt]
    gt_ijk = gt_ijk[np.lexsort((gt_ijk[:, 2], gt_ijk[:, 1], gt_ijk[:, 0]))]
    map_ijk = np.concatenate([cells[: args.num_map // 2], cells[args.num_gt :]])[: args.num_map]
    map_ijk = map_ijk[np.lexsort((map_ijk[:, 2], map_ijk[:, 1], map_ijk[:, 0]))]
    gt_centers = gt_ijk.astype(np.float64) * 0.05  # external GT: float64 centres
    map_centers = map_ijk.astype(np.float32) * vs  # the map: float32 centres
    gt_labels = rng.integers(0, c + 1, size=args.num_gt)
    text = torch.nn.functional.normalize(torch.randn(c, args.dim, generator=torch.Generator().manual_seed(1)), dim=1)
    cls = rng.integers(0, c, size=args.num_map)
    feats = (text.numpy()[cls] + 0.5 * rng.standard_normal((args.num_map, args.dim), dtype=np.float32)).astype(
        np.float32)
    dev = args.device
    r: dict[str, float] = {}

    print("predicted map labels (softmax(100 cos), denoising 0.5, threshold 0.1):")
    ref_labels = timed(f"feature space D={args.dim}, chunked denoising (reference)", lambda: predict_labels(
        feats, text, reference_compatible=True, device=dev), r)
    def_labels = timed(f"feature space D={args.dim}, global denoising (default)", lambda: predict_labels(
        feats, text, reference_compatible=False, device=dev), r)

    print(f"GT -> map {args.k}-NN + mode vote ({args.num_gt:,} queries):")
    vote = dict(k=args.k, voxel_size=0.05, gt_indices=gt_ijk, map_indices=map_ijk)
    p_def = timed("lattice (exact, ties by smaller row; default)", lambda: knn_vote(
        gt_centers, map_centers, def_labels, backend="lattice", **vote), r)
    p_ref = timed("balltree-identical (lattice + BallTree on ambiguous ties)", lambda: knn_vote(
        gt_centers, map_centers, ref_labels, backend="balltree", **vote), r)
    p_ck = timed("cKDTree (scipy, all cores; old default)", lambda: knn_vote(
        gt_centers, map_centers, def_labels, backend="ckdtree", k=args.k), r)
    p_bt = None
    if not args.skip_balltree:
        p_bt = timed("full BallTree (scikit-learn; old reference)", lambda: _full_balltree_vote(
            gt_centers, map_centers, ref_labels, args.k), r)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        timed("torch tiled brute force (warm-up)", lambda: knn_search(
            gt_centers[:10000], map_centers, args.k, backend="torch", device=dev), {})
        p_t = timed(f"torch tiled brute force on {args.device}", lambda: knn_vote(
            gt_centers, map_centers, def_labels, k=args.k, backend="torch", device=dev), r)
        print(f"    labels differing torch vs lattice (distance ties): {int((p_t != p_def).sum()):,}")

    t_def = r[f"feature space D={args.dim}, global denoising (default)"] + r[
        "lattice (exact, ties by smaller row; default)"]
    t_ref = r[f"feature space D={args.dim}, chunked denoising (reference)"] + r[
        "balltree-identical (lattice + BallTree on ambiguous ties)"]
    t_old_def = r[f"feature space D={args.dim}, global denoising (default)"] + r[
        "cKDTree (scipy, all cores; old default)"]
    print("end to end, map features -> label of every GT voxel:")
    print(f"  default path    {t_def:8.2f} s   (old default, cKDTree: {t_old_def:8.2f} s, "
          f"ratio {t_old_def / t_def:5.2f}x)")
    if p_bt is not None:
        t_old_ref = r[f"feature space D={args.dim}, chunked denoising (reference)"] + r[
            "full BallTree (scikit-learn; old reference)"]
        print(f"  reference path  {t_ref:8.2f} s   (old reference, full BallTree: {t_old_ref:8.2f} s, "
              f"ratio {t_old_ref / t_ref:5.2f}x)")
        print("label agreement with the full BallTree vote on the same map labels (reference labels):")
        print(f"  balltree-identical path: {int((p_ref != p_bt).sum()):,} of {args.num_gt:,} labels differ")
        p_lat_ref = knn_vote(gt_centers, map_centers, ref_labels, backend="lattice", **vote)
        p_ck_ref = knn_vote(gt_centers, map_centers, ref_labels, backend="ckdtree", k=args.k)
        print(f"  lattice (default tie rule): {int((p_lat_ref != p_bt).sum()):,} differ;  "
              f"cKDTree: {int((p_ck_ref != p_bt).sum()):,} differ (all exact 5th/6th distance ties)")
    else:
        print(f"  reference path  {t_ref:8.2f} s")
    print(f"  default labels differing lattice vs cKDTree (distance ties): {int((p_def != p_ck).sum()):,}")

    if args.extras:
        print("metrics and independent queries:")
        m = timed("per-class counts, mIoU, f-mIoU, acc", lambda: scene_metrics(gt_labels, p_def, c), r)
        print(f"    (random labels) mIoU {m.miou:.4f} f-mIoU {m.fmiou:.4f} acc {m.acc:.4f}")
        scores = timed("cosine scores of map voxels", lambda: class_scores(feats, text, device=dev), r)
        _, idx = knn_search(gt_centers, map_centers, args.k, backend="lattice", voxel_size=0.05)

        def transfer_and_ap():
            gs = np.empty((args.num_gt, c), dtype=np.float32)
            for j in range(c):
                gs[:, j] = scores[:, j][idx].mean(axis=1)
            return independent_query_metrics(gt_labels, gs, threshold=0.1)

        ind = timed(f"score transfer + AP/IoU for {c} classes (scikit-learn AP)", transfer_and_ap, r)
        print(f"    (random) mAP {ind.mean_ap:.4f}")


def _full_balltree_vote(gt_centers, map_centers, labels, k):
    """The previous reference path: BallTree 5-NN of every GT voxel, then the smallest-label mode."""
    from ovmap.eval3d import mode_smallest

    _, idx = knn_search(gt_centers, map_centers, k, backend="balltree")
    return mode_smallest(labels[idx])


if __name__ == "__main__":
    main()
