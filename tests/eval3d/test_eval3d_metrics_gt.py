"""Metrics against hand-computed confusion counts; class table and GT construction."""

from __future__ import annotations

import numpy as np
import pytest

from ovmap.eval3d import (
    EvalInputError,
    confusion_counts,
    external_gt,
    ids_to_indices,
    lift_gt_from_points,
    make_class_table,
    majority_vote,
    mean_over_scenes,
    scene_metrics,
    voxelize_labels,
)

# gt:   1 1 1 2 2 3 0 0
# pred: 1 2 4 2 1 1 3 2     (class 4 is absent from the GT but predicted once on a valid voxel)
GT = np.array([1, 1, 1, 2, 2, 3, 0, 0])
PRED = np.array([1, 2, 4, 2, 1, 1, 3, 2])


def test_confusion_counts_by_hand():
    tp, fp, fn = confusion_counts(GT, PRED, 4)
    assert tp.tolist() == [1, 1, 0, 0]
    assert fp.tolist() == [2, 1, 0, 1]  # predictions on GT-0 voxels never count
    assert fn.tolist() == [2, 1, 1, 0]


def test_scene_metrics_by_hand():
    m = scene_metrics(GT, PRED, 4, scene="s")
    np.testing.assert_allclose(m.iou[:3], [1 / 5, 1 / 3, 0.0])
    assert np.isnan(m.iou[3])  # absent from GT: excluded even though predicted
    assert m.miou == pytest.approx((1 / 5 + 1 / 3 + 0) / 3, abs=1e-15)
    assert m.fmiou == pytest.approx((3 / 6) * (1 / 5) + (2 / 6) * (1 / 3), abs=1e-15)
    assert m.acc == pytest.approx(2 / 6, abs=1e-15)
    assert m.num_gt_voxels == 6 and m.num_gt_voxels_total == 8
    assert m.gt_voxels.tolist() == [3, 2, 1, 0]


def test_scene_metrics_against_sklearn_confusion_matrix():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(5)
    gt = rng.integers(0, 9, 5000)
    pred = rng.integers(0, 9, 5000)
    gt[gt == 8] = 3  # class 8 absent from the GT
    m = scene_metrics(gt, pred, 8)
    v = gt != 0
    cm = confusion_matrix(gt[v], pred[v], labels=np.arange(9))
    tp = np.diag(cm)[1:]
    fp = cm.sum(0)[1:] - tp
    fn = cm.sum(1)[1:] - tp
    np.testing.assert_array_equal(m.tp, tp)
    np.testing.assert_array_equal(m.fp, fp)
    np.testing.assert_array_equal(m.fn, fn)
    n = tp + fn
    iou = tp / (tp + fp + fn)
    present = n > 0
    assert m.miou == pytest.approx(iou[present].mean(), abs=1e-12)
    assert m.fmiou == pytest.approx((n[present] / n.sum() * iou[present]).sum(), abs=1e-12)
    assert m.acc == pytest.approx((gt[v] == pred[v]).mean(), abs=1e-12)


def test_mean_over_scenes_unweighted_and_refuses_nan():
    a = scene_metrics([1, 1, 2], [1, 1, 2], 2, scene="a")
    b = scene_metrics([1] * 100, [2] * 100, 2, scene="b")
    mean = mean_over_scenes({"a": a, "b": b})
    assert mean.miou == pytest.approx(0.5) and mean.acc == pytest.approx(0.5)  # not pooled (pooled acc = 3/103)
    b.miou = float("nan")
    with pytest.raises(EvalInputError, match=r"\[scene b\].*non-finite"):
        mean_over_scenes({"a": a, "b": b})
    with pytest.raises(ValueError):
        mean_over_scenes([])


# --- class table -----------------------------------------------------------------------------------------------
def test_class_table_reference_rules():
    t = make_class_table({0: "unlabeled", 40: "otherprop", 3: "cabinet", 1: "wall", 39: "otherfurniture"},
                         classes_to_ignore=["otherprop", "otherfurniture"])
    assert t.names == ("", "wall", "cabinet")
    assert t.num_classes == 2 and t.prompts == ["wall", "cabinet"]
    ids = ids_to_indices(np.array([-1, 0, 1, 3, 40, 39], dtype=np.float64), t)
    assert ids.tolist() == [0, 0, 1, 2, 0, 0]
    with pytest.raises(EvalInputError, match=r"\[scene x\].*41.*largest id 40"):
        ids_to_indices([41], t, scene="x")
    with pytest.raises(EvalInputError, match=r"\[scene x\].*\[2\].*missing"):
        ids_to_indices([2], t, scene="x")
    assert ids_to_indices([2], t, strict_unknown=False).tolist() == [0]
    with pytest.raises(EvalInputError, match="non-integral"):
        ids_to_indices([1.5], t)
    with pytest.raises(EvalInputError, match="duplicate class name 'wall'"):
        make_class_table({1: "wall", 2: "wall"}, scene="x")


# --- GT construction -----------------------------------------------------------------------------------------
def test_majority_vote_ignore_competes_and_ties_lowest():
    vox = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    lab = np.array([0, 0, 3, 2, 3, 5, 4, 5, 4])
    assert majority_vote(vox, lab, 3).tolist() == [0, 2, 4]


def test_voxelize_labels_indices_from_float64_and_order():
    pts = np.array([[0.0749, 0, 0], [0.0751, 0, 0], [0.076, 0, 0], [-0.05, 0.1, 0], [0.025, 0, 0]])
    lab = np.array([1, 2, 2, 3, 4])
    gt = voxelize_labels(pts, lab, 0.05, num_classes=4)
    # 0.025 / 0.05 = 0.5 rounds half to even -> 0
    assert gt.indices.tolist() == [[-1, 2, 0], [0, 0, 0], [1, 0, 0], [2, 0, 0]]
    assert gt.labels.tolist() == [3, 4, 1, 2]
    assert gt.centers.dtype == np.float64


def test_external_gt_indices_by_float64_division_half_even():
    """External GT points are voxelised by float64 division with round-half-to-even (ovmap.voxel_keys)."""
    # exact halves (binary-representable at 0.5 m voxels): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0
    gt = voxelize_labels(np.array([[0.25, 0.75, 1.25], [-0.25, 0, 0]]), np.array([1, 2]), 0.5)
    assert gt.indices.tolist() == [[0, 0, 0], [0, 2, 2]]
    # division, not multiplication by the reciprocal: 0.075 / 0.05 = 1.4999999999999998 in float64 -> 1
    assert voxelize_labels(np.array([[0.075, 0, 0]]), np.array([1]), 0.05).indices.tolist() == [[1, 0, 0]]


def test_external_gt_with_float_ids():
    table = make_class_table({i: f"c{i}" for i in range(1, 6)})
    pts = np.array([[0, 0, 0], [0.01, 0, 0], [0.3, 0, 0]], dtype=np.float64)
    gt = external_gt(pts, np.array([2.0, -1.0, 5.0]), table, 0.05)
    # voxel 0 holds one "2" and one ignore (-1 -> 0): tie -> lowest index = 0 (ignored)
    assert gt.labels.tolist() == [0, 5]


def test_lift_gt_from_points_rules():
    # voxel at origin: 985 ignore hits + 15 class-2 hits (1.5 %, C = 37) -> 2 under softmax_thresh, 0 under argmax
    pts = np.zeros((1000, 3), np.float32)
    lab = np.zeros(1000, np.int64)
    lab[:15] = 2
    pts2 = np.full((3, 3), 1.0, np.float32)
    lab2 = np.array([7, 7, 0])
    allp, alll = np.concatenate([pts, pts2]), np.concatenate([lab, lab2])
    a = lift_gt_from_points(allp, alll, 0.05, 37)
    assert a.indices.tolist() == [[0, 0, 0], [20, 20, 20]] and a.labels.tolist() == [2, 7]
    b = lift_gt_from_points(allp, alll, 0.05, 37, rule="argmax_with_ignore")
    assert b.labels.tolist() == [0, 7]
    assert a.centers.dtype == np.float32


# --- average precision (scikit-learn) against a naive per-threshold computation ----------------------------
def naive_average_precision(scores, positives):
    """sum over distinct score thresholds t (high to low) of (R(t) - R(previous t)) * P(t), where everything
    scoring >= t is predicted positive: tied scores enter together."""
    total, prev_recall = 0.0, 0.0
    npos = sum(positives)
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for s, y in zip(scores, positives) if s >= t and y)
        fp = sum(1 for s, y in zip(scores, positives) if s >= t and not y)
        recall = tp / npos
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return total


def test_average_precision_known_answer_with_ties():
    from ovmap.eval3d import average_precision

    # thresholds 0.9: P = 1/2, R = 1/3; 0.5: P = 3/4, R = 1; 0.1: R unchanged -> AP = 1/6 + 1/2
    assert average_precision([0.9, 0.9, 0.5, 0.5, 0.1], [1, 0, 1, 1, 0]) == pytest.approx(2 / 3, abs=1e-15)
    assert np.isnan(average_precision([0.3, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_equals_naive_on_heavy_ties(seed):
    from ovmap.eval3d import average_precision

    rng = np.random.default_rng(seed)
    n = 300
    scores = np.round(rng.uniform(-1, 1, n), 1)  # about 21 distinct values: every threshold is a tie
    positives = rng.random(n) < rng.uniform(0.05, 0.6)
    positives[0] = True
    want = naive_average_precision(scores.tolist(), positives.tolist())
    assert average_precision(scores, positives) == pytest.approx(want, abs=1e-12)
