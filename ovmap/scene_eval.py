"""Scene-level 3D evaluation: a dataset's class table and ground truth, and one voxel map scored against them.

``ovmap.eval3d`` holds the protocol as pure functions over arrays; this module connects it to datasets, encoders
and voxel maps: it builds the scene's ground truth (external points, or 2D labels lifted through the same frames),
re-indexes class channels through the protocol's class table and scores a map (its cached language features in
feature mode). Building or reusing the map is :mod:`ovmap.map_cache`'s job; writing result files is
``ovmap eval``'s (``ovmap/commands/eval.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ovmap.datasets import PosedRGBDDataset
from ovmap.encoders.oracle import one_hot_labels
from ovmap.eval3d import (
    ClassTable,
    EvalSettings,
    IndependentMetrics,
    SceneMetrics,
    VoxelGT,
    class_scores,
    evaluate_scene,
    external_gt,
    independent_query_eval,
    lifted_gt_labels,
    make_class_table,
)
from ovmap.mapping import VoxelMap
from ovmap.voxel_keys import lexicographic_order, voxel_centers

# --- class tables --------------------------------------------------------------------------------------------
def class_table_for(dataset: PosedRGBDDataset, classes_to_ignore: list[str] | tuple[str, ...] = ()) -> ClassTable:
    """The protocol's class table of a dataset whose class ids are the indices of ``dataset.class_names``."""
    names = list(dataset.class_names)
    if len(names) < 2:
        raise ValueError(f"[scene {dataset.scene_name}] the dataset has no classes to evaluate")
    return make_class_table({i: n for i, n in enumerate(names) if i > 0}, classes_to_ignore, dataset.scene_name)


def channel_map(table: ClassTable, num_channels: int) -> torch.Tensor:
    """(num_channels, C + 1) 0/1 matrix taking dataset-id channels to table indices (ignored ids -> 0)."""
    ids = np.arange(num_channels)
    index = table.id_to_index[np.minimum(ids, table.id_to_index.shape[0] - 1)]
    index[ids >= table.id_to_index.shape[0]] = 0
    out = torch.zeros(num_channels, table.num_classes + 1)
    out[torch.from_numpy(ids), torch.from_numpy(index)] = 1.0
    return out


# --- ground truth ----------------------------------------------------------------------------------------
def lift_labels(
    dataset: PosedRGBDDataset, voxel_size: float, device: torch.device | str = "cpu", progress: bool = True
) -> VoxelMap:
    """Fuse one-hot 2D labels of every frame into a probability-mode map (the lifted ground truth's input).

    Frames, resolutions, depth filtering and voxel size are the map's, so the lifted voxels are the voxels the
    map sees (the reference protocol's ScanNet ground truth).
    """
    if not dataset.has_labels:
        raise ValueError(f"[scene {dataset.scene_name}] no external ground truth and no 2D labels to lift")
    names = list(dataset.class_names)
    lifted = VoxelMap(voxel_size=voxel_size, mode="probability", class_names=names, device=device)
    for frame in tqdm(dataset, unit="frame", desc="lifting GT labels", disable=not progress, dynamic_ncols=True):
        onehot = one_hot_labels(frame["labels"].to(device)[None], len(names))[0]
        lifted.integrate(frame["depth"].to(device), frame["pose"].to(device), frame["intrinsics"].to(device), onehot)
    return lifted


def ground_truth_for(
    dataset: PosedRGBDDataset,
    table: ClassTable,
    settings: EvalSettings,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[VoxelGT, str]:
    """The scene's GT voxels: external points when the dataset has them, else its 2D labels lifted.

    Returns:
        (VoxelGT with voxel indices (M, 3), centres (M, 3) float32 and labels (M,) in table indices, source name).
    """
    scene = dataset.scene_name
    points = dataset.gt_points()
    if points is not None:
        xyz, ids = points
        return external_gt(xyz, ids, table, settings.voxel_size, scene=scene), "external"
    lifted = lift_labels(dataset, settings.voxel_size, device, progress)
    if len(lifted) == 0:
        raise ValueError(f"[scene {scene}] lifting the 2D labels produced no voxel (no valid depth?)")
    accum = lifted.features.float() @ channel_map(table, lifted.features.shape[1]).to(lifted.device)
    s = settings.resolved()
    labels = lifted_gt_labels(
        accum.cpu().numpy(),
        rule=s.lift_rule,
        prediction_thresh=s.prediction_thresh,
        chunk_size=s.chunk_size,
        reference_compatible=s.reference_compatible,
        scene=scene,
    )
    indices = lifted.keys.cpu().numpy()  # VoxelMap.keys: (N, 3) voxel indices
    order = lexicographic_order(indices)
    indices, labels = indices[order], labels[order]
    return VoxelGT(indices, voxel_centers(indices, settings.voxel_size), labels), "lifted"


# --- evaluation of one scene -----------------------------------------------------------------------------
def evaluate_map(
    voxel_map: VoxelMap,
    gt: VoxelGT,
    table: ClassTable,
    settings: EvalSettings,
    scene: str,
    independent_threshold: float | None = 0.5,
    return_predictions: bool = False,
) -> tuple[SceneMetrics, IndependentMetrics | None] | tuple[SceneMetrics, IndependentMetrics | None, np.ndarray]:
    """Metrics of one map against its ground truth; optionally the independent-query evaluation too.

    With ``return_predictions`` also returns the predicted label (M,) of every GT voxel, in ``gt``'s order.
    """
    if len(voxel_map) == 0:
        raise ValueError(f"[scene {scene}] the map is empty (0 voxels)")
    s = settings.resolved()
    map_indices = voxel_map.keys.cpu().numpy()  # (N, 3) voxel indices
    centers = voxel_map.centers.cpu().numpy()
    encoder = voxel_map.encoder
    if voxel_map.mode == "feature":
        if encoder is None:
            raise ValueError(f"[scene {scene}] a feature-mode map needs its encoder to be evaluated")
        text = encoder.encode_text(table.prompts).float()
        # the map's cached (N, D) L2-normalised language features: the projection is not recomputed
        lang = voxel_map.language_features()
        kwargs = dict(map_features=lang, mode="feature", text_embeds=text, align_to_language=None)
    else:
        probs = voxel_map.features.float() @ channel_map(table, voxel_map.features.shape[1]).to(voxel_map.device)
        kwargs = dict(map_features=probs, mode="probability")
    metrics, pred = evaluate_scene(gt.centers, gt.labels, centers, table.num_classes, s, gt_indices=gt.indices,
                                map_indices=map_indices, scene=scene, **kwargs)
    independent = None
    if independent_threshold is not None:
        if voxel_map.mode == "feature":
            scores = class_scores(lang, text, device=s.device, scene=scene)
        else:
            scores = probs[:, 1:].cpu().numpy()
        independent = independent_query_eval(gt.centers, gt.labels, centers, scores, threshold=independent_threshold,
                                             k=s.k, voxel_size=s.voxel_size, gt_indices=gt.indices, map_indices=map_indices,
                                             device=s.device, scene=scene)
    if return_predictions:
        return metrics, independent, pred
    return metrics, independent
