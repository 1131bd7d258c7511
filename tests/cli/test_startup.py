"""``ovmap map ... encoder=oracle`` does not import what it never calls before its first frame."""

from __future__ import annotations

import subprocess
import sys

# stops the command at its first integrated frame and prints which heavy packages are loaded by then
SNIPPET = r"""
import os, sys
import ovmap.mapping.voxel_map as vm
orig = vm.VoxelMap.integrate
def first(self, *a, **k):
    orig(self, *a, **k)
    print("LOADED", sorted(m for m in ("transformers", "rerun", "matplotlib", "sklearn") if m in sys.modules))
    sys.stdout.flush()
    os._exit(0)
vm.VoxelMap.integrate = first
from ovmap.cli import entrypoint
entrypoint(sys.argv[1:])
"""


def test_oracle_mapping_loads_no_text_model_or_viewer(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET, "map", "dataset.preset=test", "dataset.num_frames=2", "encoder=oracle",
         "device=cpu", "progress=false", f"out_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
