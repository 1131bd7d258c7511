"""Matching GT voxels to map voxels (spec section 8): k nearest map voxels + mode vote, or exact k = 0.

Backends (all exact nearest-neighbour searches; they differ only in how *distance ties* are broken):

``"balltree"``  scikit-learn ``BallTree`` (leaf_size 40, Euclidean) on float32 map centres upcast to
                float64, in the given (lexicographic) order: the reference's choice, needed for label-exact
                reproduction of tie cases (spec 8.2). Slowest.
``"ckdtree"``   scipy ``cKDTree`` with all cores: the fast CPU default outside paper presets.
``"torch"``     tiled brute force in torch on ``device`` (``"cuda"`` on a GPU, also runs on CPU for tests):
                squared distances by matrix product on centred coordinates give ``k + 8`` candidates per
                query, which are re-ranked by exact float64 distances, ties by smaller map index.

The vote is the mode of the k labels with ties going to the **smallest label** (CPU ``torch.mode`` and
HOV-SG's ``bincount().argmax()``; the CUDA reference is implementation-defined). Label-0 map voxels vote.
There is no distance gate unless ``max_match_dist`` is given (off in paper presets; changes numbers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ovmap.eval3d.common import as_labels, as_points, fail, logger, pack_keys, to_numpy

KNN_BACKENDS = ("balltree", "ckdtree", "torch")


def _check_k(k: int, num_map: int, scene: str | None, allow_fewer: bool) -> int:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if num_map == 0:
        raise fail(scene, "the map is empty (0 voxels); cannot match GT voxels")
    if k > num_map:
        if not allow_fewer:
            raise fail(scene, f"the map has only {num_map} voxel(s), fewer than k={k}")
        logger.warning("[scene %s] map has %d voxels < k=%d; using k=%d (documented deviation)", scene, num_map, k,
                       num_map)
        return num_map
    return k


def knn_search(
    query: Any,
    ref: Any,
    k: int,
    backend: str = "ckdtree",
    device: str | torch.device = "cpu",
    tile_elems: int | None = None,
    scene: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest ``ref`` points of each ``query`` point.

    Returns ``(dist, idx)``, each (Q, k), sorted by distance. ``ref`` should be the float32 map centres; they
    are upcast to float64 for the tree backends like the reference does (``BallTree(xyz.cpu())``).
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; expected one of {KNN_BACKENDS}")
    q = as_points(query, "GT voxel centres", scene)
    r = as_points(ref, "map voxel centres", scene)
    k = _check_k(k, r.shape[0], scene, allow_fewer=False)
    if k == 0:
        raise ValueError("knn_search needs k >= 1 (k = 0 is exact matching: use exact_match)")
    if q.shape[0] == 0:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    if backend == "balltree":
        from sklearn.neighbors import BallTree

        tree = BallTree(r.astype(np.float64), leaf_size=40)
        dist, idx = tree.query(q.astype(np.float64), k=k)
        return dist, idx.astype(np.int64)
    if backend == "ckdtree":
        from scipy.spatial import cKDTree

        tree = cKDTree(r.astype(np.float64))
        dist, idx = tree.query(q.astype(np.float64), k=k, workers=-1)
        if k == 1:
            dist, idx = dist[:, None], idx[:, None]
        return dist, idx.astype(np.int64)
    return _knn_torch(q, r, k, torch.device(device), tile_elems)


def _knn_torch(q: np.ndarray, r: np.ndarray, k: int, device: torch.device, tile_elems: int | None):
    extra = min(8, r.shape[0] - k)
    kc = k + extra
    if tile_elems is None:
        tile_elems = (1 << 28) if device.type == "cuda" else (1 << 22)
    tile = max(1, min(q.shape[0], tile_elems // max(1, r.shape[0])))
    center = r.astype(np.float64).mean(axis=0)
    r64 = torch.as_tensor(r.astype(np.float64) - center, device=device)
    r32 = r64.float()
    r_sq = (r32 * r32).sum(dim=1)
    q64_all = torch.as_tensor(q.astype(np.float64) - center, device=device)
    dists, idxs = [], []
    for lo in range(0, q.shape[0], tile):
        q64 = q64_all[lo : lo + tile]
        q32 = q64.float()
        d2 = (q32 * q32).sum(dim=1, keepdim=True) - 2.0 * (q32 @ r32.T) + r_sq[None, :]
        cand = torch.topk(d2, kc, dim=1, largest=False, sorted=False).indices  # (T, kc)
        cand, _ = torch.sort(cand, dim=1)  # ascending map index, so the stable sort below breaks ties by index
        exact = ((q64[:, None, :] - r64[cand]) ** 2).sum(dim=2)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
        dists.append(torch.gather(exact, 1, order).sqrt().cpu())
        idxs.append(torch.gather(cand, 1, order).cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy().astype(np.int64)


def mode_smallest(labels: Any) -> Any:
    """Row-wise mode of (Q, k) integer labels; ties go to the smallest label. numpy in -> numpy out, torch in
    -> torch out (same device)."""
    is_t = isinstance(labels, torch.Tensor)
    lab = labels if is_t else torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if lab.ndim != 2:
        raise ValueError(f"labels must be (Q, k), got {tuple(lab.shape)}")
    if lab.shape[1] == 1:
        res = lab[:, 0].clone()
    else:
        counts = (lab[:, :, None] == lab[:, None, :]).sum(dim=2)  # (Q, k): occurrences of each entry's label
        big = int(lab.max().item()) + 1 if lab.numel() else 1
        score = counts.to(torch.int64) * big - lab  # most frequent first, then the smallest label
        res = torch.gather(lab, 1, score.argmax(dim=1, keepdim=True))[:, 0]
    return res if is_t else res.cpu().numpy()


def knn_vote(
    gt_centers: Any,
    map_centers: Any,
    map_labels: Any,
    k: int = 5,
    backend: str = "ckdtree",
    device: str | torch.device = "cpu",
    max_match_dist: float | None = None,
    allow_fewer_than_k: bool = False,
    scene: str | None = None,
) -> np.ndarray:
    """Predicted label of each GT voxel: the mode of the labels of its k nearest map voxels (GT -> map).

    ``max_match_dist`` (off by default and in paper presets): neighbours farther than this do not vote; a GT
    voxel with no neighbour within the gate gets prediction 0 (a false negative). Changes numbers.
    """
    r = as_points(map_centers, "map voxel centres", scene)
    lab = as_labels(map_labels, "map labels", scene, n=r.shape[0])
    k = _check_k(k, r.shape[0], scene, allow_fewer_than_k)
    if k == 0:
        raise ValueError("knn_vote needs k >= 1; use exact_match for k = 0")
    dist, idx = knn_search(gt_centers, r, k, backend=backend, device=device, scene=scene)
    dev = torch.device(device) if backend == "torch" else torch.device("cpu")
    nl = torch.as_tensor(lab[idx], device=dev)
    if max_match_dist is not None:
        far = torch.as_tensor(dist > max_match_dist, device=dev)
        out = mode_smallest(_gate(nl, far))
        out = torch.where((~far).sum(dim=1) == 0, torch.zeros_like(out), out)
        return out.cpu().numpy()
    return mode_smallest(nl).cpu().numpy()


def _gate(nl: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Replace gated-out neighbour labels by distinct values above every real label: each then counts once and
    loses every tie (smallest label wins), so only real labels can win unless a row has none."""
    q, k = nl.shape
    top = int(nl.max().item()) + 1 if nl.numel() else 1
    pad = top + torch.arange(k, device=nl.device)[None, :].expand(q, k)
    return torch.where(far, pad, nl)


def exact_match(
    gt_keys: Any,
    map_keys: Any,
    map_labels: Any,
    scene: str | None = None,
) -> np.ndarray:
    """k = 0 (spec 8.1): the prediction of each GT voxel is the label of the map voxel with the same integer key;
    a GT voxel with no map voxel gets 0 (a false negative). Map voxels without GT have GT 0 and never count, so
    only the GT voxels are returned (equivalent to the reference's union on the grid)."""
    gk = to_numpy(gt_keys).astype(np.int64)
    mk = to_numpy(map_keys).astype(np.int64)
    if gk.ndim != 2 or gk.shape[1] != 3 or mk.ndim != 2 or mk.shape[1] != 3:
        raise fail(scene, f"voxel keys must be (N, 3), got {gk.shape} and {mk.shape}")
    lab = as_labels(map_labels, "map labels", scene, n=mk.shape[0])
    if mk.shape[0] == 0:
        raise fail(scene, "the map is empty (0 voxels)")
    mp = pack_keys(mk)
    order = np.argsort(mp, kind="stable")
    mp_sorted = mp[order]
    if mp_sorted.size > 1 and (mp_sorted[1:] == mp_sorted[:-1]).any():
        raise fail(scene, "map voxel keys are not unique")
    gp = pack_keys(gk)
    pos = np.searchsorted(mp_sorted, gp)
    pos_c = np.minimum(pos, mp_sorted.size - 1)
    hit = mp_sorted[pos_c] == gp
    out = np.zeros(gk.shape[0], dtype=np.int64)
    out[hit] = lab[order[pos_c[hit]]]
    return out


def keys_from_centers(centers: Any, voxel_size: float) -> np.ndarray:
    """Integer keys of voxel centres, ``round(c / voxel_size)``; exact for centres built as fl32(k * s)."""
    c = to_numpy(centers)
    return np.round(c.astype(np.float64) / float(voxel_size)).astype(np.int64)


def match_labels(
    gt_centers: Any,
    map_centers: Any,
    map_labels: Any,
    k: int = 5,
    voxel_size: float | None = None,
    gt_keys: Any | None = None,
    map_keys: Any | None = None,
    backend: str = "ckdtree",
    device: str | torch.device = "cpu",
    max_match_dist: float | None = None,
    allow_fewer_than_k: bool = False,
    scene: str | None = None,
) -> np.ndarray:
    """Prediction for each GT voxel: :func:`knn_vote` for k >= 1, :func:`exact_match` for k = 0 (which needs
    integer keys, given directly or computed from centres with ``voxel_size``)."""
    if k == 0:
        if gt_keys is None or map_keys is None:
            if voxel_size is None:
                raise ValueError("k = 0 (exact matching) needs voxel_size or integer keys")
            gt_keys = keys_from_centers(gt_centers, voxel_size) if gt_keys is None else gt_keys
            map_keys = keys_from_centers(map_centers, voxel_size) if map_keys is None else map_keys
        return exact_match(gt_keys, map_keys, map_labels, scene=scene)
    return knn_vote(gt_centers, map_centers, map_labels, k=k, backend=backend, device=device,
                    max_match_dist=max_match_dist, allow_fewer_than_k=allow_fewer_than_k, scene=scene)
