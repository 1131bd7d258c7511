"""Protocol settings and the per-scene evaluation pipeline (pure function over arrays).

:class:`EvalSettings` holds every choice of the protocol; ``reference_compatible=True`` (the paper presets,
:meth:`EvalSettings.paper`) resolves the open choices to the reference's behaviour, ``False`` to ovmap's
cleaner defaults. :func:`evaluate_scene` runs: sort the map into lexicographic voxel-index order -> predicted labels
(unless given) -> match GT voxels to map voxels -> metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
from torch import Tensor

from ovmap.eval3d.common import as_labels, as_points, fail, logger
from ovmap.eval3d.knn import match_labels
from ovmap.eval3d.metrics import SceneMetrics, scene_metrics
from ovmap.eval3d.predict import predict_labels_feature_space, predict_labels_probability_space
from ovmap.voxel_keys import indices_from_centers, lexicographic_order


@dataclass(frozen=True)
class EvalSettings:
    """Every setting of the 3D semantic-segmentation protocol (spec section 2 / 13).

    ``None`` fields are resolved from ``reference_compatible`` by :meth:`resolved`:

    ============== ========================= =========================
    field           reference_compatible      default (ovmap)
    ============== ========================= =========================
    denoise_scope   "chunk" (10 000 voxels)   "global"
    knn_backend     "balltree" (labels equal  "lattice" (exact, ties at
                    to sklearn BallTree's)    the k-th by smaller row)
    zero-norm row   label 1 (NaN path)        label 0
    ============== ========================= =========================
    """

    reference_compatible: bool = False
    k: int = 5
    voxel_size: float = 0.05
    temperature: float = 100.0
    prompt_denoising_thresh: float = 0.5
    prediction_thresh: float = 0.1
    chunk_size: int = 10000
    denoise_scope: str | None = None
    knn_backend: str | None = None
    device: str = "cpu"
    max_match_dist: float | None = None
    lift_rule: str = "softmax_thresh"
    allow_fewer_than_k: bool = False
    nan_policy: str = "raise"
    mode_tie_rule: str = "smallest_label"

    @classmethod
    def paper(cls, **overrides: Any) -> "EvalSettings":
        """The RADSeg / RayFronts f27ad8b settings (k = 5, 0.5 / 0.1, chunks of 10 000, BallTree)."""
        return cls(reference_compatible=True, **overrides).resolved()

    def resolved(self) -> "EvalSettings":
        rc = self.reference_compatible
        scope = self.denoise_scope or ("chunk" if rc else "global")
        backend = self.knn_backend
        if backend is None:
            backend = "balltree" if rc else "lattice"
        if rc and self.max_match_dist is not None:
            logger.warning("max_match_dist=%s is set with reference_compatible=True: numbers will differ from the "
                           "reference", self.max_match_dist)
        return replace(self, denoise_scope=scope, knn_backend=backend)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.resolved())
        d["zero_norm_feature"] = "label 1 (reference NaN path)" if self.reference_compatible else "label 0"
        d["map_order"] = "lexicographic (kx, ky, kz)"
        d["map_centers_dtype"] = "float32"
        return d


def prepare_map(
    map_centers: Any,
    *arrays: Any,
    voxel_size: float,
    map_indices: Any | None = None,
    scene: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Sort map rows into lexicographic voxel-index order and cast centres to float32 (spec 3.4).

    Args:
        map_centers: (M, 3) voxel centres in metres.
        arrays: arrays with M rows (numpy or torch) to reorder alike; ``None`` passes through.
        voxel_size: voxel edge in metres (used to round the centres when ``map_indices`` is not given).
        map_indices: (M, 3) integer voxel indices of the rows, if known.
    Returns ``(indices, centers_f32, [arrays...])`` reordered consistently.
    """
    c = as_points(map_centers, "map voxel centres", scene)
    if c.shape[0] == 0:
        raise fail(scene, "the map is empty (0 voxels)")
    ijk = indices_from_centers(c, voxel_size) if map_indices is None else np.asarray(map_indices, dtype=np.int64)
    if ijk.shape != c.shape:
        raise fail(scene, f"map voxel indices {ijk.shape} and centres {c.shape} differ in shape")
    order = lexicographic_order(ijk)
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        if not isinstance(a, Tensor):
            a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] != c.shape[0]:
            raise fail(scene, f"map array with {a.shape[0]} rows does not match {c.shape[0]} voxel centres")
        if isinstance(a, Tensor):
            import torch

            out.append(a[torch.from_numpy(order).to(a.device)])
        else:
            out.append(a[order])
    if not np.array_equal(order, np.arange(order.size)):
        logger.info("%smap rows reordered into lexicographic voxel order", f"[scene {scene}] " if scene else "")
    return ijk[order], c[order].astype(np.float32), out


def predict_map_labels(
    map_features: Any,
    settings: EvalSettings,
    mode: str = "feature",
    text_embeds: Any | None = None,
    align_to_language: Callable[[Tensor], Tensor] | None = None,
    num_classes: int | None = None,
    scene: str | None = None,
) -> np.ndarray:
    """Predicted labels of (already lexicographically sorted) map voxels in ``mode`` feature|probability."""
    s = settings.resolved()
    kw = dict(temperature=s.temperature, denoise_thresh=s.prompt_denoising_thresh, pred_thresh=s.prediction_thresh,
              chunk_size=s.chunk_size, denoise_scope=s.denoise_scope, reference_compatible=s.reference_compatible,
              nan_policy=s.nan_policy, device=s.device, scene=scene)
    if mode == "feature":
        if text_embeds is None:
            raise ValueError("feature mode needs text_embeds")
        if num_classes is not None and int(text_embeds.shape[0]) != num_classes:
            raise fail(scene, f"{int(text_embeds.shape[0])} text embeddings for C={num_classes} classes")
        return predict_labels_feature_space(map_features, text_embeds, align_to_language, **kw)
    if mode == "probability":
        return predict_labels_probability_space(map_features, num_classes=num_classes, **kw)
    raise ValueError(f"mode must be 'feature' or 'probability', got {mode!r}")


def evaluate_scene(
    gt_centers: Any,
    gt_labels: Any,
    map_centers: Any,
    num_classes: int,
    settings: EvalSettings | None = None,
    *,
    map_labels: Any | None = None,
    map_features: Any | None = None,
    mode: str = "feature",
    text_embeds: Any | None = None,
    align_to_language: Callable[[Tensor], Tensor] | None = None,
    gt_indices: Any | None = None,
    map_indices: Any | None = None,
    scene: str | None = None,
) -> tuple[SceneMetrics, np.ndarray]:
    """Evaluate one scene. Give either ``map_labels`` (already predicted, in 0..C) or ``map_features`` (with
    ``mode`` and, in feature mode, ``text_embeds``/``align_to_language``).

    ``gt_centers`` (Q, 3) and ``map_centers`` (M, 3) are voxel centres in metres; ``gt_indices`` / ``map_indices``
    their (Q, 3) / (M, 3) integer voxel indices when known (else rounded from the centres).

    Returns ``(metrics, pred)`` where ``pred`` is the prediction of each GT voxel (in the GT's order).
    """
    s = (settings or EvalSettings()).resolved()
    if (map_labels is None) == (map_features is None):
        raise ValueError("give exactly one of map_labels or map_features")
    gc = as_points(gt_centers, "GT voxel centres", scene)
    gl = as_labels(gt_labels, "GT labels", scene, n=gc.shape[0])
    if gc.shape[0] == 0:
        raise fail(scene, "the GT is empty (0 voxels)")
    if gl.max() > num_classes:
        raise fail(scene, f"GT label {int(gl.max())} exceeds the number of classes C={num_classes}")
    if not (gl != 0).any():
        raise fail(scene, "no valid GT voxel (all labels 0)")
    ijk, centers, (labels, feats) = prepare_map(map_centers, map_labels, map_features, voxel_size=s.voxel_size,
                                                map_indices=map_indices, scene=scene)
    if labels is None:
        labels = predict_map_labels(feats, s, mode, text_embeds, align_to_language, num_classes, scene)
    labels = as_labels(labels, "map labels", scene, n=centers.shape[0])
    if labels.size and labels.max() > num_classes:
        raise fail(scene, f"map label {int(labels.max())} exceeds the number of classes C={num_classes}")
    pred = match_labels(gc, centers, labels, k=s.k, voxel_size=s.voxel_size, gt_indices=gt_indices, map_indices=ijk,
                        backend=s.knn_backend, device=s.device, max_match_dist=s.max_match_dist,
                        allow_fewer_than_k=s.allow_fewer_than_k, scene=scene)
    m = scene_metrics(gl, pred, num_classes, scene=scene, num_map_voxels=int(centers.shape[0]))
    return m, pred
