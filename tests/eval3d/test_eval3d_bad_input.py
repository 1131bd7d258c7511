"""Bad input: each case is a clear error naming the scene (or the documented fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap.eval3d import (
    EvalInputError,
    EvalSettings,
    evaluate_scene,
    external_gt,
    knn_vote,
    lifted_gt_labels,
    make_class_table,
    predict_labels,
    predict_labels_probability_space,
)

VS = np.float32(0.05)
CENTERS = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0]], np.float32) * VS
LABELS = np.array([1, 1, 2, 2, 3, 3])


def ev(gt_c=CENTERS, gt_l=LABELS, map_c=CENTERS, num_classes=3, settings=None, **kw):
    if "map_labels" not in kw and "map_features" not in kw:
        kw["map_labels"] = LABELS
    return evaluate_scene(gt_c, gt_l, map_c, num_classes, settings or EvalSettings(k=1), scene="office0", **kw)


def test_ok_baseline():
    m, pred = ev()
    assert m.miou == 1.0 and pred.tolist() == LABELS.tolist()


def test_empty_map():
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*map is empty"):
        ev(map_c=np.zeros((0, 3), np.float32), map_labels=np.zeros(0, np.int64))


def test_empty_gt_and_all_ignore_gt():
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*GT is empty"):
        ev(gt_c=np.zeros((0, 3)), gt_l=np.zeros(0, np.int64))
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*no valid GT voxel"):
        ev(gt_l=np.zeros(6, np.int64))


def test_fewer_map_voxels_than_k():
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*only 3 voxel\(s\), fewer than k=5"):
        ev(map_c=CENTERS[:3], map_labels=LABELS[:3], settings=EvalSettings(k=5))
    m, _ = ev(map_c=CENTERS[:3], map_labels=LABELS[:3], settings=EvalSettings(k=5, allow_fewer_than_k=True))
    assert np.isfinite(m.miou)  # documented fallback: k_eff = M with a warning


@pytest.mark.parametrize("rc", [True, False])
def test_nan_features(rc):
    f = np.eye(4, dtype=np.float32)[[1, 1, 2, 2, 3, 3]]
    f[2, 1] = np.nan
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*non-finite"):
        ev(map_features=f, mode="probability", settings=EvalSettings(reference_compatible=rc, k=1))


def test_nan_or_inf_centres():
    c = CENTERS.copy()
    c[0, 0] = np.inf
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*non-finite"):
        ev(map_c=c)


def test_gt_ids_missing_from_class_table_and_float_labels():
    table = make_class_table({1: "a", 2: "b", 4: "d"})
    pts = np.zeros((2, 3))
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*\[3\].*missing from the class table"):
        external_gt(pts, [1, 3], table, 0.05, scene="office0")
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*\[9\].*exceed"):
        external_gt(pts, [1, 9], table, 0.05, scene="office0")
    # integral floats are cast, others refused
    assert external_gt(pts, np.array([4.0, 4.0]), table, 0.05).labels.tolist() == [3]
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*non-integral"):
        external_gt(pts, np.array([1.0, 2.5]), table, 0.05, scene="office0")
    m, _ = ev(gt_l=LABELS.astype(np.float64))
    assert m.miou == 1.0
    with pytest.raises(EvalInputError, match="non-integral"):
        ev(gt_l=LABELS + 0.5)
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*exceeds the number of classes"):
        ev(gt_l=np.array([1, 1, 2, 2, 3, 7]))


def test_duplicate_class_names():
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*duplicate class name 'chair'"):
        make_class_table({1: "chair", 2: "table", 3: "chair"}, scene="office0")


def test_text_feature_dimension_mismatch():
    feats = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    text = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*dimension 8 does not match.*dimension 6"):
        ev(map_features=feats, text_embeds=text)
    # through a projection: the message says so
    with pytest.raises(EvalInputError, match="after align_to_language"):
        predict_labels(feats, text, align_to_language=lambda x: x[:, :5], scene="office0")
    ok = predict_labels(feats, text, align_to_language=lambda x: x[:, :6])
    assert ok.shape == (6,)
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*3 text embeddings for C=4"):
        ev(map_features=feats[:, :6], text_embeds=text, num_classes=4)


def test_probability_channel_mismatch_and_bad_shapes():
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*4 probability channels.*C=5"):
        predict_labels_probability_space(np.ones((2, 4)), num_classes=5, scene="office0")
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*has 5 entries"):
        ev(gt_l=LABELS[:5])
    with pytest.raises(ValueError, match="exactly one of"):
        ev(map_features=np.ones((6, 4)), map_labels=LABELS)


def test_knn_label_length_and_zero_hit_lifted_voxels():
    with pytest.raises(EvalInputError, match="map labels has 2 entries"):
        knn_vote(CENTERS, CENTERS, [1, 2], k=1, scene="office0")
    with pytest.raises(EvalInputError, match=r"\[scene office0\].*zero hits"):
        lifted_gt_labels(np.ones((2, 5)), hits=np.array([3, 0]), scene="office0")


def test_bad_text():
    with pytest.raises(EvalInputError, match="zero norm"):
        predict_labels(np.ones((2, 3)), torch.zeros(2, 3))
    with pytest.raises(EvalInputError, match="text embeddings hold non-finite"):
        predict_labels(np.ones((2, 3)), torch.full((2, 3), float("nan")))
