"""A naive, independent re-computation of the 3D evaluation protocol, for checking ``ovmap eval`` end to end.

Nothing here imports ``ovmap.eval3d``: every step is written from the protocol's definition (the eval3d spec
sections 3.4, 6.2, 7, 8 and 9) with plain numpy loops or brute force, in float64 (the cosines of the label
rule in float32, as the protocol prescribes):

* external GT: voxel index ``round_half_even(p / s)`` by float64 division, majority vote per voxel with label
  0 competing and ties to the smallest label; centres ``index * s`` in float64;
* lifted GT: the predicted-label rule with one-hot text, no denoising, threshold 0.1; centres float32;
* predicted map labels: softmax(100 cos) over the C classes, global prompt denoising at 0.5 (the default
  scope), threshold 0.1, first index on ties, zero-norm rows -> 0;
* matching: brute-force k nearest map voxels by squared float64 distance (x, y, z summed in that order), ties
  at the k-th neighbour to the smaller row of the lexicographically sorted map (the default ``lattice`` rule);
  mode with ties to the smallest label;
* metrics: per-class TP/FP/FN over GT voxels with label != 0; mIoU over classes present in the GT; f-mIoU
  weighted by GT frequency; accuracy.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def sort_lexicographic(ijk: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    order = sorted(range(len(ijk)), key=lambda i: tuple(ijk[i]))
    return (ijk[order], *[a[order] for a in arrays])


def external_gt(points: np.ndarray, labels: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) voxel indices in lexicographic order and their majority labels (ties -> smallest label)."""
    ijk = np.round(points.astype(np.float64) / voxel_size).astype(np.int64)
    votes: dict[tuple, Counter] = {}
    for key, lab in zip(map(tuple, ijk.tolist()), np.maximum(labels, 0).tolist()):
        votes.setdefault(key, Counter())[lab] += 1
    keys = sorted(votes)
    out = [min(votes[k], key=lambda lab, c=votes[k]: (-c[lab], lab)) for k in keys]
    return np.array(keys, dtype=np.int64), np.array(out, dtype=np.int64)


def label_rule(scores_input, text, denoise: float | None, thresh: float = 0.1,
               temperature: float = 100.0) -> np.ndarray:
    """Labels 0..C of (N, D) voxel vectors against (C, D) text vectors: softmax(temperature * cos), global
    denoising (``None`` = off), threshold; zero-norm rows -> 0.

    The cosines are computed in float32 with torch, as the protocol (and the reference) prescribes: near-ties
    between two classes (an equal mixture of two unit-norm class vectors) are decided by float32 rounding,
    which a float64 computation would decide differently. Everything after the cosines is float64 numpy.
    """
    import torch

    f = torch.as_tensor(np.asarray(scores_input), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(text), dtype=torch.float32)
    fn = torch.linalg.vector_norm(f, dim=1, keepdim=True)
    zero = (fn[:, 0] == 0).numpy()
    cos = ((f / fn) @ (t / torch.linalg.vector_norm(t, dim=1, keepdim=True)).T).double().numpy()
    cos[zero] = 0.0
    z = temperature * cos
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[zero] = 0.0
    if denoise is not None:
        p[:, p.max(axis=0) < denoise] = -np.inf
    best = p.max(axis=1)
    lab = p.argmax(axis=1) + 1  # first index on ties
    lab[(best < thresh) | zero] = 0
    return lab


def onehot_text(num_classes: int) -> np.ndarray:
    """(C, C+1): 1 at index c, 1e-10 elsewhere (probability space and lifted GT)."""
    t = np.full((num_classes, num_classes + 1), 1e-10)
    t[np.arange(num_classes), np.arange(num_classes) + 1] = 1.0
    return t


def knn_vote(gt_centers: np.ndarray, map_centers: np.ndarray, map_labels: np.ndarray, k: int) -> np.ndarray:
    """Brute force: the k nearest map rows by (squared float64 distance, row), mode with smallest-label ties."""
    q = gt_centers.astype(np.float64)
    r = map_centers.astype(np.float64)
    out = np.empty(len(q), dtype=np.int64)
    for lo in range(0, len(q), 256):
        d = q[lo : lo + 256, None, :] - r[None, :, :]
        rd = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
        kth = np.partition(rd, k - 1, axis=1)[:, k - 1 : k]
        less = rd < kth
        eq = rd == kth
        take = less | (eq & (np.cumsum(eq, axis=1) <= k - less.sum(axis=1, keepdims=True)))
        for i, row in enumerate(take):
            c = Counter(map_labels[row].tolist())
            assert sum(c.values()) == k
            out[lo + i] = min(c, key=lambda lab, c=c: (-c[lab], lab))
    return out


def metrics(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    valid = gt != 0
    g, p = gt[valid], pred[valid]
    ious, weights = [], []
    for c in range(1, num_classes + 1):
        n_c = int((g == c).sum())
        if n_c == 0:
            continue
        tp = int(((g == c) & (p == c)).sum())
        fp = int(((g != c) & (p == c)).sum())
        fn = n_c - tp
        ious.append(tp / (tp + fp + fn))
        weights.append(n_c)
    w = np.array(weights, dtype=np.float64) / sum(weights)
    return {"miou": float(np.mean(ious)), "fmiou": float(np.sum(w * np.array(ious))),
            "acc": float(np.mean(g == p))}


def oracle_metrics(dataset, voxel_map, encoder, gt_kind: str, mode: str, k: int = 5) -> dict[str, float]:
    """An oracle scene's mIoU / f-mIoU / acc recomputed naively from the map's voxels and per-voxel class
    frequencies (what the oracle encoder stores in both modes), the dataset's GT (``"external"`` points, or
    ``"lifted"`` through the same frames: the map's own voxels) and the oracle's text embeddings, with the
    default settings (global denoising, lattice tie rule). The dataset's class ids are the table indices."""
    import torch

    names = list(dataset.class_names)
    c = len(names) - 1
    ijk, freq = sort_lexicographic(voxel_map.keys.numpy(), voxel_map.features.double().numpy())
    map_centers = ijk.astype(np.float32) * np.float32(0.05)
    if mode == "feature":  # the oracle's linear projection, in float32 like the encoder
        scores_in = (torch.as_tensor(freq).float() @ encoder.class_embeddings.float()).numpy()
        text = encoder.encode_text(names[1:]).numpy()
    else:
        scores_in, text = freq, onehot_text(c)
    map_labels = label_rule(scores_in, text, denoise=0.5)
    if gt_kind == "external":
        xyz, ids = dataset.gt_points()
        gt_ijk, gt_labels = external_gt(xyz, ids, 0.05)
        gt_centers = gt_ijk * 0.05
    else:  # lifted through the same frames: the map's voxels, labelled from the mean one-hot labels
        gt_labels = label_rule(freq, onehot_text(c), denoise=None)
        gt_centers = map_centers
    pred = knn_vote(gt_centers, map_centers, map_labels, k)
    out = metrics(gt_labels, pred, c)
    out["num_gt_voxels_total"] = len(gt_labels)
    return out


def cached_map(cache, prefix: str, encoder=None):
    """The one map ``ovmap eval`` cached in folder ``cache`` for the scene whose name starts with ``prefix``."""
    from ovmap.mapping import VoxelMap

    (path,) = [p for p in sorted(cache.glob("*.npz")) if p.name.startswith(prefix)]
    return VoxelMap.load(path, encoder=encoder)
