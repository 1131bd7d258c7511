"""`ovmap eval2d` end to end: oracle on the five miniature benchmarks x two budgets in one Hydra multirun (mIoU 1
exactly), then `ovmap report` merging them into Table-1-shaped tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval2d._helpers_data import NUM_CLASSES, write_mini


def ovmap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovmap", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data2d")
    for name in NUM_CLASSES:
        write_mini(name, root / name)
    out = tmp_path_factory.mktemp("eval2d_runs")
    proc = ovmap("eval2d", "-m", "dataset2d=" + ",".join(NUM_CLASSES), "resolution=low,high", "encoder=oracle",
                 f"dataset2d.path={root}/${{dataset2d.name}}", f"out_dir={out}", "progress=false", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_oracle_scores_miou_one_on_every_benchmark(multirun: Path) -> None:
    docs = [json.loads(p.read_text()) for p in sorted(multirun.rglob("metrics.json"))]
    assert sorted((d["dataset"], d["resolution"]) for d in docs) == sorted(
        (n, r) for n in NUM_CLASSES for r in ("low", "high"))
    for doc in docs:
        assert doc["miou"] == 1.0 and doc["acc"] == 1.0 and doc["num_images"] == 2
        present = [v for v in doc["per_class_iou"].values() if v is not None]
        assert present and all(v == 1.0 for v in present)
        assert len(doc["per_class_iou"]) == NUM_CLASSES[doc["dataset"]]
    city_high = next(d for d in docs if d["dataset"] == "cityscapes" and d["resolution"] == "high")
    assert city_high["budget"] == {"short_side": 1344, "crop": 336, "stride": 336, "max_long_side": 2048}
    job = next(p.parent for p in multirun.rglob("metrics.json"))
    for name in ("per_class_iou.csv", "results.md", "per_class_iou.png"):
        assert (job / name).is_file()
    assert len(list((job / "qualitative").glob("*.png"))) == 2


def test_report_merges_2d_runs_into_table1_shape(multirun: Path) -> None:
    proc = ovmap("report", str(multirun))
    assert proc.returncode == 0, proc.stderr
    text = (multirun / "report2d.md").read_text()
    assert "| method | CTX | VOC | Stuff | ADE | City | Avg |" in text
    assert "## Table 1 shape: best resolution up to 'mid'" in text and "## Per resolution: high" in text
    assert text.count("| oracle | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 |") == 5  # 3 limits + 2 res


def test_bad_input_gives_one_line_errors(tmp_path: Path) -> None:
    proc = ovmap("eval2d", "dataset2d=ade20k", f"dataset2d.path={tmp_path / 'none'}", "progress=false")
    assert proc.returncode == 1 and proc.stderr.startswith("ovmap: error: ade20k: dataset folder")
    proc = ovmap("eval2d", "dataset2d=ade20k", "progress=false")  # a configuration error: checked before any work
    assert proc.returncode == 2 and proc.stderr == (
        "ovmap: error: the setting 'dataset2d.path' is required: add dataset2d.path=...\n")


def test_report_with_2d_and_3d_runs(multirun: Path, tmp_path: Path) -> None:
    """A folder holding both kinds: 3D runs go to report.md as before, 2D runs to report2d.md."""
    import shutil

    src = next(p for p in multirun.rglob("metrics.json") if json.loads(p.read_text())["dataset"] == "voc20")
    (tmp_path / "run2d").mkdir()
    shutil.copy(src, tmp_path / "run2d" / "metrics.json")
    (tmp_path / "run3d").mkdir()
    doc3d = {"encoder": {"name": "oracle"}, "mapping": {"mode": "feature"}, "dataset": "replica",
             "mean": {"miou": 0.5, "fmiou": 0.25, "num_scenes": 1}}
    (tmp_path / "run3d" / "metrics.json").write_text(json.dumps(doc3d))
    proc = ovmap("report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "| oracle | - | 100.00 | - | - | - | - |" in (tmp_path / "report2d.md").read_text()
    assert "oracle (feature)" in (tmp_path / "report.md").read_text()


def test_encoder2d_preset_and_command_line_precedence() -> None:
    """encoder=<name> pulls configs/encoder2d/<name>.yaml into the encoder node; encoder.<key>= still wins."""
    import yaml

    def job(*args: str) -> dict:
        proc = ovmap("eval2d", "dataset2d.path=/nowhere", *args, "--cfg", "job")
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)

    assert job("encoder=trident")["encoder"]["temperature"] == 40.0
    cfg = job("encoder=trident", "encoder.temperature=7", "dataset2d=ade20k", "resolution=high")
    assert cfg["encoder"]["temperature"] == 7 and cfg["dataset2d"]["encoder_settings"]["refine_neg_cos"] is False
    assert cfg["resolution"]["ade20k"] == {"short_side": 672, "crop": 336, "stride": 336}
    assert "temperature" not in job("encoder=oracle")["encoder"]  # no preset file: the encoder yaml as is


def test_multirun_with_the_joblib_launcher(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    for name in ("voc20", "cityscapes"):
        write_mini(name, tmp_path / name)
    out = tmp_path / "sweep"
    proc = ovmap("eval2d", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset2d=voc20,cityscapes",
                 "resolution=low", "encoder=oracle", f"dataset2d.path={tmp_path}/${{dataset2d.name}}",
                 f"out_dir={out}", "progress=false", "device=cpu", "num_qualitative=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = [json.loads(p.read_text()) for p in sorted(out.rglob("metrics.json"))]
    assert sorted(d["dataset"] for d in docs) == ["cityscapes", "voc20"] and all(d["miou"] == 1.0 for d in docs)
