"""Matching GT voxels to map voxels (spec section 8): k nearest map voxels + mode vote, or exact k = 0.

Every backend is an exact nearest-neighbour search; they differ only in how *distance ties* are broken and in
speed. Distances are compared as the reference computes them: squared Euclidean distance in float64 of the
given centres (float32 map centres upcast), summed over x, y, z in that order.

``"lattice"``   (default) exact search on the voxel lattice (numpy, CPU): map voxels are scattered into a
                dense grid of row numbers, each query visits the lattice offsets in shells of
                increasing integer squared distance until it holds k neighbours (a whole shell is always
                read, so a neighbour from an earlier shell is certainly nearer than one from a later shell);
                only the shell holding the k-th neighbour, when it holds more hits than are still needed,
                is ranked by the exact float64 distances. Distance ties at the k-th neighbour go to the
                **smaller map row**, whatever order the rows are given in (= the smaller voxel key when rows
                are in lexicographic voxel order, as ``protocol.prepare_map`` gives them).
                Queries the grid cannot serve (off-lattice centres, a grid over ``max_grid_cells``, no k
                neighbours within ``max_radius`` voxels) go to the exact tree fallback with the same rule.
``"balltree"``  the reference's choice: neighbour *sets* identical to scikit-learn ``BallTree`` (leaf_size
                40, Euclidean, built on the float32 map centres upcast to float64 in the given lexicographic
                order), needed for label-exact reproduction (spec 8.2). :func:`knn_vote` computes them fast:
                the lattice search gives the answer of every query whose k-th and (k+1)-th distances differ
                (the nearest-k set is then unique), and only the queries with an exact tie whose tied
                candidates carry different labels are sent to a real ``BallTree``. :func:`knn_search` with
                this backend calls ``BallTree`` for every query (its exact output, order included).
``"ckdtree"``   scipy ``cKDTree`` with all cores (ties as the tree happens to break them).
``"torch"``     tiled brute force in torch on ``device``: squared distances by matrix product on centred
                coordinates give ``k + 8`` candidates per query, re-ranked by exact float64 distances, ties by
                smaller map row. For off-lattice data on a GPU.

The vote is the mode of the k labels with ties going to the **smallest label** (CPU ``torch.mode`` and
HOV-SG's ``bincount().argmax()``; the CUDA reference is implementation-defined). Label-0 map voxels vote.
There is no distance gate unless ``max_match_dist`` is given (off in paper presets; changes numbers).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovmap.eval3d.common import as_labels, as_points, fail, logger, to_numpy
from ovmap.voxel_keys import indices_from_centers, pack_indices

KNN_BACKENDS = ("lattice", "balltree", "ckdtree", "torch")

LATTICE_MAX_RADIUS = 4
"""Largest neighbour distance (in voxels) the lattice search visits before handing a query to the tree."""
LATTICE_MAX_GRID_CELLS = 1 << 26
"""Largest dense grid (cells, int32 each: 256 MiB) the lattice search allocates."""
_LATTICE_TOL = 1e-3
"""Centres must lie within this fraction of a voxel of ``index * voxel_size`` for the lattice search."""


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


# --------------------------------------------------------------------------------------------------------
# exact lattice search
# --------------------------------------------------------------------------------------------------------
def _rdist(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Squared float64 distances ``((dx*dx) + dy*dy) + dz*dz`` (scikit-learn's summation order, so exact ties
    are the reference's ties); ``q`` (..., 3) and ``r`` (..., 3) broadcast."""
    d = q - r
    out = d[..., 0] * d[..., 0]
    out += d[..., 1] * d[..., 1]
    out += d[..., 2] * d[..., 2]
    return out


@dataclass
class NeighbourSets:
    """The k nearest map rows of each query; ties at the k-th neighbour broken by the smaller map row.

    Attributes:
        rows: (Q, k) int64 map rows, sorted by (squared distance, row) when ``sort=True`` was asked.
        rdist: (Q, k) float64 squared distances of ``rows`` (square metres; partly +inf when asked
            ``with_dist=False``).
        tie: (Q,) bool, True where the k-th and (k+1)-th squared distances are exactly equal: the nearest-k
            set is not unique and another tie rule (e.g. BallTree's traversal order) may pick another set.
        tie_labels_differ: (Q,) bool, filled when labels were given: a tie whose tied candidates (all map
            rows at the k-th distance) carry different labels, the only queries whose vote can depend on the
            tie rule.
    """

    rows: np.ndarray
    rdist: np.ndarray
    tie: np.ndarray
    tie_labels_differ: np.ndarray | None = None


def _rank_hits(qid, cand, rd, need, labels):
    """Rank candidate hits per query by (rdist, row) and keep the first ``need[q]`` of each query (the tree
    fallback's candidates).

    Args:
        qid: (H,) local query id of each hit (0 <= qid < len(need)); cand: (H,) map rows; rd: (H,) squared
            distances; need: how many neighbours each query takes from these hits; labels: (M,) or None.
    Returns:
        ``(qid, cand, rd, rank)`` of the kept hits, and per-query ``tie`` / ``differ`` flags.
    """
    order = np.lexsort((cand, rd, qid))
    qid, cand, rd = qid[order], cand[order], rd[order]
    nq = need.shape[0]
    start = np.searchsorted(qid, np.arange(nq))
    rank = np.arange(qid.shape[0]) - start[qid]
    keep = rank < need[qid]
    tie = np.zeros(nq, dtype=bool)
    differ = None if labels is None else np.zeros(nq, dtype=bool)
    last = np.nonzero(keep & (rank == need[qid] - 1))[0]  # the k-th kept hit of each query ...
    nxt = last + 1  # ... and the first dropped one, if any
    ok = nxt < qid.shape[0]
    last, nxt = last[ok], nxt[ok]
    same = qid[nxt] == qid[last]
    last, nxt = last[same], nxt[same]
    t = rd[nxt] == rd[last]
    tq = qid[last[t]]
    tie[tq] = True
    if labels is not None and tq.size:
        tval = np.full(nq, np.nan)
        tval[tq] = rd[last[t]]
        differ[tq] = _tied_labels_differ(qid, cand, rd, tval, labels)[tq]
    return qid[keep], cand[keep], rd[keep], rank[keep], tie, differ


def _tied_labels_differ(group: np.ndarray, cand: np.ndarray, rd: np.ndarray, tval: np.ndarray,
                        labels: np.ndarray) -> np.ndarray:
    """Per group g: do the hits at its tied distance ``tval[g]`` (NaN: no tie) carry different labels?

    Args:
        group: (H,) group (query) of each hit; cand: (H,) map rows; rd: (H,) squared distances;
            tval: (G,) tied squared distance of each group; labels: (M,) map labels.
    Returns:
        (G,) bool, meaningful for the groups with a tie.
    """
    at = np.nonzero(rd == tval[group])[0]  # every hit at its group's tied distance (NaN never compares equal)
    lab = labels[cand[at]]
    lo = np.full(tval.size, np.iinfo(np.int64).max)
    hi = np.full(tval.size, np.iinfo(np.int64).min)
    np.minimum.at(lo, group[at], lab)
    np.maximum.at(hi, group[at], lab)
    return lo != hi


def _tree_sets(q64: np.ndarray, r64: np.ndarray, k: int, labels: np.ndarray | None):
    """Exact fallback with the lattice's tie rule: cKDTree candidates re-ranked by exact float64 distances,
    and a radius query for the few queries whose candidate list could miss a neighbour tied with the k-th."""
    from scipy.spatial import cKDTree

    nq, m = q64.shape[0], r64.shape[0]
    # a few left-over queries: a tree that builds fast (its queries are slower, but there are few)
    few = nq * 8 < m
    tree = cKDTree(r64, balanced_tree=not few, compact_nodes=not few)
    kk = min(k + 4, m)
    _, idx = tree.query(q64, k=kk, workers=-1)
    idx = np.asarray(idx, dtype=np.int64).reshape(nq, kk)
    rd = _rdist(q64[:, None, :], r64[idx])
    qid = np.repeat(np.arange(nq), kk)
    kq, kc, kr, rank, tie, differ = _rank_hits(qid, idx.reshape(-1), rd.reshape(-1), np.full(nq, k), labels)
    rows = np.empty((nq, k), dtype=np.int64)
    rdist = np.empty((nq, k))
    rows[kq, rank], rdist[kq, rank] = kc, kr
    if kk < m:  # rows beyond the kk-th are at least as far as it (up to rounding): complete unless it ties
        for i in np.nonzero(rd.max(axis=1) <= rdist.max(axis=1) * (1 + 1e-9))[0]:
            radius = float(np.sqrt(rdist[i].max())) * (1 + 1e-7) + 1e-12
            c = np.asarray(tree.query_ball_point(q64[i], radius), dtype=np.int64)
            r_i = _rdist(q64[i][None, :], r64[c])
            _, kc1, kr1, rk1, t1, d1 = _rank_hits(np.zeros(c.size, dtype=np.int64), c, r_i, np.array([k]), labels)
            rows[i, rk1], rdist[i, rk1], tie[i] = kc1, kr1, t1[0]
            if differ is not None:
                differ[i] = d1[0]
    return rows, rdist, tie, differ


def _lattice_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All integer offsets with |o|^2 <= radius^2, sorted by |o|^2 then lexicographically; and their |o|^2."""
    r = np.arange(-radius, radius + 1)
    o = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    d2 = (o * o).sum(1)
    keep = d2 <= radius * radius
    o, d2 = o[keep], d2[keep]
    order = np.lexsort((o[:, 2], o[:, 1], o[:, 0], d2))
    return o[order], d2[order]


def _shell_blocks(d2: np.ndarray, k: int, density: float) -> np.ndarray:
    """Bounds of the blocks of offsets a query visits in turn: first the shells expected to hold ``k / 2`` map
    voxels at this occupancy (nearly every query needs them; one pass saves per-block work), then one shell
    per block (a query stops after the shell holding its k-th neighbour: no lookups beyond it)."""
    ends = np.r_[np.nonzero(np.diff(d2))[0] + 1, d2.size]
    first = int(np.searchsorted(ends * density, 0.5 * k))  # first shell end expected to hold k / 2 voxels
    return np.r_[0, ends[min(first, ends.size - 1):]]


def _rdist_pairs(qt: np.ndarray, rt: np.ndarray, qi: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """:func:`_rdist` of query ``qi`` and map row ``ri`` (each (N,)), from the (3, Q) and (3, M) transposed
    centres: contiguous gathers of one coordinate are much cheaper than gathering (N, 3) rows."""
    d = np.take(qt, qi, axis=1)
    d -= np.take(rt, ri, axis=1)
    d *= d
    return (d[0] + d[1]) + d[2]


def _group_ranks(key: np.ndarray, row: np.ndarray, gstart: np.ndarray, size: np.ndarray, big: int = 16):
    """Rank of each element within its group by (key, row); ``key``, ``row`` (G,), the groups the runs of
    ``size`` elements starting at ``gstart``.

    The groups are the hits of one shell, mostly 2 to 6: groups of one length are ranked together by
    comparing each element with every other (g passes over a (groups, g) array); groups longer than ``big``
    (dense maps) are lexsorted instead, which is cheaper than their g^2 comparisons.
    """
    rank = np.zeros(key.size, dtype=np.int64)
    lengths = np.bincount(size)
    by_length = np.argsort(size, kind="stable")
    ends = np.cumsum(lengths)
    for g in np.nonzero(lengths[2:])[0] + 2:
        idx = gstart[by_length[ends[g] - lengths[g] : ends[g]]][:, None] + np.arange(g)  # (groups, g)
        kk, rr = key[idx], row[idx]
        if g > big:
            order = np.lexsort((rr, kk), axis=1)
            rank[np.take_along_axis(idx, order, 1)] = np.arange(g)
            continue
        r = np.zeros(idx.shape, dtype=np.int8)
        for j in range(g):  # r[:, i] counts the elements j ranking before element i
            kj, rj = kk[:, j : j + 1], rr[:, j : j + 1]
            r += (kj < kk) | ((kj == kk) & (rj < rr))
        rank[idx] = r
    return rank


def _rank_straddle(gq, gslot, grow, qt, rt, k, labels):
    """Rank the hits of each query's straddling shell by (squared distance, row) and keep those that fit.

    Args:
        gq: (G,) query of each hit, each query's hits one contiguous run; gslot: (G,) the place the hit
            would take in search order (consecutive within a query; the k-th place, ``k - 1``, and the next
            one occur in every run); grow: (G,) map rows; qt, rt: (3, Q) and (3, M) centres; labels: (M,)
            or None.
    Returns:
        ``(query, slot, row, rdist)`` of the kept hits, the queries with a tie at the k-th neighbour, and for
        those whether the tied candidates carry different labels (None without labels).
    """
    grd = _rdist_pairs(qt, rt, gq, grow)
    first = np.r_[True, gq[1:] != gq[:-1]]
    gstart = np.flatnonzero(first)
    size = np.diff(np.r_[gstart, gq.size])
    slot = gslot - (np.arange(gq.size) - np.repeat(gstart, size)) + _group_ranks(grd, grow, gstart, size)
    keep = np.flatnonzero(slot < k)
    kth, nxt = np.flatnonzero(slot == k - 1), np.flatnonzero(slot == k)  # one of each per group, same order
    t = grd[nxt] == grd[kth]
    tq = gq[kth[t]]
    tdiff = None
    if labels is not None:
        tdiff = np.zeros(tq.size, dtype=bool)
        if tq.size:
            tval = np.full(gstart.size, np.nan)
            tval[t] = grd[kth[t]]  # groups are in the order of kth
            tdiff = _tied_labels_differ(np.cumsum(first) - 1, grow, grd, tval, labels)[t]
    return gq[keep], slot[keep], grow[keep], grd[keep], tq, tdiff


def _box(ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis min and max of (N, 3) indices (one column at a time: ``min(axis=0)`` is several times slower)."""
    return (np.array([ijk[:, j].min() for j in range(3)]), np.array([ijk[:, j].max() for j in range(3)]))


def _on_lattice(c64: np.ndarray, ijk: np.ndarray, voxel_size: float) -> bool:
    if c64.shape[0] == 0:
        return True
    return bool(np.abs(c64 - ijk * float(voxel_size)).max() <= _LATTICE_TOL * voxel_size)


def neighbour_sets(
    query: Any,
    ref: Any,
    k: int,
    voxel_size: float | None = None,
    query_indices: Any | None = None,
    ref_indices: Any | None = None,
    labels: Any | None = None,
    max_radius: int = LATTICE_MAX_RADIUS,
    max_grid_cells: int = LATTICE_MAX_GRID_CELLS,
    chunk: int = 1 << 15,
    sort: bool = True,
    with_dist: bool = True,
    workers: int = -1,
) -> NeighbourSets:
    """Exact k nearest map voxels of each query, ties at the k-th neighbour by smaller map row ("lattice").

    Why it is exact: with centres within 1e-3 voxel of the lattice, the squared distances of two lattice
    offsets whose integer squared lengths differ are ordered like those lengths (up to ``max_radius`` voxels
    the rounding error is below 1 % of the gap), so whole shells of equal integer length are taken in order
    and never tie with each other; only the shell holding the k-th neighbour (the "straddling" shell, when it
    holds more hits than are still needed) is ranked by (exact float64 distance, map row).

    How: per chunk of queries and per block of shells, a (A, S) gather of a boolean occupancy grid finds the
    hits; ``np.flatnonzero`` lists them per query in (shell, offset) order, so a hit's place among the
    neighbours is its index among the query's hits. Straddling shells (groups of a few hits) are collected
    over the chunk and ranked together.

    Args:
        query: (Q, 3) query centres in metres (float32 or float64; used as given, upcast to float64).
        ref: (M, 3) map centres in metres (float32 as the map stores them), one row per voxel.
        k: number of neighbours, 1 <= k <= M.
        voxel_size: lattice spacing in metres; ``None`` (or off-lattice centres) skips the grid and uses the
            exact tree fallback for every query.
        query_indices, ref_indices: (Q, 3) / (M, 3) voxel indices of the centres if known (else rounded).
        labels: (M,) map labels; when given, ``tie_labels_differ`` is filled.
        sort: sort each row by (distance, row); not needed for votes.
        workers: threads searching query chunks in parallel (-1: all cores, like cKDTree's ``workers=-1``).
        with_dist: fill ``rdist`` for every neighbour; when False only the neighbours ranked in a straddling
            shell (and those of tree-fallback queries) carry their distance, the others are +inf: a plain
            vote needs none.
    """
    q64 = np.ascontiguousarray(to_numpy(query), dtype=np.float64)
    r64 = np.ascontiguousarray(to_numpy(ref), dtype=np.float64)
    nq, m = q64.shape[0], r64.shape[0]
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    rows = np.full((nq, k), -1, dtype=np.int64)
    rdist = np.full((nq, k), np.inf)
    rows_flat, rdist_flat = rows.reshape(-1), rdist.reshape(-1)
    tie = np.zeros(nq, dtype=bool)
    differ = None if lab is None else np.zeros(nq, dtype=bool)
    pending = np.arange(nq)

    grid_ok = voxel_size is not None and nq > 0
    if grid_ok:
        qi = (np.asarray(to_numpy(query_indices), dtype=np.int64) if query_indices is not None
              else indices_from_centers(q64, voxel_size))
        ri = (np.asarray(to_numpy(ref_indices), dtype=np.int64) if ref_indices is not None
              else indices_from_centers(r64, voxel_size))
        grid_ok = _on_lattice(q64, qi, voxel_size) and _on_lattice(r64, ri, voxel_size)
    if grid_ok:
        radius = int(max_radius)
        (lo_m, hi_m), (lo_q, hi_q) = _box(ri), _box(qi)
        lo, hi = np.minimum(lo_m, lo_q) - radius, np.maximum(hi_m, hi_q) + radius
        if np.prod((hi - lo + 1).astype(np.float64)) > max_grid_cells:  # GT far outside the map: map box only
            lo, hi = lo_m - radius, hi_m + radius
        dims = hi - lo + 1
        density = m / float(np.prod((hi_m - lo_m + 1).astype(np.float64)))
        if np.prod(dims.astype(np.float64)) > max_grid_cells:
            grid_ok = False
            logger.info("lattice kNN: a grid of %s cells exceeds %d; using the tree search", dims.tolist(),
                        max_grid_cells)
        elif density * len(_lattice_offsets(radius)[1]) < 2 * k:
            grid_ok = False  # too sparse: most queries would not find k neighbours within the radius
            logger.info("lattice kNN: map occupies %.2g of its box; using the tree search", density)
    if grid_ok:
        strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
        grid = np.full(int(np.prod(dims)), -1, dtype=np.int32)
        grid[(ri - lo) @ strides] = np.arange(m, dtype=np.int32)
        occupied = grid >= 0  # scanned first: a quarter of the grid's bytes
        if np.count_nonzero(occupied) != m:
            raise ValueError("map voxel centres are not unique (two rows share a voxel)")
        if np.all(lo_q - radius >= lo) and np.all(hi_q + radius <= hi):  # the usual case
            served, pending = np.arange(nq), np.zeros(0, dtype=np.int64)
        else:
            inside = np.all((qi - radius >= lo) & (qi + radius <= hi), axis=1)
            served, pending = np.nonzero(inside)[0], np.nonzero(~inside)[0]
        offs, d2 = _lattice_offsets(radius)
        bounds = _shell_blocks(d2, k, density)
        lin_dtype = np.int32 if grid.size < (1 << 31) else np.int64  # halves the index traffic
        off_lin = (offs @ strides).astype(lin_dtype)
        qlin_all = ((qi - lo) @ strides).astype(lin_dtype)
        qt, rt = np.ascontiguousarray(q64.T), np.ascontiguousarray(r64.T)
        left_over = []

        def search(ids: np.ndarray) -> None:
            """Search the queries ``ids`` (a chunk); writes disjoint rows, so chunks run in parallel."""
            # ids: query rows of this chunk still searching, qlin: their grid cells, found: neighbours held
            qlin = qlin_all[ids]
            found = np.zeros(ids.size, dtype=np.int64)
            size = ids.size * int(np.diff(bounds).max())
            cell_buf, hit_buf = np.empty(size, dtype=lin_dtype), np.empty(size, dtype=bool)
            straddle = []  # (query, slot, row) of the hits of straddling shells, one entry per block
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                if ids.size == 0:
                    break
                a, s = ids.size, s1 - s0
                # (A, S) grid cells, then occupied or not ("clip" skips the bounds check: the queries served
                # here lie radius cells inside the grid)
                cell = np.add(qlin[:, None], off_lin[None, s0:s1], out=cell_buf[: a * s].reshape(a, s))
                hit = np.take(occupied, cell, out=hit_buf[: a * s].reshape(a, s), mode="clip")
                hp = np.flatnonzero(hit)  # hits, per query in (shell, offset) order
                hq = hp // s
                hrow = grid[cell.reshape(-1)[hp]]  # int32 map rows
                cnt = np.bincount(hq, minlength=a)
                tot = found + cnt
                first = np.cumsum(cnt) - cnt  # index of each query's first hit
                slot = np.arange(hp.size) - (first - found)[hq]  # the place each hit takes in search order
                # the shell holding the k-th neighbour "straddles" when it holds a further hit: only its
                # hits need ranking by exact distance; earlier shells are all nearer, later ones all farther
                over = np.nonzero(tot > k)[0]
                kth = first[over] + (k - 1 - found[over])  # hit index of the k-th neighbour
                strad = np.zeros(a, dtype=bool)
                if d2[s0] == d2[s1 - 1]:  # a single shell
                    strad[over] = True  # kth + 1 is a hit of the same query and shell
                    ranked = strad[hq]
                else:
                    hd2 = d2[s0:s1][hp - hq * s]
                    strad[over] = hd2[kth + 1] == hd2[kth]
                    kd2 = np.full(a, -1, dtype=d2.dtype)  # shell to rank (-1: none)
                    kd2[over] = np.where(strad[over], hd2[kth], -1)
                    ranked = hd2 == kd2[hq]
                take = np.nonzero((slot < k) & ~ranked)[0]
                flat = ids[hq[take]] * k + slot[take]
                rows_flat[flat] = hrow[take]
                if with_dist:
                    rdist_flat[flat] = _rdist_pairs(qt, rt, flat // k, hrow[take])
                if strad.any():  # ranked once per chunk: many small calls would cost more than the work
                    gi = np.nonzero(ranked)[0]
                    straddle.append((ids[hq[gi]], slot[gi], hrow[gi]))
                more = np.flatnonzero(tot < k)
                ids, qlin, found = ids[more], qlin[more], tot[more]
            if straddle:
                gq, gslot, grow = (np.concatenate(parts) for parts in zip(*straddle))
                kq, kslot, krow, krd, tq, tdiff = _rank_straddle(gq, gslot, grow, qt, rt, k, lab)
                rows_flat[kq * k + kslot], rdist_flat[kq * k + kslot] = krow, krd
                tie[tq] = True
                if differ is not None:
                    differ[tq] = tdiff
            if ids.size:
                left_over.append(ids)

        chunks = [served[c0 : c0 + chunk] for c0 in range(0, served.size, chunk)]
        n_workers = min(len(chunks), os.cpu_count() or 1) if workers < 0 else max(1, min(workers, len(chunks)))
        if n_workers > 1:  # numpy releases the GIL in the gathers and reductions
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(search, chunks))
        else:
            for ids in chunks:
                search(ids)
        if left_over:
            pending = np.concatenate([pending, *left_over])
    if pending.size:
        tr, trd, tt, tdif = _tree_sets(q64[pending], r64, k, lab)
        rows[pending], rdist[pending], tie[pending] = tr, trd, tt
        if differ is not None:
            differ[pending] = tdif
    if sort and nq:
        o1 = np.argsort(rows, axis=1, kind="stable")
        rows, rdist = np.take_along_axis(rows, o1, 1), np.take_along_axis(rdist, o1, 1)
        o2 = np.argsort(rdist, axis=1, kind="stable")
        rows, rdist = np.take_along_axis(rows, o2, 1), np.take_along_axis(rdist, o2, 1)
    return NeighbourSets(rows, rdist, tie, differ)


# --------------------------------------------------------------------------------------------------------
# public search / vote API
# --------------------------------------------------------------------------------------------------------
def knn_search(
    query: Any,
    ref: Any,
    k: int,
    backend: str = "lattice",
    device: str | torch.device = "cpu",
    tile_elems: int | None = None,
    voxel_size: float | None = None,
    query_indices: Any | None = None,
    ref_indices: Any | None = None,
    scene: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest ``ref`` points of each ``query`` point.

    Returns ``(dist, idx)``, each (Q, k), sorted by distance (metres). ``ref`` should be the float32 map
    centres; they are upcast to float64 like the reference does (``BallTree(xyz.cpu())``). ``voxel_size``
    (metres) enables the grid of the ``"lattice"`` backend; without it the lattice backend runs its exact
    tree fallback (same results, slower).
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
    if backend == "lattice":
        ns = neighbour_sets(q, r, k, voxel_size, query_indices, ref_indices)
        return np.sqrt(ns.rdist), ns.rows
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
    if labels.ndim != 2:
        raise ValueError(f"labels must be (Q, k), got {tuple(labels.shape)}")
    if labels.shape[1] == 1:
        return labels[:, 0].clone() if is_t else np.asarray(labels[:, 0], dtype=np.int64)
    if is_t:
        srt = torch.sort(labels.long(), dim=1).values
        counts = (srt[:, :, None] == srt[:, None, :]).sum(dim=2)  # (Q, k): occurrences of each entry's label
        first = counts.argmax(dim=1, keepdim=True)  # first maximum = smallest label (rows are sorted)
        return torch.gather(srt, 1, first)[:, 0]
    srt = np.sort(np.asarray(labels, dtype=np.int64), axis=1)
    # equal labels are runs in a sorted row: the first longest run is the mode with the smallest label
    best = srt[:, 0].copy()
    run = np.ones(srt.shape[0], dtype=np.int32)  # length of the run ending at column j
    best_len = run.copy()
    for j in range(1, srt.shape[1]):
        same = srt[:, j] == srt[:, j - 1]
        run += 1
        run *= same
        run += ~same  # a new run starts at 1
        np.copyto(best, srt[:, j], where=run > best_len)  # strictly longer: earlier (smaller) labels keep ties
        np.maximum(best_len, run, out=best_len)
    return best


def knn_vote(
    gt_centers: Any,
    map_centers: Any,
    map_labels: Any,
    k: int = 5,
    backend: str = "lattice",
    device: str | torch.device = "cpu",
    max_match_dist: float | None = None,
    allow_fewer_than_k: bool = False,
    voxel_size: float | None = None,
    gt_indices: Any | None = None,
    map_indices: Any | None = None,
    scene: str | None = None,
) -> np.ndarray:
    """Predicted label of each GT voxel: the mode of the labels of its k nearest map voxels (GT -> map).

    ``backend="lattice"`` breaks distance ties at the k-th neighbour by smaller map row;
    ``backend="balltree"`` gives labels identical to a scikit-learn ``BallTree`` query (the reference), asking
    the tree only about the queries with an exact tie among differently labelled candidates (module doc).
    ``voxel_size`` (metres) and the optional (N, 3) voxel indices enable the lattice grid.

    ``max_match_dist`` (off by default and in paper presets): neighbours farther than this (metres) do not
    vote; a GT voxel with no neighbour within the gate gets prediction 0 (a false negative). Changes numbers.
    """
    r = as_points(map_centers, "map voxel centres", scene)
    lab = as_labels(map_labels, "map labels", scene, n=r.shape[0])
    k = _check_k(k, r.shape[0], scene, allow_fewer_than_k)
    if k == 0:
        raise ValueError("knn_vote needs k >= 1; use exact_match for k = 0")
    if backend not in KNN_BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; expected one of {KNN_BACKENDS}")
    q = as_points(gt_centers, "GT voxel centres", scene)
    if q.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if backend in ("lattice", "balltree"):
        ns = neighbour_sets(q, r, k, voxel_size, gt_indices, map_indices, labels=lab if backend == "balltree"
                            else None, sort=False, with_dist=max_match_dist is not None)
        idx, rd = ns.rows, ns.rdist
        if backend == "balltree" and ns.tie_labels_differ.any():
            from sklearn.neighbors import BallTree

            amb = np.nonzero(ns.tie_labels_differ)[0]
            tree = BallTree(r.astype(np.float64), leaf_size=40)
            _, bi = tree.query(q[amb].astype(np.float64), k=k)
            idx[amb] = bi
            rd[amb] = _rdist(q[amb].astype(np.float64)[:, None, :], r.astype(np.float64)[bi])
        dist = None if max_match_dist is None else np.sqrt(rd)
    else:
        dist, idx = knn_search(q, r, k, backend=backend, device=device, scene=scene)
    nl = lab[idx]
    if max_match_dist is not None:
        far = dist > max_match_dist
        out = mode_smallest(_gate(nl, far))
        return np.where((~far).sum(axis=1) == 0, 0, out)
    return mode_smallest(nl)


def _gate(nl: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Replace gated-out neighbour labels by distinct values above every real label: each then counts once and
    loses every tie (smallest label wins), so only real labels can win unless a row has none."""
    q, k = nl.shape
    top = int(nl.max()) + 1 if nl.size else 1
    return np.where(far, top + np.arange(k)[None, :], nl)


def exact_match(
    gt_indices: Any,
    map_indices: Any,
    map_labels: Any,
    scene: str | None = None,
) -> np.ndarray:
    """k = 0 (spec 8.1): the prediction of each GT voxel is the label of the map voxel with the same voxel
    index; a GT voxel with no map voxel gets 0 (a false negative). Map voxels without GT have GT 0 and never
    count, so only the GT voxels are returned (equivalent to the reference's union on the grid).

    Args:
        gt_indices, map_indices: (Q, 3) and (M, 3) integer voxel indices.
        map_labels: (M,) labels of the map voxels.
    """
    gi = to_numpy(gt_indices)
    mi = to_numpy(map_indices)
    if gi.ndim != 2 or gi.shape[1] != 3 or mi.ndim != 2 or mi.shape[1] != 3:
        raise fail(scene, f"voxel indices must be (N, 3), got {gi.shape} and {mi.shape}")
    lab = as_labels(map_labels, "map labels", scene, n=mi.shape[0])
    if mi.shape[0] == 0:
        raise fail(scene, "the map is empty (0 voxels)")
    mk = pack_indices(mi.astype(np.int64))
    order = np.argsort(mk, kind="stable")
    mk_sorted = mk[order]
    if mk_sorted.size > 1 and (mk_sorted[1:] == mk_sorted[:-1]).any():
        raise fail(scene, "map voxel indices are not unique")
    gk = pack_indices(gi.astype(np.int64))
    pos = np.searchsorted(mk_sorted, gk)
    pos_c = np.minimum(pos, mk_sorted.size - 1)
    hit = mk_sorted[pos_c] == gk
    out = np.zeros(gi.shape[0], dtype=np.int64)
    out[hit] = lab[order[pos_c[hit]]]
    return out


def match_labels(
    gt_centers: Any,
    map_centers: Any,
    map_labels: Any,
    k: int = 5,
    voxel_size: float | None = None,
    gt_indices: Any | None = None,
    map_indices: Any | None = None,
    backend: str = "lattice",
    device: str | torch.device = "cpu",
    max_match_dist: float | None = None,
    allow_fewer_than_k: bool = False,
    scene: str | None = None,
) -> np.ndarray:
    """Prediction for each GT voxel: :func:`knn_vote` for k >= 1, :func:`exact_match` for k = 0 (which needs
    the (N, 3) voxel indices, given directly or rounded from the centres with ``voxel_size``)."""
    if k == 0:
        if gt_indices is None or map_indices is None:
            if voxel_size is None:
                raise ValueError("k = 0 (exact matching) needs voxel_size or the voxel indices")
            gt_indices = indices_from_centers(to_numpy(gt_centers), voxel_size) if gt_indices is None else gt_indices
            map_indices = (indices_from_centers(to_numpy(map_centers), voxel_size) if map_indices is None
                           else map_indices)
        return exact_match(gt_indices, map_indices, map_labels, scene=scene)
    return knn_vote(gt_centers, map_centers, map_labels, k=k, backend=backend, device=device,
                    max_match_dist=max_match_dist, allow_fewer_than_k=allow_fewer_than_k, voxel_size=voxel_size,
                    gt_indices=gt_indices, map_indices=map_indices, scene=scene)
