"""Spec section 16: the synthetic known-answer scene, built directly as voxels (no rendering).

Three boxes whose faces lie on voxel-centre planes; the GT is the 990 surface voxels (built here from dense
labelled points on the faces, voxelised like external GT). Map voxels carry oracle values (one-hot
probabilities, or features aligned with orthonormal text embeddings) so the predicted-label rule, the
matching and the metrics all run. Expected numbers are the spec's table 16.2, checked to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap.eval3d import (
    EvalSettings,
    evaluate_scene,
    external_gt,
    independent_query_eval,
    make_class_table,
    onehot_text_embeddings,
    predict_labels_probability_space,
)
from ovmap.eval3d.independent import average_precision

VS = 0.05
# (class index, key min, lattice points per axis)
BOXES = {1: ((0, 0, 0), (7, 7, 7)), 2: ((40, 0, 0), (11, 7, 5)), 3: ((0, 40, 0), (21, 11, 3))}
NAMES = ["chair", "sofa", "table", "bed", "lamp", "sink", "door", "window", "toilet", "shelf", "rug", "tv"]
C = len(NAMES)  # 12 > 10: no C <= 10 quirk


def surface_keys(kmin, n, drop_bottom=False):
    g = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, 3)
    nn = np.asarray(n)
    on_surface = ((g == 0) | (g == nn - 1)).any(axis=1)
    if drop_bottom:
        interior_xy = ((g[:, :2] > 0) & (g[:, :2] < nn[:2] - 1)).all(axis=1)
        on_surface &= ~((g[:, 2] == 0) & interior_xy)
    return g[on_surface] + np.asarray(kmin)


def map_voxels(drop_bottom=False):
    keys, labels = [], []
    for c, (kmin, n) in BOXES.items():
        k = surface_keys(kmin, n, drop_bottom)
        keys.append(k)
        labels.append(np.full(len(k), c))
    keys, labels = np.concatenate(keys), np.concatenate(labels)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(keys))  # append order != lexicographic: evaluate_scene must sort
    return keys[perm], labels[perm]


def dense_face_points(kmin, n, step=0.01):
    """Points on the 6 faces of a box, every ``step`` metres, labelled by the box."""
    lo = np.asarray(kmin) * VS
    hi = lo + (np.asarray(n) - 1) * VS
    pts = []
    for axis in range(3):
        o = [a for a in range(3) if a != axis]
        u = np.arange(lo[o[0]], hi[o[0]] + 1e-9, step)
        v = np.arange(lo[o[1]], hi[o[1]] + 1e-9, step)
        uu, vv = np.meshgrid(u, v, indexing="ij")
        for val in (lo[axis], hi[axis]):
            p = np.zeros((uu.size, 3))
            p[:, axis] = val
            p[:, o[0]] = uu.ravel()
            p[:, o[1]] = vv.ravel()
            pts.append(p)
    return np.concatenate(pts)


@pytest.fixture(scope="module")
def gt():
    table = make_class_table({0: "unlabeled", **{i + 1: n for i, n in enumerate(NAMES)}})
    pts, ids = [], []
    for c, (kmin, n) in BOXES.items():
        p = dense_face_points(kmin, n)
        pts.append(p)
        ids.append(np.full(len(p), float(c)))  # float ids like the HOV-SG patch dumps them
    return external_gt(np.concatenate(pts), np.concatenate(ids), table, VS, scene="synthetic")


def onehot_probs(labels):
    p = np.zeros((len(labels), C + 1), dtype=np.float32)
    p[np.arange(len(labels)), labels] = 1.0
    return p


def test_gt_is_the_990_surface_voxels(gt):
    assert len(gt) == 990
    assert np.bincount(gt.labels, minlength=4)[1:4].tolist() == [218, 250, 522]
    keys, labels = map_voxels()
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    np.testing.assert_array_equal(gt.indices, keys[order])
    np.testing.assert_array_equal(gt.labels, labels[order])


def run(gt, feats_fn, drop_bottom=False, k=5, rc=True, mode="probability", **kw):
    keys, labels = map_voxels(drop_bottom)
    centers = keys.astype(np.float32) * np.float32(VS)
    settings = EvalSettings(reference_compatible=rc, k=k)
    m, _ = evaluate_scene(gt.centers, gt.labels, centers, C, settings, map_features=feats_fn(labels), mode=mode,
                          scene="synthetic", **kw)
    return m


@pytest.mark.parametrize("rc", [True, False])
def test_oracle_probability_space(gt, rc):
    m = run(gt, onehot_probs, rc=rc)
    assert (m.miou, m.fmiou, m.acc) == (1.0, 1.0, 1.0)
    assert np.isnan(m.iou[3:]).all()  # the 9 distractors are absent -> NaN, excluded
    assert m.num_gt_voxels == 990 and m.num_map_voxels == 990


def test_oracle_feature_space(gt):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    text = torch.tensor(q[:C], dtype=torch.float32)  # (12, 16) orthonormal
    proj = torch.zeros(20, 16)
    proj[:16] = torch.eye(16)

    def feats(labels):  # 20-d features whose first 16 dims are the class's text vector
        f = np.zeros((len(labels), 20), dtype=np.float32)
        f[:, :16] = q[labels - 1]
        f[:, 16:] = rng.normal(size=(len(labels), 4))
        return f

    m = run(gt, feats, mode="feature", text_embeds=text, align_to_language=lambda x: x @ proj)
    assert (m.miou, m.fmiou, m.acc) == (1.0, 1.0, 1.0)


def test_confused_oracle(gt):
    def feats(labels):
        return onehot_probs(np.where(labels == 2, 1, labels))  # B's pixels labelled A

    m = run(gt, feats)
    assert m.iou[0] == pytest.approx(218 / 468, abs=1e-12) and m.iou[1] == 0 and m.iou[2] == 1
    assert m.miou == pytest.approx((218 / 468 + 0 + 1) / 3, abs=1e-12)
    assert m.miou == pytest.approx(0.488604, abs=1e-6)
    assert m.fmiou == pytest.approx((218**2 / 468 + 522) / 990, abs=1e-12)
    assert m.fmiou == pytest.approx(0.629845, abs=1e-6)
    assert m.acc == pytest.approx(0.747475, abs=1e-6)


def test_unpredicted_class(gt):
    def feats(labels):  # C's voxels: uniform over the 12 classes -> winning p = 1/12 < 0.1 -> label 0
        p = onehot_probs(labels)
        p[labels == 3] = 0.0
        p[labels == 3, 1:] = 1.0 / C
        return p

    m = run(gt, feats)
    assert m.iou[2] == 0 and m.fp[2] == 0 and m.fn[2] == 522
    assert m.miou == pytest.approx(2 / 3, abs=1e-12)
    assert m.fmiou == pytest.approx(0.472727, abs=1e-6)
    assert m.acc == pytest.approx(468 / 990, abs=1e-12)


@pytest.mark.parametrize("backend", ["lattice", "balltree", "ckdtree", "torch"])
def test_bottom_unseen_k5(gt, backend):
    keys, labels = map_voxels(drop_bottom=True)
    assert np.bincount(labels)[1:].tolist() == [193, 205, 351]
    centers = keys.astype(np.float32) * np.float32(VS)
    s = EvalSettings(reference_compatible=True, k=5, knn_backend=backend)
    m, _ = evaluate_scene(gt.centers, gt.labels, centers, C, s, map_features=onehot_probs(labels),
                          mode="probability", scene="synthetic")
    assert (m.miou, m.fmiou, m.acc) == (1.0, 1.0, 1.0)


def test_bottom_unseen_k0(gt):
    m = run(gt, onehot_probs, drop_bottom=True, k=0)
    assert m.miou == pytest.approx((193 / 218 + 205 / 250 + 351 / 522) / 3, abs=1e-12)
    assert m.miou == pytest.approx(0.792578, abs=1e-6)
    assert m.fmiou == pytest.approx(0.756566, abs=1e-6)
    assert m.acc == pytest.approx(749 / 990, abs=1e-12)


def test_independent_queries_on_the_scene(gt):
    from sklearn.metrics import average_precision_score

    keys, labels = map_voxels(drop_bottom=True)
    centers = keys.astype(np.float32) * np.float32(VS)
    scores = onehot_probs(labels)[:, 1:]  # cos of a one-hot voxel with one-hot text = 1 / 0
    r5 = independent_query_eval(gt.centers, gt.labels, centers, scores, threshold=0.5, k=5, scene="synthetic")
    assert r5.mean_ap == pytest.approx(1.0) and r5.mean_iou == pytest.approx(1.0)
    assert np.isnan(r5.ap[3:]).all()
    r0 = independent_query_eval(gt.centers, gt.labels, centers, scores, threshold=0.5, k=0, voxel_size=VS)
    # IoU at 0.5 with exact matching equals the k = 0 IoU of the main protocol
    np.testing.assert_allclose(r0.iou[:3], [193 / 218, 205 / 250, 351 / 522], atol=1e-12)
    # AP: recompute independently with scikit-learn from the exact-match scores
    from ovmap.eval3d import transfer_scores

    gs = transfer_scores(gt.centers, centers, scores, k=0, voxel_size=VS)
    for c in range(1, 4):
        ref = average_precision_score(gt.labels == c, gs[:, c - 1])
        assert r0.ap[c - 1] == pytest.approx(ref, abs=1e-12)
        assert average_precision(gs[:, c - 1], gt.labels == c) == pytest.approx(ref, abs=1e-12)


def test_probability_space_labels_of_oracle_voxels():
    labels = np.array([1, 2, 3, 3, 1])
    out = predict_labels_probability_space(onehot_probs(labels), reference_compatible=True)
    np.testing.assert_array_equal(out, labels)
    assert onehot_text_embeddings(3).shape == (3, 4)
