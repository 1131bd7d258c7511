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


# --- exact lattice search and BallTree identity on lattice data with many distance ties ---------------------
def naive_sets(q, r, k):
    """Per query: the k nearest rows by (squared float64 distance summed x, y, z, then row), as sets, and
    whether the k-th and (k+1)-th squared distances are equal. A plain loop, no tree, no grid."""
    q, r = q.astype(np.float64), r.astype(np.float64)
    sets, ties = [], []
    for p in q:
        d = r - p
        rd = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        order = sorted(range(len(r)), key=lambda j: (rd[j], j))
        sets.append(sorted(order[:k]))
        ties.append(len(r) > k and rd[order[k - 1]] == rd[order[k]])
    return np.array(sets), np.array(ties)


def lattice_scene(seed, dims, map_fraction, extra_far=20):
    """Map voxels: a random subset of a lattice box, sorted lexicographically (float32 centres); GT voxels:
    half the box (float64 centres, as external GT) plus some far outside the map's box."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(dims))
    cells = np.stack(np.unravel_index(rng.permutation(n), dims), 1)
    m_ijk = cells[: int(n * map_fraction)]
    m_ijk = m_ijk[np.lexsort(m_ijk.T[::-1])]
    g_ijk = np.concatenate([cells[: n // 2], rng.integers(-12, 25, size=(extra_far, 3))])
    vs = 0.05
    m_c = m_ijk.astype(np.float32) * np.float32(vs)
    g_c = g_ijk.astype(np.float64) * vs
    return g_c, g_ijk, m_c, m_ijk, rng


LATTICE_CASES = [(0, (12, 10, 8), 0.2), (1, (30, 4, 6), 0.1), (2, (9, 9, 9), 0.5), (3, (16, 16, 3), 0.05)]


@pytest.mark.parametrize("seed,dims,frac", LATTICE_CASES)
@pytest.mark.parametrize("k", [1, 5, 8])
def test_lattice_search_equals_naive_with_ties_by_row(seed, dims, frac, k):
    from ovmap.eval3d import neighbour_sets

    g_c, g_ijk, m_c, m_ijk, _ = lattice_scene(seed, dims, frac)
    want, want_tie = naive_sets(g_c, m_c, k)
    assert want_tie.any() or k == 1  # the data really has exact distance ties at the k-th neighbour
    # grid with the given indices, grid with rounded centres, small radius (many queries fall back to the
    # tree), no voxel size at all or too big a grid (tree only), threads: all exact, all with the same tie rule
    for kw in (dict(voxel_size=0.05, query_indices=g_ijk, ref_indices=m_ijk), dict(voxel_size=0.05),
               dict(voxel_size=0.05, max_radius=1), dict(voxel_size=None), dict(voxel_size=0.05, max_grid_cells=10),
               dict(voxel_size=0.05, chunk=37, workers=3)):  # many chunks searched by parallel threads
        ns = neighbour_sets(g_c, m_c, k, **kw)
        np.testing.assert_array_equal(np.sort(ns.rows, axis=1), want, err_msg=str(kw))
        np.testing.assert_array_equal(ns.tie, want_tie, err_msg=str(kw))
        d = m_c.astype(np.float64)[ns.rows] - g_c[:, None, :]
        np.testing.assert_array_equal(ns.rdist, d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2)
        assert (np.diff(ns.rdist, axis=1) >= 0).all()  # sorted by distance
    dist, idx = knn_search(g_c, m_c, k, backend="lattice", voxel_size=0.05)
    np.testing.assert_array_equal(np.sort(idx, axis=1), want)


def naive_tie_labels_differ(q, r, k, labels):
    """Per query: whether the k-th and (k+1)-th squared distances are equal and the rows at that distance
    carry more than one label. A plain loop."""
    q, r = q.astype(np.float64), r.astype(np.float64)
    out = []
    for p in q:
        d = r - p
        rd = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        srt = np.sort(rd)
        out.append(len(r) > k and srt[k - 1] == srt[k] and len(set(labels[rd == srt[k - 1]].tolist())) > 1)
    return np.array(out)


@pytest.mark.parametrize("seed,dims,frac", LATTICE_CASES)
@pytest.mark.parametrize("k", [2, 5, 9])
def test_lattice_ties_by_smaller_row_for_any_row_order(seed, dims, frac, k):
    """Map rows in random order (not lexicographic): ties at the k-th neighbour still go to the smaller row,
    and ``tie`` / ``tie_labels_differ`` (what the balltree backend relies on) match a plain loop."""
    from ovmap.eval3d import neighbour_sets

    g_c, g_ijk, m_c, m_ijk, rng = lattice_scene(seed, dims, frac)
    perm = rng.permutation(len(m_c))
    m_c, m_ijk = m_c[perm], m_ijk[perm]
    labels = rng.integers(0, 3, size=len(m_c))
    want, want_tie = naive_sets(g_c, m_c, k)
    want_differ = naive_tie_labels_differ(g_c, m_c, k, labels)
    assert want_tie.any() and want_differ.any() and not want_differ.all()
    for kw in ({"voxel_size": 0.05, "query_indices": g_ijk, "ref_indices": m_ijk},
               {"voxel_size": 0.05, "chunk": 37, "workers": 2}, {"voxel_size": None}):
        ns = neighbour_sets(g_c, m_c, k, labels=labels, sort=False, with_dist=False, **kw)
        np.testing.assert_array_equal(np.sort(ns.rows, axis=1), want, err_msg=str(kw))
        np.testing.assert_array_equal(ns.tie, want_tie, err_msg=str(kw))
        np.testing.assert_array_equal(ns.tie_labels_differ, want_differ, err_msg=str(kw))


@pytest.mark.parametrize("seed,dims,frac", LATTICE_CASES)
@pytest.mark.parametrize("k", [1, 5, 6])
@pytest.mark.parametrize("num_labels", [2, 5, 50])
def test_balltree_backend_votes_identical_to_sklearn_balltree(seed, dims, frac, k, num_labels):
    """The fast reference path asks BallTree only about ambiguous ties; its labels must equal a full BallTree
    query followed by the smallest-label mode, computed here independently."""
    from sklearn.neighbors import BallTree

    g_c, g_ijk, m_c, m_ijk, rng = lattice_scene(seed, dims, frac)
    labels = rng.integers(0, num_labels, size=len(m_c))
    _, bi = BallTree(m_c.astype(np.float64), leaf_size=40).query(g_c, k=k)
    want = np.array([min(np.unique(row), key=lambda v: (-np.count_nonzero(row == v), v)) for row in labels[bi]])
    for vs in (0.05, None):
        got = knn_vote(g_c, m_c, labels, k=k, backend="balltree", voxel_size=vs)
        np.testing.assert_array_equal(got, want)
    got = match_labels(g_c, m_c, labels, k=k, voxel_size=0.05, gt_indices=g_ijk, map_indices=m_ijk,
                       backend="balltree")
    np.testing.assert_array_equal(got, want)


def test_lattice_vote_tie_goes_to_smaller_row():
    """GT voxel at the origin, 6 map voxels at distance 1 voxel; k = 5: the +z neighbour (largest key) is left
    out, so its label 9 cannot win, whatever the order the rows are given in."""
    from ovmap.eval3d import neighbour_sets

    ijk = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    c = ijk.astype(np.float32) * np.float32(0.05)
    ns = neighbour_sets(np.zeros((1, 3)), c, 5, voxel_size=0.05)
    assert ns.tie.tolist() == [True]
    assert sorted(ns.rows[0].tolist()) == [0, 1, 2, 3, 4]
    lab = np.array([1, 2, 3, 4, 9, 9])  # rows 4 and 5 (+y, +x) tie with the rest; row 5 is dropped
    assert knn_vote(np.zeros((1, 3)), c, lab, k=5, voxel_size=0.05).tolist() == [1]
    lab = np.array([1, 2, 3, 9, 9, 9])
    assert knn_vote(np.zeros((1, 3)), c, lab, k=5, voxel_size=0.05).tolist() == [9]


def test_lattice_rejects_duplicate_map_voxels():
    c = np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match="not unique"):
        knn_vote(np.zeros((1, 3)), c, np.arange(6), k=5, voxel_size=0.05)
