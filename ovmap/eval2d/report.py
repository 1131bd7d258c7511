"""2D result writers (atomic) and the Table-1-shaped merge of several ``ovmap eval2d`` runs.

One run writes ``metrics.json`` (``task: "eval2d"``, ``miou``, ``per_class_iou`` keyed by official class name;
non-finite numbers as JSON ``null``), ``per_class_iou.csv``, ``results.md``, ``per_class_iou.png`` and
``qualitative/<id>.png`` (image | prediction | ground truth). ``ovmap report`` hands the 2D ``metrics.json`` it
finds to :func:`write_report2d`, which writes one table per resolution (the paper's Table A.2) and one per
resolution limit, each entry the best mIoU over the resolutions up to that limit (Table 1).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ovmap.eval2d.datasets import SPECS
from ovmap.eval2d.metrics import ConfusionMatrix
from ovmap.fileio import atomic_write_bytes

TASK = "eval2d"
RESOLUTIONS = ("low", "mid", "high")
#: Table 1's column order.
TABLE_COLUMNS = ("context59", "voc20", "cocostuff", "ade20k", "cityscapes")


def json_safe(x: Any) -> Any:
    """JSON-safe copy: numpy -> Python, non-finite floats -> None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_metrics_json(path: str | Path, cm: ConfusionMatrix, class_names: Sequence[str],
                       extra: Mapping[str, Any]) -> Path:
    """``metrics.json``: ``task``, ``miou``, ``acc``, ``per_class_iou`` {official name: IoU or null}, ``extra``."""
    iou = cm.iou()
    doc = {"task": TASK, "miou": cm.miou(), "acc": cm.accuracy(),
           "per_class_iou": {name: iou[i] for i, name in enumerate(class_names)}, **extra}
    return atomic_write_bytes(path, (json.dumps(json_safe(doc), indent=2) + "\n").encode())


def write_per_class_csv(path: str | Path, cm: ConfusionMatrix, class_names: Sequence[str]) -> Path:
    """``per_class_iou.csv``: class_id, name, iou (empty when undefined), tp, fp, fn, gt_pixels."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class_id", "name", "iou", "tp", "fp", "fn", "gt_pixels"])
    iou, tp, fp, fn = cm.iou(), cm.tp, cm.fp, cm.fn
    for i, name in enumerate(class_names):
        writer.writerow([i, name, "" if math.isnan(iou[i]) else f"{iou[i]:.6f}", tp[i], fp[i], fn[i],
                         tp[i] + fn[i]])
    return atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def write_results_md(path: str | Path, cm: ConfusionMatrix, class_names: Sequence[str], title: str,
                     settings: Mapping[str, Any]) -> Path:
    """``results.md``: the mIoU line, the settings and the per-class IoU table (in %)."""
    iou = cm.iou()
    lines = [f"# {title}", "", f"mIoU **{_fmt(cm.miou())}** %, pixel accuracy {_fmt(cm.accuracy())} %", ""]
    lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".", ""]
    lines += ["| class | IoU (%) |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(iou[i])} |" for i, name in enumerate(class_names)]
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def plot_per_class_iou(path: str | Path, cm: ConfusionMatrix, class_names: Sequence[str], title: str) -> Path:
    """Bar chart (PNG) of the per-class IoU in %, classes with an undefined IoU left out, mIoU as a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    iou = cm.iou()
    keep = np.nonzero(np.isfinite(iou))[0]
    fig = Figure(figsize=(max(6.0, 0.2 * len(keep) + 1.5), 4.0), dpi=100)
    ax = fig.add_subplot(111)
    ax.bar(np.arange(len(keep)), 100.0 * iou[keep], color="tab:blue")
    ax.set_xticks(np.arange(len(keep)))
    ax.set_xticklabels([class_names[i] for i in keep], rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 112)
    if len(keep):
        ax.axhline(100.0 * cm.miou(), color="tab:red", lw=1, ls="--", label=f"mIoU {100 * cm.miou():.1f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def colorize(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) ids in 0..K-1 (255 = ignore, black) -> (H, W, 3) uint8 with the project's label palette."""
    from ovmap.vis.colors import label_palette

    palette = label_palette(num_classes + 1)  # id c -> palette[c + 1]; palette[0] is black
    ids = np.asarray(ids).astype(np.int64)
    shifted = np.where(ids == 255, 0, ids + 1)
    return palette[np.clip(shifted, 0, num_classes)]


def save_qualitative(path: str | Path, rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Path:
    """PNG of the image, the prediction and the ground truth side by side (uint8 (H, W, 3) image)."""
    from PIL import Image

    gap = np.full((rgb.shape[0], 4, 3), 255, dtype=np.uint8)
    panel = np.concatenate([rgb, gap, colorize(pred, num_classes), gap, colorize(gt, num_classes)], axis=1)
    buf = io.BytesIO()
    Image.fromarray(panel).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


# --- ovmap report ------------------------------------------------------------------------------------------------
def is_eval2d(doc: Mapping[str, Any]) -> bool:
    """Whether a parsed ``metrics.json`` comes from ``ovmap eval2d``."""
    return doc.get("task") == TASK


def _method(doc: Mapping[str, Any]) -> str:
    return str(doc.get("method") or doc.get("encoder", {}).get("name", "?"))


def collect_2d(docs: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {resolution: {dataset: mIoU}}}; a second run of the same cell is an error (ambiguous)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    seen: dict[tuple[str, str, str], Path] = {}
    for path, doc in docs:
        method, res, dataset = _method(doc), str(doc.get("resolution")), str(doc.get("dataset"))
        if (method, res, dataset) in seen:
            raise ValueError(f"two eval2d runs of {method} on {dataset} at resolution {res}: "
                             f"{seen[(method, res, dataset)]} and {path}; report them separately")
        seen[(method, res, dataset)] = path
        miou = doc.get("miou")
        table.setdefault(method, {}).setdefault(res, {})[dataset] = float("nan") if miou is None else float(miou)
    return table


def best_up_to(per_res: Mapping[str, Mapping[str, float]], limit: str) -> dict[str, float]:
    """Per dataset, the best mIoU over the resolutions up to ``limit`` (low < mid < high) that were run."""
    allowed = RESOLUTIONS[: RESOLUTIONS.index(limit) + 1]
    out: dict[str, float] = {}
    for res in allowed:
        for dataset, value in per_res.get(res, {}).items():
            if math.isfinite(value) and (dataset not in out or value > out[dataset]):
                out[dataset] = value
    return out


def _table(rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    cols = list(TABLE_COLUMNS)  # always Table 1's five columns ('-' where a benchmark was not run)
    cols += sorted({c for r in rows.values() for c in r} - set(cols))
    head = [SPECS[c].title if c in SPECS else c for c in cols]
    lines = ["| method | " + " | ".join(head) + " | Avg |", "|---|" + "---:|" * (len(cols) + 1)]
    for method, row in rows.items():
        values = [row.get(c) for c in cols]
        full = all(v is not None and math.isfinite(v) for v in values) and len(cols) == len(TABLE_COLUMNS)
        avg = _fmt(sum(values) / len(values)) if full else "-"  # the average only over all five benchmarks
        lines.append(f"| {method} | " + " | ".join(_fmt(v) for v in values) + f" | {avg} |")
    return lines


def write_report2d(out: str | Path, docs: Sequence[tuple[Path, Mapping[str, Any]]]) -> Path:
    """Markdown with Table A.2 (one table per resolution) and Table 1 (best up to each resolution limit)."""
    table = collect_2d(docs)
    lines = ["# 2D open-vocabulary semantic segmentation (merged, mIoU %)", ""]
    for limit in RESOLUTIONS:
        rows = {m: best_up_to(per_res, limit) for m, per_res in table.items()}
        rows = {m: r for m, r in rows.items() if r}
        if rows:
            lines += [f"## Table 1 shape: best resolution up to '{limit}'", "", *_table(rows), ""]
    for res in RESOLUTIONS:
        rows = {m: per_res[res] for m, per_res in table.items() if res in per_res}
        if rows:
            lines += [f"## Per resolution: {res}", "", *_table(rows), ""]
    lines.append(f"Merged {len(docs)} eval2d run(s). Avg is shown only when all five benchmarks are present.")
    return atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
