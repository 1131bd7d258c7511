"""Per-voxel class labels of a map, in either mapping mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def map_class_names(voxel_map: Any, class_names: list[str] | None = None) -> list[str] | None:
    """The class table to label a map with (index 0 = ignore): the given one, the map's, or its encoder's."""
    for names in (
        class_names,
        getattr(voxel_map, "class_names", None),
        getattr(getattr(voxel_map, "encoder", None), "class_names", None),
    ):
        if names is not None and len(names) >= 2:
            return list(names)
    return None


def voxel_labels(
    voxel_map: Any, class_names: list[str] | None = None, text_cache: dict[str, Any] | None = None
) -> tuple[np.ndarray, list[str]]:
    """(N,) int64 class ids per voxel and the class table they index.

    Probability maps: the argmax over the K real classes (id 0 only for voxels with no probability mass).
    Feature maps: the best-matching class name by cosine similarity of the voxel's language feature with the
    name's text embedding (as ``voxel_map.query``), i.e. open-vocabulary labels against ``class_names``
    (default: the encoder's class table, e.g. the oracle's); id 0 where a voxel matches no class at all.

    Args:
        voxel_map: the map.
        class_names: class table (index 0 = ignore); None = the map's or its encoder's.
        text_cache: optional dict reused across calls to keep the class-name embeddings (visualisers call this
            every few frames).

    Raises:
        ValueError: when no class table is known, or a feature map has no encoder to embed the names.
    """
    if voxel_map.mode == "probability":
        names = list(voxel_map.class_names)
        feats = voxel_map.features.float()
        labels = feats[:, 1:].argmax(dim=1) + 1
        labels[feats[:, 1:].sum(dim=1) <= 0] = 0
        return labels.cpu().numpy().astype(np.int64), names
    names = map_class_names(voxel_map, class_names)
    if names is None:
        raise ValueError("labelling a feature map needs class names: pass labels=[...] (index 0 = ignore)")
    encoder = getattr(voxel_map, "encoder", None)
    if encoder is None:
        raise ValueError("labelling a feature map needs its encoder (to embed the class names)")
    if len(voxel_map) == 0:
        return np.zeros(0, dtype=np.int64), names
    cache = text_cache if text_cache is not None else {}
    key = "\n".join(names)
    with torch.no_grad():
        if cache.get("key") != key:
            cache["key"], cache["text"] = key, torch.as_tensor(encoder.encode_text(names[1:])).float()
        text = torch.nn.functional.normalize(cache["text"].to(voxel_map.device), dim=1)
        if hasattr(voxel_map, "language_features"):  # the map's per-row cache of align_to_language
            lang = voxel_map.language_features()
        else:
            lang = torch.nn.functional.normalize(encoder.align_to_language(voxel_map.features.float()), dim=1)
        sim = text @ lang.float().t()  # (K, N)
    labels = sim.argmax(dim=0) + 1
    labels[sim.max(dim=0).values <= 1e-6] = 0  # no similarity to any class (e.g. unlabelled-only voxels)
    return labels.cpu().numpy().astype(np.int64), names
