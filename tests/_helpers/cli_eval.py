"""`ovmap eval` on the built-in synthetic room in a subprocess: the encoders' end-to-end test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def synthetic_eval(tmp_path: Path, encoder: str, *overrides: str, num_frames: int = 3,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``ovmap eval dataset=synthetic dataset.preset=test encoder=<encoder> <overrides>`` on the CPU, assert it
    exits 0 (its stderr is the failure message), and return the ``metrics.json`` it wrote."""
    proc = subprocess.run([sys.executable, "-m", "ovmap", "eval", "dataset=synthetic", "dataset.preset=test",
                           f"dataset.num_frames={num_frames}", "device=cpu", "progress=false", f"encoder={encoder}",
                           *overrides, f"out_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "out" / "metrics.json").read_text())
