"""Per-scene metrics and the mean over scenes (spec sections 9 and 10).

Valid set: GT voxels whose label is not 0. For c = 1..C::

    TP_c = #(gt = c and pred = c)
    FP_c = #(gt != c and gt != 0 and pred = c)
    FN_c = #(gt = c and pred != c)              (pred = 0 included)
    n_c  = TP_c + FN_c
    IoU_c = TP_c / (TP_c + FP_c + FN_c), NaN when n_c = 0
    mIoU = mean of the non-NaN IoU_c;  f-mIoU = sum_c (n_c / sum n) IoU_c over non-NaN;  acc = mean [pred = gt]

A class absent from the GT never counts (NaN) even if predicted; a GT class never predicted counts with IoU 0.
Dataset score = unweighted mean over scenes of mIoU, f-mIoU and acc (not a pooled confusion matrix).

NaN policy: a scene with no valid GT voxel raises :class:`EvalInputError` (the reference would produce
mIoU = NaN); :func:`mean_over_scenes` raises on any non-finite scene score, so a NaN never reaches a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ovmap.eval3d.common import as_labels, fail


@dataclass
class SceneMetrics:
    """Metrics of one scene. Arrays are indexed by class index - 1 (length C)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray
    miou: float
    fmiou: float
    acc: float
    num_gt_voxels: int  # valid GT voxels (label != 0)
    num_gt_voxels_total: int = 0  # all GT voxels, including label 0
    num_map_voxels: int | None = None
    scene: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gt_voxels(self) -> np.ndarray:
        """n_c = TP_c + FN_c per class."""
        return self.tp + self.fn

    @property
    def present(self) -> np.ndarray:
        """Classes present in the GT (their IoU counts)."""
        return self.gt_voxels > 0

    def summary(self) -> dict[str, Any]:
        return {
            "miou": float(self.miou),
            "fmiou": float(self.fmiou),
            "acc": float(self.acc),
            "num_gt_voxels": int(self.num_gt_voxels),
            "num_gt_voxels_total": int(self.num_gt_voxels_total),
            "num_map_voxels": None if self.num_map_voxels is None else int(self.num_map_voxels),
            "num_classes_present": int(self.present.sum()),
        }


def confusion_counts(gt: Any, pred: Any, num_classes: int, scene: str | None = None):
    """(tp, fp, fn) per class 1..C (arrays of length C) over valid GT voxels (gt != 0)."""
    g = as_labels(gt, "GT labels", scene)
    p = as_labels(pred, "predicted labels", scene, n=g.shape[0])
    if g.size and g.max() > num_classes:
        raise fail(scene, f"GT label {int(g.max())} exceeds the number of classes C={num_classes}")
    if p.size and p.max() > num_classes:
        raise fail(scene, f"predicted label {int(p.max())} exceeds the number of classes C={num_classes}")
    valid = g != 0
    g, p = g[valid], p[valid]
    n = num_classes + 1
    tp = np.bincount(g[g == p], minlength=n)[1:]
    gt_count = np.bincount(g, minlength=n)[1:]
    pred_count = np.bincount(p, minlength=n)[1:]  # pred 0 drops out with [1:]
    return tp.astype(np.int64), (pred_count - tp).astype(np.int64), (gt_count - tp).astype(np.int64)


def scene_metrics(
    gt: Any,
    pred: Any,
    num_classes: int,
    scene: str | None = None,
    num_map_voxels: int | None = None,
) -> SceneMetrics:
    """Per-scene metrics from aligned GT and predicted labels (both in 0..C). Raises if no GT voxel is valid."""
    g = as_labels(gt, "GT labels", scene)
    tp, fp, fn = confusion_counts(g, pred, num_classes, scene)
    n_c = tp + fn
    total = int(n_c.sum())
    if total == 0:
        raise fail(scene, f"no valid GT voxel (all {g.shape[0]} GT voxels have label 0); the scene cannot be scored")
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(n_c > 0, tp / np.maximum(denom, 1), np.nan)
    present = n_c > 0
    miou = float(iou[present].mean())
    fmiou = float(((n_c[present] / total) * iou[present]).sum())
    acc = float(tp.sum() / total)
    return SceneMetrics(tp, fp, fn, iou, miou, fmiou, acc, total, int(g.shape[0]), num_map_voxels, scene)


@dataclass
class MeanMetrics:
    """Unweighted mean over scenes."""

    miou: float
    fmiou: float
    acc: float
    num_scenes: int
    num_gt_voxels: int
    num_map_voxels: int | None

    def summary(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "fmiou": self.fmiou,
            "acc": self.acc,
            "num_scenes": self.num_scenes,
            "num_gt_voxels": self.num_gt_voxels,
            "num_map_voxels": self.num_map_voxels,
        }


def mean_over_scenes(scenes: Sequence[SceneMetrics] | Mapping[str, SceneMetrics]) -> MeanMetrics:
    """Unweighted mean of the per-scene mIoU, f-mIoU and acc. Raises on an empty list or a non-finite score
    (never silently averages a NaN into a table)."""
    items = list(scenes.items()) if isinstance(scenes, Mapping) else [(m.scene, m) for m in scenes]
    if not items:
        raise ValueError("mean_over_scenes: no scenes")
    for name, m in items:
        for key in ("miou", "fmiou", "acc"):
            v = getattr(m, key)
            if not np.isfinite(v):
                raise fail(name, f"{key} is {v}; refusing to average a non-finite score over scenes")
    arr = np.array([[m.miou, m.fmiou, m.acc] for _, m in items], dtype=np.float64)
    mean = arr.mean(axis=0)
    nmap = [m.num_map_voxels for _, m in items]
    return MeanMetrics(
        float(mean[0]), float(mean[1]), float(mean[2]), len(items),
        int(sum(m.num_gt_voxels for _, m in items)),
        None if any(v is None for v in nmap) else int(sum(nmap)),
    )
