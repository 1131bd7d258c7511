"""Scale-out through Hydra's submitit launcher: the local executor runs the same code path as submitit_slurm."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[test]' (hydra-submitit-launcher)")


@pytest.mark.slow
def test_submitit_local_two_scene_sweep_then_report(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "ovmap", "eval", "-m", "hydra/launcher=submitit_local", "dataset.preset=test",
         "dataset.seed=0,1", "mapping.voxel_size=0.1", "device=cpu", "progress=false", "use_cache=false",
         f"out_dir={out}"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(out.glob("*/metrics.json"))
    assert [f.parent.name for f in files] == [
        "0_dataset.preset=test,dataset.seed=0,mapping.voxel_size=0.1",
        "1_dataset.preset=test,dataset.seed=1,mapping.voxel_size=0.1",
    ]
    scenes = [list(json.loads(f.read_text())["scenes"]) for f in files]
    assert len(scenes[0]) == 1 and len(scenes[1]) == 1 and scenes[0] != scenes[1]  # two different rooms
    report = subprocess.run([sys.executable, "-m", "ovmap", "report", str(out)], capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr
    assert "merged 2 metrics.json file(s)" in report.stdout
