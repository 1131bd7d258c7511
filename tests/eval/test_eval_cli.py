"""`ovmap eval` / `ovmap report` end to end: rendered frames -> oracle -> map -> eval3d -> result files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import naive_eval

SMALL = ["dataset.preset=test", "device=cpu", "progress=false"]


def ovmap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovmap", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("map_cache")


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("eval_feature")
    proc = ovmap("eval", *SMALL, f"out_dir={out}", f"cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr
    return out


def test_oracle_eval_on_synthetic_metrics_equal_a_naive_recomputation(feature_run, cache):
    """Deterministic scene (seed 0): mIoU, f-mIoU and accuracy equal a naive per-voxel recomputation."""
    from ovmap.datasets import SyntheticScene
    from ovmap.encoders.oracle import OracleEncoder

    doc = json.loads((feature_run / "metrics.json").read_text())
    scene = doc["scenes"]["synthetic_seed0"]
    dataset = SyntheticScene(preset="test", seed=0)
    encoder = OracleEncoder(list(dataset.class_names))
    voxel_map = naive_eval.cached_map(cache, "synthetic_seed0")
    want = naive_eval.oracle_metrics(dataset, voxel_map, encoder, "external", "feature")
    assert scene["num_gt_voxels_total"] == want["num_gt_voxels_total"]
    for key in ("miou", "fmiou", "acc"):
        assert scene[key] == pytest.approx(want[key], abs=1e-12), key
        assert doc["mean"][key] == scene[key]
    assert 0.5 < want["miou"] < 1.0  # a meaningful score, not a degenerate one


def test_oracle_eval_on_synthetic_writes_all_outputs(feature_run):
    doc = json.loads((feature_run / "metrics.json").read_text())
    scene = doc["scenes"]["synthetic_seed0"]
    assert scene["num_gt_voxels"] > 10_000 and scene["num_map_voxels"] > 10_000
    assert doc["protocol"]["k"] == 5 and doc["version"]
    assert doc["scene_info"]["synthetic_seed0"]["gt_source"] == "external"
    assert "independent" in doc
    rows = list(csv.DictReader((feature_run / "per_class_synthetic_seed0.csv").open()))
    assert [r["name"] for r in rows][:3] == ["wall", "floor", "ceiling"]
    # the CSV agrees with itself and with metrics.json: IoU = tp / (tp + fp + fn), mIoU = mean over present
    ious = []
    for r in rows:
        tp, fp, fn = int(r["tp"]), int(r["fp"]), int(r["fn"])
        assert int(r["gt_voxels"]) == tp + fn
        if tp + fn:
            assert float(r["iou"]) == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
            ious.append(tp / (tp + fp + fn))
    assert np.mean(ious) == pytest.approx(scene["miou"], abs=1e-6)
    assert "| oracle (feature) |" in (feature_run / "results.md").read_text()
    assert (feature_run / "per_class_iou.png").read_bytes()[:4] == b"\x89PNG"


def test_second_run_reuses_the_cached_map(feature_run, cache, tmp_path):
    proc = ovmap("eval", *SMALL, f"out_dir={tmp_path}", f"cache_dir={cache}", "eval.independent_threshold=null")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["scene_info"]["synthetic_seed0"]["map_source"] == "cache"
    first = json.loads((feature_run / "metrics.json").read_text())
    assert doc["scenes"]["synthetic_seed0"]["miou"] == first["scenes"]["synthetic_seed0"]["miou"]


def test_folder_scene_with_lifted_labels_in_probability_mode(tmp_path):
    from ovmap.datasets import FolderDataset, SyntheticScene, write_folder

    scene_dir = tmp_path / "scene"
    write_folder(SyntheticScene(preset="test", num_frames=6), scene_dir)
    (scene_dir / "gt_points.npz").unlink()  # no external GT: eval lifts labels/
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = ovmap("eval", "dataset=folder", f"dataset.path={scene_dir}", "mapping.mode=probability", "device=cpu",
                 "progress=false", f"cache_dir={cache}", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    (name, scene), = doc["scenes"].items()
    assert doc["scene_info"][name]["gt_source"] == "lifted"
    # the lifted GT voxels are exactly the map's voxels; the metrics equal a naive recomputation
    assert scene["num_gt_voxels_total"] == scene["num_map_voxels"]
    dataset = FolderDataset(scene_dir)
    want = naive_eval.oracle_metrics(dataset, naive_eval.cached_map(cache, ""), None, "lifted", "probability")
    assert scene["num_gt_voxels_total"] == want["num_gt_voxels_total"]
    for key in ("miou", "fmiou", "acc"):
        assert scene[key] == pytest.approx(want[key], abs=1e-12), key
    assert want["miou"] > 0.5


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_jobs_and_report_merge(tmp_path, cache, launcher):
    if launcher == "joblib":
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    out = tmp_path / "sweep"
    proc = ovmap("eval", "-m", f"hydra/launcher={launcher}", "dataset.seed=0,1", *SMALL,
                 "eval.independent_threshold=null", f"out_dir={out}", f"cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.parent for p in out.rglob("metrics.json"))
    assert len(jobs) == 2 and jobs[0] != jobs[1]
    scores = [json.loads((j / "metrics.json").read_text())["mean"]["miou"] for j in jobs]
    proc = ovmap("report", str(out))
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| oracle (feature)"))
    assert f"{100 * np.mean(scores):.2f}" in row  # unweighted mean over the two single-scene jobs


def test_eval_bad_input(tmp_path):
    proc = ovmap("eval", *SMALL, "encoder=radseg", f"out_dir={tmp_path}")
    assert proc.returncode == 1 and "checkpoint" in proc.stderr.lower()
    proc = ovmap("report", str(tmp_path / "nothing_here"))
    assert proc.returncode == 1 and "no metrics.json" in proc.stderr


def test_eval_with_rerun_logs_ground_truth_predictions_and_metrics(tmp_path, cache):
    from _helpers.rerun_recording import read_entities

    proc = ovmap("eval", *SMALL, "vis=rerun", "eval.independent_threshold=null", f"out_dir={tmp_path}",
                 f"cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    rows = read_entities(tmp_path / "recording.rrd")
    for entity in ("/world/ground_truth", "/world/predictions/voxels", "/world/voxel_rgb"):
        assert entity in rows, sorted(rows)
    (_, miou_row), = rows["/metrics/semseg/summary/miou"]
    (scalar,) = [v for k, v in miou_row.items() if k.startswith("Scalars:")]
    assert float(np.ravel(scalar)[0]) == pytest.approx(doc["scenes"]["synthetic_seed0"]["miou"], abs=1e-6)
