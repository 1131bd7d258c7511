"""The `ovmap` command line, run as a user would (subprocess), on the small synthetic preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SMALL = ["dataset.preset=test", "device=cpu", "progress=false"]


def ovmap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovmap", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = ovmap("demo", *SMALL, f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert f"map file   : {out / 'map.npz'}" in proc.stdout
    return out


def test_help_lists_commands():
    proc = ovmap("--help")
    assert proc.returncode == 0
    for command in ("map", "demo", "query", "export"):
        assert f"\n  {command} " in proc.stdout


def test_demo_writes_map_clouds_and_answers_queries(demo_dir):
    assert (demo_dir / "map.npz").is_file() and (demo_dir / "map_rgb.ply").is_file()
    for text in ("a_chair", "something_to_sit_on", "a_place_to_sleep"):
        assert (demo_dir / f"query_{text}.ply").is_file()
    with np.load(demo_dir / "map.npz", allow_pickle=False) as data:
        assert str(data["mode"]) == "feature"
        assert json.loads(str(data["encoder"]))["name"] == "oracle"


def test_query_command_with_positional_texts(demo_dir, tmp_path):
    proc = ovmap("query", f"map={demo_dir / 'map.npz'}", "a lamp", "somewhere to put books", "device=cpu",
                 f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert '"a lamp": top region centroid' in proc.stdout
    assert (tmp_path / "query_a_lamp.ply").is_file()
    assert (tmp_path / "query_somewhere_to_put_books.ply").is_file()


def test_export_writes_a_ply_with_every_voxel(demo_dir, tmp_path):
    out = tmp_path / "cloud.ply"
    proc = ovmap("export", f"map={demo_dir / 'map.npz'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(demo_dir / "map.npz", allow_pickle=False) as data:
        n = data["keys"].shape[0]
    header = out.read_bytes()[:300].decode("ascii", errors="replace")
    assert f"element vertex {n}\n" in header


def test_map_command_probability_mode(tmp_path):
    proc = ovmap("map", *SMALL, "mapping.mode=probability", "mapping.voxel_size=0.1", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'map.npz'}" in proc.stdout
    with np.load(tmp_path / "map.npz", allow_pickle=False) as data:
        assert str(data["mode"]) == "probability"
        assert float(data["voxel_size"]) == pytest.approx(0.1)
        assert list(data["class_names"])[1:4] == ["wall", "floor", "ceiling"]


def test_bad_input_gives_clear_errors(tmp_path):
    proc = ovmap("mapp")
    assert proc.returncode == 2 and "Did you mean 'map'" in proc.stderr
    proc = ovmap("map", *SMALL, "encoder.name=oracel", f"out_dir={tmp_path}")
    assert proc.returncode == 1 and "Unknown encoder 'oracel'" in proc.stderr
    proc = ovmap("query", "a chair")
    assert proc.returncode == 2 and "'map' is required" in proc.stderr
    proc = ovmap("query", f"map={tmp_path / 'missing.npz'}", "a chair")
    assert proc.returncode == 1 and "missing.npz" in proc.stderr
    proc = ovmap("map", "dataset=folder", f"dataset.path={tmp_path / 'nowhere'}", "device=cpu",
                 f"out_dir={tmp_path}")
    assert proc.returncode == 1 and "nowhere" in proc.stderr
