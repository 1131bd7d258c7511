"""3D zero-shot semantic-segmentation evaluation (the RADSeg / RayFronts f27ad8b protocol), as pure functions.

This package owns the evaluation *core*; it works on plain arrays (voxel centres / indices, features or
probabilities, labels) and never touches the map class, datasets or encoders directly. The protocol is
specified in ``shared/specs/eval3d_protocol.md`` and documented as implemented in ``ovmap/eval3d/README.md``.

Modules:
    ground_truth  class table (dataset id -> index), external GT by majority vote with
                  ignore competing, lifted GT (softmax-threshold or argmax-with-ignore rule)
    predict       predicted-label rule: softmax(100 cos), chunked (or global) prompt denoising 0.5,
                  threshold 0.1, feature space and probability space
    knn           GT -> map matching: k-NN mode vote (exact lattice search in torch on CPU or CUDA, BallTree-
                  identical sets, cKDTree, tiled torch brute force) and exact k = 0 matching
    metrics       per-class TP/FP/FN, IoU, mIoU, f-mIoU, accuracy; unweighted mean over scenes
    independent   independent-query evaluation: per-class AP and IoU at a similarity threshold
    protocol      ``EvalSettings`` (``reference_compatible`` switch) and ``evaluate_scene``
    report        atomic writers: metrics.json, per-class CSV, results.md, per-class IoU bar chart
"""

from ovmap.eval3d.common import EvalInputError
from ovmap.eval3d.ground_truth import (
    ClassTable,
    VoxelGT,
    external_gt,
    ids_to_indices,
    lift_gt_from_points,
    lifted_gt_labels,
    majority_vote,
    make_class_table,
    sort_voxels,
    voxelize_labels,
)
from ovmap.eval3d.independent import (
    IndependentMetrics,
    average_precision,
    independent_query_eval,
    independent_query_metrics,
    transfer_scores,
)
from ovmap.eval3d.knn import exact_match, knn_search, knn_vote, match_labels, mode_smallest, neighbour_sets
from ovmap.eval3d.metrics import MeanMetrics, SceneMetrics, confusion_counts, mean_over_scenes, scene_metrics
from ovmap.eval3d.predict import (
    class_scores,
    cosine_similarity,
    onehot_text_embeddings,
    predict_labels,
    predict_labels_feature_space,
    predict_labels_probability_space,
)
from ovmap.eval3d.protocol import EvalSettings, evaluate_scene, predict_map_labels, prepare_map
from ovmap.eval3d.report import plot_per_class_iou, write_metrics_json, write_per_class_csv, write_results_md

__all__ = [
    "EvalInputError",
    "ClassTable",
    "VoxelGT",
    "make_class_table",
    "ids_to_indices",
    "voxelize_labels",
    "majority_vote",
    "external_gt",
    "lifted_gt_labels",
    "lift_gt_from_points",
    "sort_voxels",
    "cosine_similarity",
    "onehot_text_embeddings",
    "predict_labels",
    "predict_labels_feature_space",
    "predict_labels_probability_space",
    "class_scores",
    "knn_search",
    "knn_vote",
    "mode_smallest",
    "exact_match",
    "neighbour_sets",
    "match_labels",
    "SceneMetrics",
    "MeanMetrics",
    "confusion_counts",
    "scene_metrics",
    "mean_over_scenes",
    "IndependentMetrics",
    "average_precision",
    "transfer_scores",
    "independent_query_metrics",
    "independent_query_eval",
    "EvalSettings",
    "evaluate_scene",
    "predict_map_labels",
    "prepare_map",
    "write_metrics_json",
    "write_per_class_csv",
    "write_results_md",
    "plot_per_class_iou",
]
