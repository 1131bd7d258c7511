"""The whole spine on the built-in synthetic room: frames -> oracle encoder -> voxel map -> text queries.

Ground truth comes from the scene's dense surface samples, voxelised here with numpy (majority label per
voxel), independently of the map code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap.datasets import build_dataset
from ovmap.encoders import build_encoder
from ovmap.pipeline import build_map


def gt_voxel_labels(xyz: np.ndarray, labels: np.ndarray, voxel_size: float) -> dict[tuple[int, int, int], int]:
    """Majority class of the GT surface points in each voxel (numpy only)."""
    keys = np.round(xyz.astype(np.float64) / voxel_size).astype(np.int64)
    pairs, counts = np.unique(np.column_stack([keys, labels]), axis=0, return_counts=True)
    best: dict[tuple[int, int, int], tuple[int, int]] = {}
    for row, count in zip(pairs, counts):
        key = (int(row[0]), int(row[1]), int(row[2]))
        if key not in best or count > best[key][0]:
            best[key] = (int(count), int(row[3]))
    return {k: v[1] for k, v in best.items()}


@pytest.fixture(scope="module")
def scene():
    return build_dataset("synthetic", preset="test", seed=0)


@pytest.fixture(scope="module")
def oracle(scene):
    return build_encoder("oracle", class_names=scene.class_names, device="cpu")


@pytest.fixture(scope="module")
def feature_map(scene, oracle):
    voxel_map, stats = build_map(scene, oracle, mode="feature", voxel_size=0.05, progress=False)
    assert stats.frames == len(scene) and stats.frames_skipped == 0
    return voxel_map


def test_top_query_chair_matches_ground_truth_chair_voxels(scene, feature_map):
    class_names = scene.class_names
    chair = class_names.index("chair")
    result = feature_map.query(class_names[1:])  # every class name as a prompt
    top = result.probabilities.argmax(0).cpu().numpy() + 1  # class index of each voxel's top query
    keys = feature_map.keys.cpu().numpy()
    gt = gt_voxel_labels(*scene.gt_points(), voxel_size=0.05)
    # Compare on observed voxels (in the map and in the GT): unobserved surfaces cannot be predicted.
    observed = np.array([tuple(k) in gt for k in map(tuple, keys)])
    assert observed.mean() > 0.95, "map voxels should lie on GT surfaces"
    gt_label = np.array([gt.get(tuple(k), 0) for k in map(tuple, keys)])
    pred_chair = (top == chair) & observed
    gt_chair = gt_label == chair
    assert gt_chair.sum() >= 20, "the chair should be well observed in the test preset"
    iou = (pred_chair & gt_chair).sum() / (pred_chair | gt_chair).sum()
    assert iou >= 0.9, f"chair IoU {iou:.3f}"
    # and every class is recovered the same way on most of its voxels
    accuracy = (top[observed] == gt_label[observed]).mean()
    assert accuracy > 0.9, f"voxel accuracy {accuracy:.3f}"


def test_free_text_queries_find_the_right_objects(scene, feature_map):
    keys = feature_map.keys.cpu().numpy()
    gt = gt_voxel_labels(*scene.gt_points(), voxel_size=0.05)
    gt_label = np.array([gt.get(tuple(k), 0) for k in map(tuple, keys)])
    result = feature_map.query(["something to sit on", "a place to sleep"])
    names = scene.class_names
    for i, allowed in enumerate([{"chair", "sofa"}, {"bed"}]):
        sim = result.similarity[i].cpu().numpy()
        best = sim >= sim.max() - 0.02  # the voxels that answer the query
        allowed_ids = [names.index(n) for n in allowed]
        share = np.isin(gt_label[best], allowed_ids).mean()
        assert best.sum() >= 20 and share > 0.85, (result.texts[i], best.sum(), share)


def test_probability_mode_recovers_labels(scene, oracle):
    voxel_map, _ = build_map(scene, oracle, mode="probability", voxel_size=0.05, progress=False)
    assert voxel_map.mode == "probability" and voxel_map.features.shape[1] == len(scene.class_names)
    probs = voxel_map.features.float().cpu().numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    gt = gt_voxel_labels(*scene.gt_points(), voxel_size=0.05)
    keys = voxel_map.keys.cpu().numpy()
    observed = np.array([tuple(k) in gt for k in map(tuple, keys)])
    gt_label = np.array([gt.get(tuple(k), 0) for k in map(tuple, keys)])
    assert (probs.argmax(1)[observed] == gt_label[observed]).mean() > 0.9


def test_save_load_query_roundtrip(tmp_path, scene, oracle, feature_map):
    from ovmap.pipeline import open_map

    path = tmp_path / "map.npz"
    feature_map.save(path)
    loaded = open_map(path, device="cpu")
    texts = ["a chair", "a lamp"]
    a, b = feature_map.query(texts), loaded.query(texts)
    # rows may be ordered differently: compare per voxel key
    order_a = np.lexsort(feature_map.keys.cpu().numpy().T[::-1])
    order_b = np.lexsort(loaded.keys.cpu().numpy().T[::-1])
    torch.testing.assert_close(a.similarity[:, order_a], b.similarity[:, order_b], atol=1e-5, rtol=0)
