"""kNN backends against each other and against a naive numpy loop; exact (k = 0) matching; distance gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap.eval3d import exact_match, knn_search, knn_vote, match_labels

BACKENDS = ["lattice", "balltree", "ckdtree", "torch"]


def naive_knn(q, r, k):
    idx = np.empty((len(q), k), dtype=np.int64)
    for i, p in enumerate(q):
        d = np.sqrt(((r.astype(np.float64) - p.astype(np.float64)) ** 2).sum(1))
        idx[i] = np.argsort(d, kind="stable")[:k]
    return idx


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(3)
    ref = (rng.uniform(-4, 6, size=(3000, 3))).astype(np.float32)  # off-lattice: no distance ties
    query = rng.uniform(-5, 7, size=(400, 3)).astype(np.float32)
    labels = rng.integers(0, 7, size=3000)
    return query, ref, labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_indices_match_naive_loop(cloud, backend):
    q, r, _ = cloud
    ref_idx = naive_knn(q, r, 5)
    dist, idx = knn_search(q, r, 5, backend=backend, tile_elems=50_000)  # small tiles: several tiles on CPU
    np.testing.assert_array_equal(idx, ref_idx)
    naive_d = np.sqrt(((q[:, None, :].astype(np.float64) - r[ref_idx].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_allclose(dist, naive_d, rtol=1e-9, atol=1e-9)


def test_backends_give_identical_labels(cloud):
    q, r, lab = cloud
    preds = [knn_vote(q, r, lab, k=5, backend=b) for b in BACKENDS]
    naive = np.array([np.bincount(lab[row]).argmax() for row in naive_knn(q, r, 5)])
    for p in preds:
        np.testing.assert_array_equal(p, naive)


def test_torch_tiled_on_a_lattice_without_ties():
    """Lattice centres as the map produces them; queries offset so that no 5th/6th distance tie occurs."""
    g = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centers = g.astype(np.float32) * np.float32(0.05)
    rng = np.random.default_rng(0)
    q = (centers[rng.choice(len(centers), 300)] + rng.uniform(-0.02, 0.02, (300, 3))).astype(np.float32)
    a = knn_search(q, centers, 5, backend="torch", tile_elems=20_000)[1]
    b = knn_search(q, centers, 5, backend="ckdtree")[1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(cloud):
    q, r, lab = cloud
    a = knn_vote(q, r, lab, k=5, backend="torch", device="cuda")
    b = knn_vote(q, r, lab, k=5, backend="ckdtree")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(knn_search(q, r, 5, backend="torch", device="cuda")[1],
                                  knn_search(q, r, 5, backend="balltree")[1])


def test_k1_and_k_equal_map_size(cloud):
    q, r, lab = cloud
    np.testing.assert_array_equal(knn_vote(q, r, lab, k=1, backend="ckdtree"), lab[naive_knn(q, r, 1)[:, 0]])
    small = r[:5]
    for b in BACKENDS:
        out = knn_vote(q[:10], small, np.array([3, 3, 1, 1, 2]), k=5, backend=b)
        assert (out == 1).all()  # 3 and 1 tie with two votes each -> smallest label


def test_exact_match_union_semantics():
    gt_ijk = np.array([[0, 0, 0], [1, 0, 0], [5, 5, 5], [-3, 2, 1]])
    map_ijk = np.array([[1, 0, 0], [9, 9, 9], [0, 0, 0], [-3, 2, 1]])
    map_labels = np.array([2, 4, 1, 3])
    assert exact_match(gt_ijk, map_ijk, map_labels).tolist() == [1, 2, 0, 3]
    # through centres and voxel_size
    vs = np.float32(0.05)
    out = match_labels(gt_ijk.astype(np.float32) * vs, map_ijk.astype(np.float32) * vs, map_labels, k=0,
                       voxel_size=0.05)
    assert out.tolist() == [1, 2, 0, 3]


def test_distance_gate():
    centers = np.array([[0, 0, 0], [0.05, 0, 0], [1, 0, 0]], np.float32)
    labels = np.array([2, 2, 5])
    q = np.array([[0, 0, 0], [3, 0, 0]], np.float32)
    assert knn_vote(q, centers, labels, k=3).tolist() == [2, 2]  # no gate: every GT voxel gets a vote
    assert knn_vote(q, centers, labels, k=3, max_match_dist=0.2).tolist() == [2, 0]
    assert knn_vote(q[:1], centers, np.array([4, 2, 1]), k=3).tolist() == [1]  # 3-way tie -> smallest
    assert knn_vote(q[:1], centers, np.array([4, 2, 1]), k=3, max_match_dist=0.2).tolist() == [2]
    for b in BACKENDS:
        assert knn_vote(q, centers, labels, k=3, max_match_dist=0.2, backend=b).tolist() == [2, 0]
