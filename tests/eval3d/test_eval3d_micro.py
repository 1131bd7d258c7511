"""Spec 16.3 micro-tests from hand-set voxels, plus the predicted-label rule's quirks (spec 6)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from ovmap.eval3d import (
    knn_vote,
    lifted_gt_labels,
    mode_smallest,
    predict_labels,
    predict_labels_probability_space,
)

VS = np.float32(0.05)


# --- kNN tie ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["lattice", "balltree", "ckdtree", "torch"])
def test_knn_mode_tie_smallest_label(backend):
    keys = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [4, 0, 0]])
    centers = keys.astype(np.float32) * VS
    pred = knn_vote(np.zeros((1, 3), np.float32), centers, np.array([1, 2, 2, 3, 3]), k=5, backend=backend)
    assert pred.tolist() == [2]


def test_mode_smallest_matches_cpu_torch_mode():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(2000, 5))
    ours = mode_smallest(lab)
    ref = torch.mode(torch.as_tensor(lab), dim=1).values.numpy()  # CPU torch.mode: smallest label on ties
    np.testing.assert_array_equal(ours, ref)
    naive = np.array([np.bincount(r).argmax() for r in lab])  # HOV-SG's rule
    np.testing.assert_array_equal(ours, naive)
    for k in (1, 2, 3, 8, 11):  # other row lengths (runs of equal labels of every length)
        lab = rng.integers(0, 4, size=(2000, k))
        np.testing.assert_array_equal(mode_smallest(lab), [np.bincount(r).argmax() for r in lab])


# --- lifted-GT threshold (C = 37) ---------------------------------------------------------------------------
def mixed(frac_c, num_classes=37, c=5):
    v = np.zeros((1, num_classes + 1))
    v[0, 0] = 1 - frac_c
    v[0, c] = frac_c
    return v


def test_lifted_gt_threshold_boundary():
    assert lifted_gt_labels(mixed(0.013)).tolist() == [0]
    assert lifted_gt_labels(mixed(0.014)).tolist() == [5]
    # the same through hit counts (sums + hits)
    counts = np.zeros((2, 38))
    counts[0, 0], counts[0, 5] = 987, 13
    counts[1, 0], counts[1, 5] = 986, 14
    assert lifted_gt_labels(counts, hits=counts.sum(1)).tolist() == [0, 5]
    # exact boundary: exp(100 x / sqrt((1-x)^2 + x^2)) = (C-1)/9
    lo, hi = 0.0, 0.1
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if mid / math.hypot(1 - mid, mid) >= math.log(36 / 9) / 100 else (mid, hi)
    analytic = hi
    assert round(analytic, 5) == 0.01367
    lo, hi = 0.0, 0.1
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if lifted_gt_labels(mixed(mid))[0] == 5 else (mid, hi)
    assert abs(hi - analytic) < 2e-6  # float32 arithmetic moves it by ~1e-7
    # the RayFronts-paper rule: argmax including ignore
    assert lifted_gt_labels(mixed(0.014), rule="argmax_with_ignore").tolist() == [0]
    assert lifted_gt_labels(mixed(0.6), rule="argmax_with_ignore").tolist() == [5]


def test_oracle_min_fraction_table():
    """Spec 6.4: minimum labelled fraction ~0.20 % at C = 12, 1.37 % at C = 37, 2.35 % at C = 101."""
    for num_classes, boundary in [(12, 0.0020), (37, 0.0137), (101, 0.0235)]:
        assert lifted_gt_labels(mixed(boundary * 0.97, num_classes, 3)).tolist() == [0]
        assert lifted_gt_labels(mixed(boundary * 1.03, num_classes, 3)).tolist() == [3]


# --- C <= 10 quirk ------------------------------------------------------------------------------------------
def onehot(labels, num_classes):
    p = np.zeros((len(labels), num_classes + 1), np.float32)
    p[np.arange(len(labels)), labels] = 1
    return p


@pytest.mark.parametrize("rc", [True, False])
def test_few_classes_quirk(rc, caplog):
    with caplog.at_level(logging.WARNING, logger="ovmap.eval3d"):
        # C = 10: an all-ignore voxel becomes class 1 when a pure class-1 voxel shares its chunk
        assert predict_labels_probability_space(onehot([1, 0], 10), reference_compatible=rc).tolist() == [1, 1]
    assert "C=10 <= 10" in caplog.text
    # alone in its chunk (every class denoised) -> 0
    assert predict_labels_probability_space(onehot([0], 10), reference_compatible=rc).tolist() == [0]
    assert predict_labels_probability_space(onehot([1, 0], 10), chunk_size=1, denoise_scope="chunk",
                                            reference_compatible=rc).tolist() == [1, 0]
    # C = 11: p = 1/11 < 0.1 -> 0
    assert predict_labels_probability_space(onehot([1, 0], 11), reference_compatible=rc).tolist() == [1, 0]
    # lifted GT (denoising off): all-ignore -> class 1 at C = 10 even alone, 0 at C = 11
    assert lifted_gt_labels(onehot([0], 10)).tolist() == [1]
    assert lifted_gt_labels(onehot([0], 11)).tolist() == [0]


# --- chunked prompt denoising -------------------------------------------------------------------------------
def features_for_probs(probs, temperature=100.0):
    """Unit feature vectors whose softmax(100 cos) against the first C unit vectors equals ``probs``."""
    probs = np.asarray(probs, np.float64)
    logits = np.log(np.maximum(probs, 1e-300))
    logits -= logits.max(axis=1, keepdims=True)
    cos = 0.2 + logits / temperature
    cos = np.maximum(cos, -0.1)  # p ~ 0 entries (ratio < e^-30): any smaller cos is fine
    extra = np.sqrt(1 - (cos**2).sum(axis=1, keepdims=True))
    return np.concatenate([cos, extra], axis=1)


def test_chunked_denoising():
    n = 10001
    probs = np.tile([0.999, 0.0005, 0.0005], (n, 1))  # pure class 1
    probs[5] = [0.30, 0.25, 0.45]  # chunk 1: class 3 is its best but never reaches 0.5 in chunk 1
    probs[10000] = [0.4, 0.0, 0.6]  # chunk 2 (alone): class 3 reaches 0.6, class 1 only 0.4
    feats = features_for_probs(probs).astype(np.float32)
    text = np.eye(3, 4, dtype=np.float32)
    p = torch.softmax(100 * torch.as_tensor(feats[[5, 10000]]) @ torch.as_tensor(text).T, dim=1)
    np.testing.assert_allclose(p.numpy(), probs[[5, 10000]], atol=1e-4)

    chunk = predict_labels(feats, text, reference_compatible=True)  # chunk scope, 10000 voxels
    assert chunk[5] == 1  # class 3 removed in chunk 1
    assert chunk[10000] == 3  # kept in chunk 2 (class 1 removed there)
    assert (np.delete(chunk, [5, 10000]) == 1).all()
    glob = predict_labels(feats, text, reference_compatible=False)  # global scope
    assert glob[5] == 3 and glob[10000] == 3
    np.testing.assert_array_equal(predict_labels(feats, text, reference_compatible=False, cache_bytes=0), glob)
    # the scope can be chosen independently of the other switches
    assert predict_labels(feats, text, denoise_scope="global", reference_compatible=True)[5] == 3


def test_prediction_threshold():
    """The winning (post-denoising) probability must reach 0.1; otherwise label 0."""
    text = np.eye(12, 13, dtype=np.float32)
    base = np.full(12, 0.0)
    rows = []
    for top in (0.09, 0.11):
        r = base.copy()
        r[0], r[1] = 0.0, top
        r[2:] = (1 - top) / 10  # 10 classes share the rest, each < top
        rows.append(r)
    pure = np.zeros(12)
    pure[1] = 1.0  # keeps class 2 from being denoised
    feats = features_for_probs(np.array([rows[0], rows[1], pure])).astype(np.float32)
    out = predict_labels(feats, text, reference_compatible=True)
    assert out.tolist() == [0, 2, 2]


# --- zero-norm / NaN rows -----------------------------------------------------------------------------------
def test_zero_norm_voxel_reference_vs_default():
    probs = onehot([2, 0, 2], 12)
    probs[1] = 0.0  # every class zeroed in probability space
    rc = predict_labels_probability_space(probs, reference_compatible=True)
    assert rc.tolist() == [2, 1, 2]  # NaN path -> label 1 (and denoising disabled in the chunk)
    rec = predict_labels_probability_space(probs, reference_compatible=False)
    assert rec.tolist() == [2, 0, 2]


def test_nan_feature_reference_policy_disables_denoising():
    probs = onehot([2, 2], 12)
    probs[1, :] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        predict_labels_probability_space(probs, reference_compatible=True, scene="s")
    out = predict_labels_probability_space(probs, reference_compatible=True, nan_policy="reference")
    assert out.tolist() == [2, 1]
