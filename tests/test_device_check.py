"""scripts/device_check.sh (the prepared GPU check) keeps working: its CPU smoke mode runs every step."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_smoke_run_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for step in ("fusion", "radseg", "online", "eval"):
        assert f"step {step}: exit 0" in proc.stdout, proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fusion"]["voxels"] >= 20_000 and summary["fusion"]["ms_median"] > 0
    assert summary["online"]["frames"] > 0 and summary["eval"]["map_voxels"] > 0
    assert "| map update" in (tmp_path / "table.md").read_text()
