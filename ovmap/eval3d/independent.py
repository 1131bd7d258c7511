"""Independent-query evaluation (issue 3 item 2): each class is queried alone, without competing classes.

For every class c, every map voxel gets the plain cosine similarity s_c(v) = cos(F_v, T_c) (no softmax, no
denoising, no threshold against other classes). The score is transferred to each GT voxel through the same
matching as the main protocol: the **mean** of its k nearest map voxels' scores (``aggregate="mean"``;
``"max"`` and ``"nearest"`` are offered), or with k = 0 the score of the map voxel with the same voxel index (GT voxels
the map never observed get score -2, i.e. ranked last and below every threshold).

Over the valid GT voxels (label != 0), with positives = GT voxels of class c and negatives = all other valid
voxels:

* ``AP_c``: average precision of the ranking by score, the step-wise definition
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds (``sklearn.metrics.average_precision_score``);
* ``IoU_c``: TP / (TP + FP + FN) of the binary prediction ``score >= threshold``.

Classes absent from the GT get NaN and are excluded from ``mAP`` and ``mIoU`` (means over present classes).
The threshold is encoder dependent (cosines of CLIP-like models are small); it is recorded in the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovmap.eval3d.common import as_labels, as_points, fail
from ovmap.eval3d.knn import exact_match, knn_search
from ovmap.voxel_keys import indices_from_centers

UNMATCHED_SCORE = -2.0
AGGREGATES = ("mean", "max", "nearest")


def average_precision(scores: Any, positives: Any) -> float:
    """Average precision of ranking ``scores`` (higher first) for binary ``positives``:
    ``sklearn.metrics.average_precision_score`` (tied scores form one threshold), NaN when there is no positive
    (scikit-learn would warn and return 0)."""
    from sklearn.metrics import average_precision_score

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positives, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and positives {y.shape} differ in shape")
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


@dataclass
class IndependentMetrics:
    """Per-class AP and IoU at ``threshold`` (length C, NaN for classes absent from the GT) and their means."""

    ap: np.ndarray
    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    mean_ap: float
    mean_iou: float
    threshold: float
    k: int
    aggregate: str
    scene: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"map": self.mean_ap, "miou_at_thresh": self.mean_iou, "threshold": self.threshold,
                "k": self.k, "aggregate": self.aggregate}


def transfer_scores(
    gt_centers: Any,
    map_centers: Any,
    map_scores: Any,
    k: int = 5,
    aggregate: str = "mean",
    voxel_size: float | None = None,
    gt_indices: Any | None = None,
    map_indices: Any | None = None,
    backend: str = "lattice",
    device: str | torch.device = "cpu",
    scene: str | None = None,
) -> np.ndarray:
    """Per-GT-voxel scores (Q, C) from per-map-voxel scores (M, C); centres in metres, optional (N, 3) voxel
    indices (else rounded from the centres with ``voxel_size``)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    ms = np.asarray(map_scores, dtype=np.float32)
    mc = as_points(map_centers, "map voxel centres", scene)
    if ms.ndim != 2 or ms.shape[0] != mc.shape[0]:
        raise fail(scene, f"map scores must be (M, C) with M = {mc.shape[0]}, got {ms.shape}")
    if k == 0:
        if gt_indices is None or map_indices is None:
            if voxel_size is None:
                raise ValueError("k = 0 needs voxel_size or the voxel indices")
            gc = as_points(gt_centers, "GT voxel centres", scene)
            gt_indices = indices_from_centers(gc, voxel_size) if gt_indices is None else gt_indices
            map_indices = indices_from_centers(mc, voxel_size) if map_indices is None else map_indices
        # reuse exact_match on row numbers (+1 so that "no match" is 0)
        rows = exact_match(gt_indices, map_indices, np.arange(1, mc.shape[0] + 1), scene=scene)
        out = np.full((rows.shape[0], ms.shape[1]), UNMATCHED_SCORE, dtype=np.float32)
        hit = rows > 0
        out[hit] = ms[rows[hit] - 1]
        return out
    kk = 1 if aggregate == "nearest" else k
    _, idx = knn_search(gt_centers, mc, kk, backend=backend, device=device, voxel_size=voxel_size,
                        query_indices=gt_indices, ref_indices=map_indices, scene=scene)
    out = np.empty((idx.shape[0], ms.shape[1]), dtype=np.float32)
    for c in range(ms.shape[1]):
        g = ms[:, c][idx]
        out[:, c] = g.max(axis=1) if aggregate == "max" else g.mean(axis=1)
    return out


def independent_query_metrics(
    gt_labels: Any,
    gt_scores: Any,
    threshold: float,
    k: int = 5,
    aggregate: str = "mean",
    scene: str | None = None,
) -> IndependentMetrics:
    """AP and IoU@threshold per class from per-GT-voxel class scores (Q, C) and GT labels (Q,) in 0..C."""
    g = as_labels(gt_labels, "GT labels", scene)
    s = np.asarray(gt_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != g.shape[0]:
        raise fail(scene, f"GT scores must be (Q, C) with Q = {g.shape[0]}, got {s.shape}")
    num_classes = s.shape[1]
    if g.size and g.max() > num_classes:
        raise fail(scene, f"GT label {int(g.max())} exceeds the number of classes C={num_classes}")
    valid = g != 0
    if not valid.any():
        raise fail(scene, "no valid GT voxel (all labels 0)")
    g, s = g[valid], s[valid]
    ap = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    tp = np.zeros(num_classes, dtype=np.int64)
    fp = np.zeros(num_classes, dtype=np.int64)
    fn = np.zeros(num_classes, dtype=np.int64)
    for c in range(1, num_classes + 1):
        pos = g == c
        pred = s[:, c - 1] >= threshold
        tp[c - 1] = int((pos & pred).sum())
        fp[c - 1] = int((~pos & pred).sum())
        fn[c - 1] = int((pos & ~pred).sum())
        if pos.any():
            ap[c - 1] = average_precision(s[:, c - 1], pos)
            iou[c - 1] = tp[c - 1] / (tp[c - 1] + fp[c - 1] + fn[c - 1])
    present = ~np.isnan(ap)
    return IndependentMetrics(ap, iou, tp, fp, fn, float(ap[present].mean()), float(iou[present].mean()),
                              float(threshold), int(k), aggregate, scene)


def independent_query_eval(
    gt_centers: Any,
    gt_labels: Any,
    map_centers: Any,
    map_scores: Any,
    threshold: float = 0.5,
    k: int = 5,
    aggregate: str = "mean",
    voxel_size: float | None = None,
    gt_indices: Any | None = None,
    map_indices: Any | None = None,
    backend: str = "lattice",
    device: str | torch.device = "cpu",
    scene: str | None = None,
) -> IndependentMetrics:
    """Independent-query evaluation of one scene. ``map_scores`` (M, C) are per-map-voxel cosine similarities
    (see :func:`ovmap.eval3d.predict.class_scores`)."""
    g = as_labels(gt_labels, "GT labels", scene)
    as_points(gt_centers, "GT voxel centres", scene)
    if g.shape[0] == 0:
        raise fail(scene, "the GT is empty (0 voxels)")
    gs = transfer_scores(gt_centers, map_centers, map_scores, k=k, aggregate=aggregate, voxel_size=voxel_size,
                         gt_indices=gt_indices, map_indices=map_indices, backend=backend, device=device, scene=scene)
    return independent_query_metrics(g, gs, threshold, k=k, aggregate=aggregate, scene=scene)
