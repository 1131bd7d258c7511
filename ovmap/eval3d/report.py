"""Result writers (pure functions, atomic writes): metrics.json, per-class CSV, results.md, per-class IoU plot.

Every writer writes to a temporary file in the target directory and ``os.replace``-s it into place, so a
crashed or concurrent run never leaves a half-written file. Non-finite numbers are written as JSON ``null``
(never ``NaN``, which is not valid JSON).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ovmap.eval3d.metrics import MeanMetrics, SceneMetrics, mean_over_scenes
from ovmap.fileio import atomic_write_bytes


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy -> python, non-finite floats -> None."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if hasattr(x, "to_dict"):
        return _clean(x.to_dict())
    return x


def _version() -> str:
    import ovmap

    return str(getattr(ovmap, "__version__", "unknown"))


def write_metrics_json(
    path: str | os.PathLike,
    scenes: Mapping[str, SceneMetrics],
    settings: Any,
    mean: MeanMetrics | None = None,
    class_names: Sequence[str] | None = None,
    independent: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json``.

    Layout::

        {"version": ovmap.__version__, "protocol": {...settings...},
         "scenes": {name: {"miou", "fmiou", "acc", "num_gt_voxels", "num_map_voxels", ...,
                           "per_class_iou": {name: iou or null}}},
         "mean": {"miou", "fmiou", "acc", "num_scenes", "num_gt_voxels", "num_map_voxels"},
         "independent": {...}?, ...extra}

    ``miou``/``fmiou``/``acc`` are fractions in [0, 1]. ``mean`` is computed with :func:`mean_over_scenes` when
    not given (raising on a non-finite scene score).
    """
    if not scenes:
        raise ValueError("write_metrics_json: no scenes")
    if mean is None:
        mean = mean_over_scenes(dict(scenes))
    names = _class_names(class_names, len(next(iter(scenes.values())).iou))
    scene_out = {}
    for name, m in scenes.items():
        d = m.summary()
        d["per_class_iou"] = {names[i]: m.iou[i] for i in range(len(m.iou)) if m.present[i]}
        scene_out[name] = d
    doc: dict[str, Any] = {
        "version": _version(),
        "protocol": settings.to_dict() if hasattr(settings, "to_dict") else dict(settings),
        "scenes": scene_out,
        "mean": mean.summary(),
    }
    if independent:
        doc["independent"] = {k: (v.summary() if hasattr(v, "summary") else v) for k, v in independent.items()}
    if extra:
        doc.update(extra)
    text = json.dumps(_clean(doc), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Names of classes 1..C, accepting either C names or C+1 names with index 0 = ignore."""
    if class_names is None:
        return [f"class_{i}" for i in range(1, num_classes + 1)]
    names = list(class_names)
    if len(names) == num_classes + 1:
        names = names[1:]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return [str(n) for n in names]


def write_per_class_csv(path: str | os.PathLike, metrics: SceneMetrics, class_names: Sequence[str] | None = None) -> Path:
    """``per_class_<scene>.csv``: class index, name, tp, fp, fn, iou, gt_voxels. IoU is empty for classes absent
    from the GT (NaN, excluded from mIoU)."""
    names = _class_names(class_names, len(metrics.iou))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "name", "tp", "fp", "fn", "iou", "gt_voxels"])
    for i in range(len(names)):
        iou = metrics.iou[i]
        w.writerow([i + 1, names[i], int(metrics.tp[i]), int(metrics.fp[i]), int(metrics.fn[i]),
                    "" if not np.isfinite(iou) else f"{float(iou):.6f}", int(metrics.gt_voxels[i])])
    return atomic_write_bytes(path, buf.getvalue().encode())


def _score(m: Any, key: str) -> float:
    if isinstance(m, Mapping):
        return float(m[key])
    return float(getattr(m, key))


def write_results_md(
    path: str | os.PathLike,
    results: Mapping[str, Any],
    method: str = "ovmap",
    title: str | None = "3D zero-shot semantic segmentation",
    settings: Any | None = None,
) -> Path:
    """``results.md``: a markdown table like the paper's (mIoU / f-mIoU per dataset, in %).

    ``results`` is either ``{dataset: metrics}`` (one method row named ``method``) or
    ``{method: {dataset: metrics}}``; metrics are :class:`MeanMetrics`, :class:`SceneMetrics` or dicts with
    ``miou`` and ``fmiou`` fractions.
    """
    if not results:
        raise ValueError("write_results_md: no results")
    first = next(iter(results.values()))
    nested = isinstance(first, Mapping) and not ("miou" in first and "fmiou" in first)
    rows = dict(results) if nested else {method: dict(results)}
    datasets: list[str] = []
    for per in rows.values():
        for d in per:
            if d not in datasets:
                datasets.append(d)
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines.append("| Method | " + " | ".join(f"{d} mIoU | {d} f-mIoU" for d in datasets) + " |")
    lines.append("|---|" + "---:|---:|" * len(datasets))
    for name, per in rows.items():
        cells = []
        for d in datasets:
            if d in per:
                mi, fm = _score(per[d], "miou"), _score(per[d], "fmiou")
                if not (math.isfinite(mi) and math.isfinite(fm)):
                    raise ValueError(f"non-finite score for {name} / {d}")
                cells += [f"{100 * mi:.2f}", f"{100 * fm:.2f}"]
            else:
                cells += ["–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Scores in %; dataset score = unweighted mean over scenes.")
    if settings is not None:
        d = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
        keys = ["reference_compatible", "k", "prompt_denoising_thresh", "prediction_thresh", "chunk_size",
                "denoise_scope", "knn_backend", "voxel_size"]
        lines.append("Protocol: " + ", ".join(f"{k}={d[k]}" for k in keys if k in d) + ".")
    lines.append("")
    return atomic_write_bytes(path, "\n".join(lines).encode())


def plot_per_class_iou(
    path: str | os.PathLike,
    metrics: SceneMetrics | Mapping[str, SceneMetrics],
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Bar chart (PNG, matplotlib Agg) of per-class IoU in %, classes absent from the GT omitted. Given several
    scenes, the bar is the mean over the scenes where the class is present."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if isinstance(metrics, Mapping):
        ms = list(metrics.values())
        if not ms:
            raise ValueError("plot_per_class_iou: no scenes")
        stack = np.stack([m.iou for m in ms])
        present = ~np.isnan(stack)
        counts = present.sum(axis=0)
        iou = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)
    else:
        iou = np.asarray(metrics.iou, dtype=np.float64)
    names = _class_names(class_names, iou.shape[0])
    keep = np.nonzero(~np.isnan(iou))[0]
    width = max(6.0, 0.22 * len(keep) + 1.5)
    fig = Figure(figsize=(width, 4.0), dpi=100)
    ax = fig.add_subplot(111)
    ax.bar(np.arange(len(keep)), 100.0 * iou[keep], color="tab:blue")
    ax.set_xticks(np.arange(len(keep)))
    ax.set_xticklabels([names[i] for i in keep], rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 112)  # headroom above 100 % for the mIoU legend
    ax.set_yticks(range(0, 101, 20))
    valid = iou[keep]
    if valid.size:
        ax.axhline(100.0 * valid.mean(), color="tab:red", lw=1, ls="--", label=f"mIoU {100 * valid.mean():.1f}")
        ax.legend(loc="upper right", fontsize=8, ncol=1, framealpha=0.9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
