"""mIoU over a split (MMSegmentation ``IoUMetric``): per class TP / (TP + FP + FN) accumulated over all images.

Pixels whose ground truth is the ignore index (255) are left out. Classes absent from both the ground truth and
the predictions of the whole split have an undefined IoU (NaN) and are left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ovmap.eval2d.datasets import IGNORE_INDEX


@dataclass
class ConfusionMatrix:
    """(K, K) int64 pixel counts, rows = ground truth, columns = prediction."""

    num_classes: int
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> None:
        """Add one image: ``pred`` (H, W) ids in 0..K-1, ``gt`` (H, W) ids in 0..K-1 or 255 (ignored)."""
        pred = torch.as_tensor(pred).cpu().numpy().astype(np.int64).ravel()
        gt = torch.as_tensor(gt).cpu().numpy().astype(np.int64).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} pixels but the ground truth {gt.size}")
        keep = gt != IGNORE_INDEX
        pred, gt = pred[keep], gt[keep]
        k = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            raise ValueError(f"ground-truth ids must be in 0..{k - 1} or {IGNORE_INDEX}, got {gt.min()}..{gt.max()}")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted ids must be in 0..{k - 1}, got {pred.min()}..{pred.max()}")
        self.counts += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    @property
    def tp(self) -> np.ndarray:
        return np.diag(self.counts).copy()

    @property
    def fp(self) -> np.ndarray:
        return self.counts.sum(axis=0) - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.counts.sum(axis=1) - self.tp

    def iou(self) -> np.ndarray:
        """(K,) float64 IoU per class; NaN where TP + FP + FN = 0."""
        union = (self.tp + self.fp + self.fn).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes with a defined IoU (NaN when there is none)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        """Pixel accuracy over the non-ignored pixels (MMSegmentation ``aAcc``)."""
        total = self.counts.sum()
        return float(self.tp.sum() / total) if total else float("nan")
