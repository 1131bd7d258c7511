"""The eval spec's known-answer scene (eval3d_protocol.md section 16) from rendered frames through the real map.

Unlike tests/eval3d/test_eval3d_known_answer.py (hand-set voxels), everything here starts from rendered
RGB-D frames (tests/_helpers/known_answer_scene.py: 18 views of three boxes, 640x480, analytic ray casting) and goes
through the production path: ``build_map`` with the oracle encoder (probability and feature space) or
``VoxelMap.integrate`` of designed probability maps -> ``ground_truth_for`` (2D labels lifted through the same
frames, or external dense face points) -> ``evaluate_map`` (predicted-label rule, kNN / exact matching,
metrics). Every number of the spec's table 16.2 is checked to 1e-6, with ``reference_compatible=True`` and with
the default settings, which must agree on this scene. The section 16.3 micro-tests that can be fed through a
map are re-checked from rendered depth/label frames as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import known_answer_scene as ka

from ovmap.encoders.oracle import OracleEncoder, one_hot_labels
from ovmap.eval3d import (
    EvalSettings,
    VoxelGT,
    evaluate_scene,
    external_gt,
    lifted_gt_labels,
    make_class_table,
    predict_map_labels,
    prepare_map,
)
from ovmap.scene_eval import channel_map, class_table_for, evaluate_map, ground_truth_for, lift_labels
from ovmap.mapping import VoxelMap
from ovmap.mapping.geometry import backproject, world_points_to_depth_image
from ovmap.voxel_keys import voxel_indices
from ovmap.pipeline import build_map

SCENE = ka.BoxesDataset.scene_name
TOL = 1e-6
SETTINGS = {"paper": EvalSettings.paper, "default": EvalSettings}


def settings(name: str, **kw) -> EvalSettings:
    return SETTINGS[name](**kw)


# --------------------------------------------------------------------------------------------------------
# fixtures: one encoder, one class table, the ground truths and each map built once per module
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder() -> OracleEncoder:
    return OracleEncoder(ka.CLASS_NAMES)


@pytest.fixture(scope="module")
def table():
    t = class_table_for(ka.BoxesDataset())
    assert t.num_classes == 12 and t.prompts == ka.CLASS_NAMES[1:]
    return t


@pytest.fixture(scope="module")
def gts(table) -> dict[str, VoxelGT]:
    lifted, src_l = ground_truth_for(ka.BoxesDataset(), table, EvalSettings.paper(), progress=False)
    external, src_e = ground_truth_for(
        ka.BoxesDataset(external_gt=True), table, EvalSettings.paper(), progress=False
    )
    assert (src_l, src_e) == ("lifted", "external")
    return {"lifted": lifted, "external": external}


_MAPS: dict[tuple[str, str], VoxelMap] = {}


@pytest.fixture(scope="module")
def maps(encoder):
    """Lazily built maps, keyed by (variant, mode)."""

    def get(variant: str, mode: str = "probability") -> VoxelMap:
        key = (variant, mode)
        if key not in _MAPS:
            if variant == "unpredicted":
                _MAPS[key] = unpredicted_map()
            else:
                ds = ka.BoxesDataset(
                    labels="confused" if variant == "confused" else "oracle",
                    drop_below=variant == "below_removed",
                )
                _MAPS[key], stats = build_map(ds, encoder, mode=mode, voxel_size=ka.VOXEL, progress=False)
                assert stats.frames == len(ds) and stats.frames_skipped == 0
        return _MAPS[key]

    yield get
    _MAPS.clear()


# C's pixels: a (C+1)-vector whose softmax(100 cos) winner is class 3 at p = 0.09 < 0.1; the other 11
# classes share the rest. Spec 16.2 row 3: C's voxels must get label 0 ("no prediction").
LOW_PROBS = np.array([0.91 / 11] * 2 + [0.09] + [0.91 / 11] * 9)
LOW_VECTOR = ka.designed_probabilities(LOW_PROBS)


def unpredicted_map() -> VoxelMap:
    """Probability-space map: A and B pixels one-hot, C pixels the low-confidence vector (integrate directly)."""
    vm = VoxelMap(voxel_size=ka.VOXEL, mode="probability", class_names=ka.CLASS_NAMES)
    low = torch.tensor(LOW_VECTOR, dtype=torch.float32)
    for frame in ka.BoxesDataset():
        probs = one_hot_labels(frame["labels"][None], len(ka.CLASS_NAMES))[0]
        is_c = frame["labels"][0] == 3
        probs[:, is_c] = low[:, None]
        vm.integrate(frame["depth"], frame["pose"], frame["intrinsics"], probs, rgb=frame["rgb"])
    return vm


def evaluate(vm: VoxelMap, gt: VoxelGT, table, s: EvalSettings):
    m, _ = evaluate_map(vm, gt, table, s, scene=SCENE, independent_threshold=None)
    return m


def keys_by_label(keys: np.ndarray, labels: np.ndarray, cls: int) -> set:
    return set(map(tuple, keys[labels == cls].tolist()))


# --------------------------------------------------------------------------------------------------------
# 16.1: the rendered scene, its voxels and its ground truth
# --------------------------------------------------------------------------------------------------------
def test_cameras_follow_the_spec():
    vs = ka.views()
    assert len(vs) == 18 and len(ka.views(drop_below=True)) == 15
    for cls, axis, sign, pose in vs:
        lo, hi = ka.BOXES[cls]
        centre = 0.5 * (lo + hi)
        R, t = pose[:3, :3], pose[:3, 3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        face = (hi if sign > 0 else lo)[axis]
        assert t[axis] - face == pytest.approx(sign * 0.8)  # 0.8 m in front of the face
        forward = R[:, 2]
        np.testing.assert_allclose(forward, (centre - t) / np.linalg.norm(centre - t), atol=1e-12)
    depth, labels, _ = ka.rendered_views(False)[0]
    assert (
        depth.shape == (480, 640)
        and np.isnan(depth[labels == 0]).all()
        and np.isfinite(depth[labels > 0]).all()
    )


@pytest.mark.parametrize("drop_below", [False, True])
def test_rendered_voxels_are_the_surface_lattice_without_mixing(maps, drop_below):
    """Measured 218 / 250 / 522 surface voxels (193 / 205 / 351 without the views from below), no mixed voxel.

    The oracle probability-space map (``build_map``) holds each voxel's mean one-hot label."""
    vm = maps("below_removed" if drop_below else "oracle")
    feats = vm.features.numpy()
    # no mixed voxels: every voxel's mean one-hot is exactly one-hot (no other box, no ignore pixel)
    assert (feats.max(axis=1) == 1.0).all() and (feats.sum(axis=1) == 1.0).all()
    keys, labels = vm.keys.numpy(), feats.argmax(axis=1)
    expected = {1: 193, 2: 205, 3: 351} if drop_below else {1: 218, 2: 250, 3: 522}
    assert np.bincount(labels, minlength=13).tolist() == [0, *expected.values()] + [0] * 9
    for cls in (1, 2, 3):
        assert keys_by_label(keys, labels, cls) == set(map(tuple, ka.surface_indices(cls, drop_below).tolist()))
        # the helper's enumeration agrees with the spec's closed forms, computed from the box extents:
        # n_x n_y n_z - (n_x - 2)(n_y - 2)(n_z - 2), minus the bottom face's interior (n_x - 2)(n_y - 2)
        lo, hi = ka.BOXES[cls]
        n = np.round((hi - lo) / ka.VOXEL).astype(np.int64) + 1
        closed = int(np.prod(n) - np.prod(n - 2) - (np.prod(n[:2] - 2) if drop_below else 0))
        assert len(ka.surface_indices(cls, drop_below)) == closed == expected[cls]
    assert len(vm) == sum(expected.values())
    assert (vm.hits.numpy() > 0).all()


def expected_surface_voxels() -> tuple[np.ndarray, np.ndarray]:
    """The 990 surface voxels from the box geometry alone (tests/_helpers), in lexicographic (i, j, k) order,
    and the class of the box each lies on."""
    ijk = np.concatenate([ka.surface_indices(cls) for cls in (1, 2, 3)])
    cls = np.concatenate([np.full(len(ka.surface_indices(c)), c) for c in (1, 2, 3)])
    order = np.lexsort(ijk.T[::-1])
    return ijk[order], cls[order]


def test_ground_truth_lifted_equals_external(gts):
    """Either way the GT voxels are exactly the 990 surface voxels, in lexicographic order, each labelled with
    its box's class; centres are index * voxel size."""
    ijk, cls = expected_surface_voxels()
    assert len(ijk) == 990
    for gt in gts.values():
        np.testing.assert_array_equal(gt.indices, ijk)
        np.testing.assert_array_equal(gt.labels, cls)
        np.testing.assert_allclose(gt.centers, ijk * ka.VOXEL, atol=1e-6)


def test_lifted_gt_rule_same_under_default_settings(maps):
    """The lift's label rule, with ``reference_compatible`` on and off, labels each voxel of the oracle
    probability map (the per-voxel mean one-hot labels) with its box's class, known from the geometry."""
    vm = maps("oracle")
    ijk, (feats,) = prepare_map(
        vm.centers.numpy(), vm.features, voxel_size=ka.VOXEL, map_indices=vm.keys.numpy()
    )[0::2]
    want_ijk, want_cls = expected_surface_voxels()
    np.testing.assert_array_equal(ijk, want_ijk)
    for rc in (True, False):
        s = EvalSettings(reference_compatible=rc).resolved()
        labels = lifted_gt_labels(
            feats.numpy(),
            rule=s.lift_rule,
            prediction_thresh=s.prediction_thresh,
            chunk_size=s.chunk_size,
            reference_compatible=rc,
        )
        np.testing.assert_array_equal(labels, want_cls)


# --------------------------------------------------------------------------------------------------------
# 16.2: expected numbers
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", ["paper", "default"])
@pytest.mark.parametrize("gt_kind", ["lifted", "external"])
@pytest.mark.parametrize("mode", ["probability", "feature"])
def test_oracle(maps, gts, table, mode, gt_kind, setting):
    vm = maps("oracle", mode)
    assert len(vm) == 990 and vm.mode == mode
    for k in (5, 0):
        m = evaluate(vm, gts[gt_kind], table, settings(setting, k=k))
        assert (m.miou, m.fmiou, m.acc) == (1.0, 1.0, 1.0)
        assert m.num_gt_voxels == 990 and m.num_map_voxels == 990
        np.testing.assert_array_equal(m.iou[:3], [1.0, 1.0, 1.0])
        assert np.isnan(m.iou[3:]).all()  # the 9 distractors are absent from the GT: NaN, excluded


@pytest.mark.parametrize("setting", ["paper", "default"])
@pytest.mark.parametrize("gt_kind", ["lifted", "external"])
@pytest.mark.parametrize("mode", ["probability", "feature"])
def test_confused_oracle(maps, gts, table, mode, gt_kind, setting):
    """B's pixels labelled A: IoU_A = 218/468, IoU_B = 0, IoU_C = 1."""
    m = evaluate(maps("confused", mode), gts[gt_kind], table, settings(setting))
    np.testing.assert_allclose(m.iou[:3], [218 / 468, 0.0, 1.0], atol=1e-12)
    assert (m.tp[:3].tolist(), m.fp[:3].tolist(), m.fn[:3].tolist()) == (
        [218, 0, 522],
        [250, 0, 0],
        [0, 250, 0],
    )
    assert m.miou == pytest.approx((218 / 468 + 0 + 1) / 3, abs=1e-12)
    assert m.fmiou == pytest.approx((218**2 / 468 + 522) / 990, abs=1e-12)
    assert m.acc == pytest.approx(740 / 990, abs=1e-12)
    assert (m.miou, m.fmiou, m.acc) == pytest.approx((0.488604, 0.629845, 0.747475), abs=TOL)


def test_designed_low_confidence_vector():
    """The C-pixel vector scores p = 0.09 for class 3 and 0.91/11 for every other class (spec 6.2 step 1)."""
    from ovmap.eval3d import cosine_similarity, onehot_text_embeddings

    q = torch.tensor(LOW_VECTOR, dtype=torch.float32)[None]
    p = torch.softmax(100 * cosine_similarity(q, onehot_text_embeddings(12)), dim=1)[0].numpy()
    np.testing.assert_allclose(p, LOW_PROBS, atol=1e-5)
    assert p.max() < 0.1 and p.argmax() == 2


@pytest.mark.parametrize("setting", ["paper", "default"])
@pytest.mark.parametrize("gt_kind", ["lifted", "external"])
def test_unpredicted_class(maps, gts, table, gt_kind, setting):
    """C's pixels given winning prob < 0.1: C's voxels get label 0 -> IoU_C = 0, a FN of C and a FP of nothing."""
    vm = maps("unpredicted")
    s = settings(setting)
    keys, _, (feats,) = prepare_map(
        vm.centers.numpy(), vm.features, voxel_size=ka.VOXEL, map_indices=vm.keys.numpy()
    )
    labels = predict_map_labels(feats.float() @ channel_map(table, 13), s, "probability", num_classes=12)
    assert np.bincount(labels, minlength=4).tolist() == [522, 218, 250, 0]
    assert keys_by_label(keys, labels, 0) == set(map(tuple, ka.surface_indices(3).tolist()))
    m = evaluate(vm, gts[gt_kind], table, s)
    np.testing.assert_array_equal(m.iou[:3], [1.0, 1.0, 0.0])
    assert (m.tp[2], m.fp[2], m.fn[2]) == (0, 0, 522)
    assert m.miou == pytest.approx(2 / 3, abs=1e-12)
    assert m.fmiou == pytest.approx(468 / 990, abs=1e-12)
    assert m.acc == pytest.approx(468 / 990, abs=1e-12)
    assert (m.miou, m.fmiou, m.acc) == pytest.approx((0.666667, 0.472727, 0.472727), abs=TOL)


@pytest.mark.parametrize("setting", ["paper", "default"])
def test_views_from_below_removed(maps, gts, table, setting):
    """Bottom faces unseen: map = 193 / 205 / 351 voxels; external GT = all 990 voxels."""
    vm = maps("below_removed")
    lab = vm.features.numpy().argmax(axis=1)
    assert np.bincount(lab, minlength=4).tolist() == [0, 193, 205, 351]
    m5 = evaluate(vm, gts["external"], table, settings(setting, k=5))
    assert (m5.miou, m5.fmiou, m5.acc) == (1.0, 1.0, 1.0)
    assert m5.num_gt_voxels == 990 and m5.num_map_voxels == 749
    m0 = evaluate(vm, gts["external"], table, settings(setting, k=0))
    np.testing.assert_allclose(m0.iou[:3], [193 / 218, 205 / 250, 351 / 522], atol=1e-12)
    assert m0.fp[:3].tolist() == [0, 0, 0] and m0.fn[:3].tolist() == [25, 45, 171]  # bottom interiors
    assert m0.miou == pytest.approx((193 / 218 + 205 / 250 + 351 / 522) / 3, abs=1e-12)
    assert m0.fmiou == pytest.approx(749 / 990, abs=1e-12)
    assert m0.acc == pytest.approx(749 / 990, abs=1e-12)
    assert (m0.miou, m0.fmiou, m0.acc) == pytest.approx((0.792578, 0.756566, 0.756566), abs=TOL)


# --------------------------------------------------------------------------------------------------------
# 16.3 micro-tests, fed through VoxelMap.integrate from depth / label frames
# --------------------------------------------------------------------------------------------------------
def empty_frame() -> tuple[np.ndarray, np.ndarray]:
    return np.full((ka.H, ka.W), np.nan, np.float32), np.zeros((ka.H, ka.W), np.int64)


def mixed_block_frame(fractions: list[int], cls: int) -> dict:
    """One frame; block i: 1000 pixels (40 x 25) at 0.2 m, ``fractions[i]`` of them labelled ``cls``, the rest 0.

    At 0.2 m a pixel is 0.67 mm, so each block (26.7 x 16.7 mm, blocks 150 px = 0.1 m apart) lies in one voxel.
    """
    depth, labels = empty_frame()
    for i, n in enumerate(fractions):
        block_labels = np.zeros(1000, np.int64)
        block_labels[:n] = cls
        ka.block(depth, labels, 300 + 150 * i, 227, 40, 25, 0.2, block_labels)
    return {"depth": depth, "labels": labels}


def test_lifted_gt_threshold_boundary_through_the_map():
    """C = 37: 986 ignore + 14 class-c pixels -> c; 987 + 13 -> ignore (boundary x* = 0.01367)."""
    names = ["ignore"] + [f"class{i}" for i in range(1, 38)]
    table = make_class_table(dict(enumerate(names)))
    ds = ka.FramesDataset([mixed_block_frame([13, 14], 5)], names)
    lifted = lift_labels(ds, ka.VOXEL, progress=False)
    assert len(lifted) == 2 and lifted.hits.tolist() == [1000.0, 1000.0]
    np.testing.assert_array_equal(lifted.keys.numpy(), [[0, 0, 4], [2, 0, 4]])
    np.testing.assert_allclose(lifted.features[:, 5].numpy(), [0.013, 0.014], rtol=1e-6)
    for s in (EvalSettings.paper(), EvalSettings()):
        gt, source = ground_truth_for(ds, table, s, progress=False)
        assert source == "lifted"
        np.testing.assert_array_equal(gt.indices, [[0, 0, 4], [2, 0, 4]])
        assert gt.labels.tolist() == [0, 5]
    # the same frames with the RayFronts-paper rule (argmax with ignore competing): both ignore
    gt, _ = ground_truth_for(ds, table, EvalSettings.paper(lift_rule="argmax_with_ignore"), progress=False)
    assert gt.labels.tolist() == [0, 0]


def test_lifted_gt_minimum_fraction_c12_through_the_map():
    """Spec 6.4: at C = 12 (the scene's table) a voxel needs about 0.20 % labelled hits (x* = 0.002007)."""
    table = class_table_for(ka.BoxesDataset())
    ds = ka.FramesDataset([mixed_block_frame([2, 3], 3)], ka.CLASS_NAMES)
    gt, _ = ground_truth_for(ds, table, EvalSettings.paper(), progress=False)
    assert gt.labels.tolist() == [0, 3]


def oracle_probability_map(ds) -> VoxelMap:
    vm = VoxelMap(voxel_size=ka.VOXEL, mode="probability", class_names=ds.class_names)
    for frame in ds:
        vm.integrate(
            frame["depth"],
            frame["pose"],
            frame["intrinsics"],
            one_hot_labels(frame["labels"][None], len(ds.class_names))[0],
        )
    return vm


def quirk_dataset(num_classes: int, with_class_1: bool):
    names = ["ignore"] + [f"class{i}" for i in range(1, num_classes + 1)]
    depth, labels = empty_frame()
    ka.block(depth, labels, 300, 227, 40, 25, 0.2, np.zeros(1000))  # all-ignore voxel (0, 0, 4)
    if with_class_1:
        ka.block(depth, labels, 450, 227, 40, 25, 0.2, np.ones(1000))  # pure class-1 voxel (2, 0, 4)
    return ka.FramesDataset([{"depth": depth, "labels": labels}], names), make_class_table(
        dict(enumerate(names))
    )


@pytest.mark.parametrize("setting", ["paper", "default"])
def test_few_classes_quirk_through_the_map(setting):
    """C <= 10: an all-ignore voxel is labelled 1 when class 1 survives denoising in its chunk, else 0;
    C = 11: 0. Lifted GT (denoising off) labels it 1 at C = 10 even alone."""
    s = settings(setting)

    def predicted(num_classes, with_class_1):
        ds, table = quirk_dataset(num_classes, with_class_1)
        vm = oracle_probability_map(ds)
        _, _, (f,) = prepare_map(
            vm.centers.numpy(), vm.features, voxel_size=ka.VOXEL, map_indices=vm.keys.numpy()
        )
        pred = predict_map_labels(
            f @ channel_map(table, num_classes + 1), s, "probability", num_classes=num_classes
        )
        gt, _ = ground_truth_for(ds, table, s, progress=False)
        return pred.tolist(), gt.labels.tolist(), (vm, gt, table)

    assert predicted(10, True)[:2] == ([1, 1], [1, 1])
    pred, gt_labels, (vm, gt, table) = predicted(10, False)
    assert (pred, gt_labels) == (
        [0],
        [1],
    )  # alone in its chunk every class is denoised; the GT is not denoised
    m = evaluate(vm, gt, table, settings(setting, k=0))
    assert (m.miou, m.fmiou, m.acc) == (0.0, 0.0, 0.0)  # the quirk GT voxel counts as a FN of class 1
    assert predicted(11, True)[:2] == ([0, 1], [0, 1])  # voxel (0, 0, 4) (all ignore) sorts first
    assert predicted(11, False)[:2] == ([0], [0])


def test_chunked_denoising_through_the_map():
    """10 001 map voxels; class 3 reaches p = 0.6 only in voxel 10 000 (second chunk): with chunk scope it is
    removed in chunk 1 and kept in chunk 2; with global scope it is kept everywhere. The map's rows are not in
    key order (the last voxel is integrated first), so the evaluation must sort before chunking."""
    # frontal plane at z = 4 m (identity pose): ~14 pixels per voxel; keep the 100 x 100 voxels
    # kx, ky in [-50, 50) plus voxel (50, -50, 80), which is last in lexicographic order.
    depth = np.full((ka.H, ka.W), 4.0, np.float32)
    xyz, pix = backproject(
        torch.from_numpy(depth)[None, None], torch.tensor(ka.K, dtype=torch.float32), torch.eye(4)[None]
    )
    keys = voxel_indices(xyz, ka.VOXEL).numpy()
    assert (keys[:, 2] == 80).all()
    grid = (keys[:, 0] >= -50) & (keys[:, 0] < 50) & (keys[:, 1] >= -50) & (keys[:, 1] < 50)
    last = (keys[:, 0] == 50) & (keys[:, 1] == -50)
    fifth = (keys[:, 0] == -50) & (keys[:, 1] == -45)  # lexicographic index 5 of the grid
    assert last.sum() > 0 and fifth.sum() > 0

    one_hot_1 = np.eye(13)[1]
    in_chunk_1 = ka.designed_probabilities([0.40, 0.01, 0.45] + [0.14 / 9] * 9)
    in_chunk_2 = ka.designed_probabilities([0.30, 0.01, 0.60] + [0.01] * 9)
    values = np.zeros((13, ka.H * ka.W), np.float32)
    values[:, pix.numpy()[grid]] = one_hot_1[:, None]
    values[:, pix.numpy()[fifth]] = in_chunk_1[:, None]
    values[:, pix.numpy()[last]] = in_chunk_2[:, None]
    values = torch.from_numpy(values.reshape(13, ka.H, ka.W))

    def masked(sel):
        d = np.full(ka.H * ka.W, np.nan, np.float32)
        d[pix.numpy()[sel]] = 4.0
        return torch.from_numpy(d.reshape(1, ka.H, ka.W))

    vm = VoxelMap(voxel_size=ka.VOXEL, mode="probability", class_names=ka.CLASS_NAMES)
    vm.integrate(masked(last), torch.eye(4), torch.tensor(ka.K, dtype=torch.float32), values)
    vm.integrate(masked(grid), torch.eye(4), torch.tensor(ka.K, dtype=torch.float32), values)
    assert len(vm) == 10001 and vm.keys[0].tolist() == [50, -50, 80]  # row 0 is lexicographically last

    table = class_table_for(ka.BoxesDataset())
    sorted_keys, _, (f,) = prepare_map(
        vm.centers.numpy(), vm.features, voxel_size=ka.VOXEL, map_indices=vm.keys.numpy()
    )
    assert sorted_keys[5].tolist() == [-50, -45, 80] and sorted_keys[10000].tolist() == [50, -50, 80]
    chunk = predict_map_labels(f, EvalSettings.paper(), "probability", num_classes=12)
    assert chunk[5] == 1 and chunk[10000] == 3 and (np.delete(chunk, [5, 10000]) == 1).all()
    glob = predict_map_labels(f, EvalSettings(), "probability", num_classes=12)
    assert glob[5] == 3 and glob[10000] == 3 and (np.delete(glob, [5, 10000]) == 1).all()

    # through evaluate_map with exact matching: GT = the map voxels, class 3 at voxels 5 and 10 000
    gt_labels = np.ones(10001, np.int64)
    gt_labels[[5, 10000]] = 3
    gt = VoxelGT(sorted_keys, (sorted_keys.astype(np.float32) * np.float32(ka.VOXEL)), gt_labels)
    mc = evaluate(vm, gt, table, EvalSettings.paper(k=0))
    np.testing.assert_allclose(mc.iou[[0, 2]], [9999 / 10000, 1 / 2], atol=1e-12)
    assert mc.acc == pytest.approx(10000 / 10001, abs=1e-12)
    mg = evaluate(vm, gt, table, EvalSettings(k=0))
    assert (mg.miou, mg.fmiou, mg.acc) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("setting", ["paper", "default"])
def test_knn_tie_through_the_map(setting):
    """GT voxel (0,0,0); map voxels (0,0,0), (1,0,0), (0,2,0), (0,0,3), (4,0,0) labelled 1, 2, 2, 3, 3 by
    rendered pixels: the 5-NN vote is the tie {2, 3} -> smallest label 2."""
    centres = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [4, 0, 0]], np.float64) * ka.VOXEL
    cls = [1, 2, 2, 3, 3]
    eye = np.array([0.1013, 0.0517, -1.0])  # off the half-pixel projections
    pose = ka.look_at_c2w(eye, eye + [0.0, 0.0, 1.0], np.array([0.0, -1.0, 0.0]))
    pose_t = torch.tensor(pose, dtype=torch.float32)
    K = torch.tensor(ka.K, dtype=torch.float32)
    depth = world_points_to_depth_image(torch.tensor(centres, dtype=torch.float32), K, pose_t, ka.H, ka.W)[
        0
    ].numpy()
    labels = np.zeros((ka.H, ka.W), np.int64)
    for c, x in zip(cls, centres):
        p = ka.K @ (pose[:3, :3].T @ (x - pose[:3, 3]))
        labels[round(p[1] / p[2]), round(p[0] / p[2])] = c
    assert np.isfinite(depth).sum() == 5
    ds = ka.FramesDataset([{"depth": depth, "labels": labels, "pose": pose}], ka.CLASS_NAMES)
    vm = oracle_probability_map(ds)
    expected_keys = np.round(centres / ka.VOXEL).astype(np.int64)
    assert set(map(tuple, vm.keys.tolist())) == set(map(tuple, expected_keys.tolist()))
    assert vm.features.numpy().max(axis=1).tolist() == [1.0] * 5  # one pixel, one class per voxel
    voxel_class = dict(zip(map(tuple, vm.keys.tolist()), vm.features.numpy().argmax(axis=1).tolist()))
    assert [voxel_class[tuple(k)] for k in expected_keys.tolist()] == cls
    table = class_table_for(ka.BoxesDataset())
    gt = external_gt(np.zeros((1, 3)), np.array([2]), table, ka.VOXEL, scene="tie")
    s = settings(setting)
    probs = vm.features.numpy()
    m, pred = evaluate_scene(
        gt.centers,
        gt.labels,
        vm.centers.numpy(),
        12,
        s,
        map_features=probs,
        mode="probability",
        map_indices=vm.keys.numpy(),
        scene="tie",
    )
    assert pred.tolist() == [2] and m.acc == 1.0
