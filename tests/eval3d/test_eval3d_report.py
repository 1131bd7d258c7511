"""Results writers: metrics.json, per-class CSV, results.md, per-class IoU PNG (atomic writes)."""

from __future__ import annotations

import csv
import json

import pytest

import ovmap
from ovmap.eval3d import (
    EvalSettings,
    mean_over_scenes,
    plot_per_class_iou,
    scene_metrics,
    write_metrics_json,
    write_per_class_csv,
    write_results_md,
)

NAMES = ["", "wall", "chair", "lamp"]


@pytest.fixture()
def scenes():
    a = scene_metrics([1, 1, 1, 2, 2, 3, 0, 0], [1, 2, 0, 2, 1, 1, 3, 2], 3, scene="a", num_map_voxels=10)
    b = scene_metrics([1, 1, 2, 2], [1, 1, 2, 2], 3, scene="b", num_map_voxels=4)
    return {"a": a, "b": b}


def test_metrics_json(tmp_path, scenes):
    p = write_metrics_json(tmp_path / "out" / "metrics.json", scenes, EvalSettings.paper(), class_names=NAMES)
    d = json.loads(p.read_text())
    assert d["version"] == ovmap.__version__
    assert d["protocol"]["reference_compatible"] is True
    assert d["protocol"]["knn_backend"] == "balltree" and d["protocol"]["denoise_scope"] == "chunk"
    assert d["protocol"]["k"] == 5 and d["protocol"]["chunk_size"] == 10000
    sa = d["scenes"]["a"]
    assert sa["miou"] == pytest.approx((1 / 5 + 1 / 3 + 0) / 3)
    assert sa["num_gt_voxels"] == 6 and sa["num_map_voxels"] == 10
    assert set(sa["per_class_iou"]) == {"wall", "chair", "lamp"}
    mean = d["mean"]
    assert mean["miou"] == pytest.approx((sa["miou"] + 1.0) / 2)
    assert mean["num_scenes"] == 2 and mean["num_gt_voxels"] == 10 and mean["num_map_voxels"] == 14
    for key in ("miou", "fmiou", "acc"):
        assert 0.0 <= mean[key] <= 1.0
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["metrics.json"]  # no temp files left


def test_metrics_json_refuses_nan_scene(tmp_path, scenes):
    scenes["b"].fmiou = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_metrics_json(tmp_path / "m.json", scenes, EvalSettings())
    assert not (tmp_path / "m.json").exists()


def test_per_class_csv(tmp_path, scenes):
    p = write_per_class_csv(tmp_path / "per_class_b.csv", scenes["b"], NAMES)
    rows = list(csv.DictReader(p.open()))
    assert [r["name"] for r in rows] == ["wall", "chair", "lamp"]
    assert rows[0] == {"index": "1", "name": "wall", "tp": "2", "fp": "0", "fn": "0", "iou": "1.000000",
                       "gt_voxels": "2"}
    assert rows[2]["iou"] == "" and rows[2]["gt_voxels"] == "0"  # absent class: NaN -> empty
    p2 = write_per_class_csv(tmp_path / "per_class_a.csv", scenes["a"], NAMES[1:])  # C names also accepted
    assert list(csv.DictReader(p2.open()))[0]["iou"] == "0.200000"


def test_results_md(tmp_path, scenes):
    mean = mean_over_scenes(scenes)
    p = write_results_md(tmp_path / "results.md", {"Replica": mean, "ScanNet": scenes["b"]}, method="RADSeg",
                         settings=EvalSettings.paper())
    text = p.read_text()
    assert "| Method | Replica mIoU | Replica f-mIoU | ScanNet mIoU | ScanNet f-mIoU |" in text
    assert f"| RADSeg | {100 * mean.miou:.2f} | {100 * mean.fmiou:.2f} | 100.00 | 100.00 |" in text
    assert "reference_compatible=True" in text
    nested = write_results_md(tmp_path / "r2.md", {"A": {"Replica": {"miou": 0.5, "fmiou": 0.25}},
                                                   "B": {"ScanNet": {"miou": 0.1, "fmiou": 0.2}}})
    t2 = nested.read_text()
    assert "| A | 50.00 | 25.00 | – | – |" in t2 and "| B | – | – | 10.00 | 20.00 |" in t2


def test_plot_per_class_iou(tmp_path, scenes):
    p = plot_per_class_iou(tmp_path / "per_class_iou.png", scenes, NAMES, title="test")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    q = plot_per_class_iou(tmp_path / "one.png", scenes["a"], NAMES)
    assert q.stat().st_size > 1000
    assert sorted(f.name for f in tmp_path.iterdir()) == ["one.png", "per_class_iou.png"]
