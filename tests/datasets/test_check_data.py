"""check_dataset / ovmap check-data: every missing file listed with its preparation step; invalid poses counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _helpers_replica import write_nice_replica, write_semnerf
from _helpers_scannet import write_scannet
from _helpers_scannetpp import write_scannetpp

from ovmap.datasets.check import check_dataset


def _gt(path: Path) -> None:
    torch.save({"semseg_gt_xyz": torch.zeros(2, 3, dtype=torch.float64), "semseg_gt_label": torch.tensor([1.0, 2.0])},
               path)


def test_replica_complete_and_missing(tmp_path):
    root = write_nice_replica(tmp_path / "R")
    _gt(root / "office0" / "external_semseg_gt.pt")
    rep = check_dataset("replica", root, scene="office0")
    assert rep.ok, rep.format()
    assert rep.scenes[0].frames == 5
    (root / "office0" / "results" / "depth000001.png").unlink()
    (root / "office0" / "results" / "frame000004.png").unlink()
    (root / "office0" / "external_semseg_gt.pt").unlink()
    rep = check_dataset("replica", root, scene="office0")
    paths = {Path(p.path).name: p.fix for p in rep.all_problems}
    assert {"depth000001.png", "frame000004.jpg", "external_semseg_gt.pt"} <= set(paths)
    assert "download_replica.sh" in paths["depth000001.png"] and "RayFronts" in paths["external_semseg_gt.pt"]
    text = rep.format()
    assert "depth000001.png" in text and "fix:" in text and not rep.ok
    # the protocol list: absent scenes are problems, each named
    rep = check_dataset("replica", root, scenes=["office0", "room1"])
    assert any("room1" in p.path and "scenes there: office0" in p.message for p in rep.all_problems)


def test_scannet_counts_invalid_poses_and_lists_missing(tmp_path):
    root = write_scannet(tmp_path / "S", n=8, bad_poses=(3, 5))
    rep = check_dataset("scannet", root)  # every scan found
    assert rep.ok, rep.format()
    assert [s.scene for s in rep.scenes] == ["scene0011_00"] and rep.invalid_poses == 2 and rep.scenes[0].frames == 6
    assert "2 with invalid poses" in rep.format()
    (root / "scannetv2-labels.combined.tsv").unlink()
    (root / "scene0011_00" / "pose" / "2.txt").unlink()
    lab = root / "scene0011_00" / "scene0011_00_2d-label-filt" / "label-filt" / "6.png"
    lab.unlink()
    rep = check_dataset("scannet", root, scene="scene0011_00")
    probs = {Path(p.path).name: p.fix for p in rep.all_problems}
    assert "label_map" in probs["scannetv2-labels.combined.tsv"]
    assert "SensReader" in probs["2.txt"] or "reader.py" in probs["2.txt"]
    assert "2d-label-filt" in probs["6.png"]


def test_scannetpp_and_semnerf(tmp_path):
    root = write_scannetpp(tmp_path / "P")
    rep = check_dataset("scannetpp", root, scene="bcd2436daf")
    probs = {Path(p.path).name: p.fix for p in rep.all_problems}
    assert set(probs) == {"external_semseg_gt.pt"}, rep.format()
    assert any("fisheye" in n for n in rep.scenes[0].notes) and any("DSC00009" in n for n in rep.scenes[0].notes)
    _gt(root / "bcd2436daf" / "external_semseg_gt.pt")
    (root / "depth" / "bcd2436daf" / "dslr" / "render_depth" / "DSC00003.png").unlink()
    rep = check_dataset("scannetpp", root, scene="bcd2436daf")
    assert [Path(p.path).name for p in rep.all_problems] == ["DSC00003.png"]
    assert "common.render" in rep.all_problems[0].fix
    root = write_semnerf(tmp_path / "N")
    assert check_dataset("replica_semnerf", root, scene="office_0").ok
    (root / "office_0" / "Sequence_2" / "rgb" / "rgb_1.png").unlink()
    rep = check_dataset("replica_semnerf", root)
    assert [Path(p.path).name for p in rep.all_problems] == ["rgb_1.png"]


def test_malformed_content_and_missing_root(tmp_path):
    root = write_nice_replica(tmp_path / "R")
    _gt(root / "office0" / "external_semseg_gt.pt")
    (root / "cam_params.json").write_text('{"camera": {"w": 60}}')
    rep = check_dataset("replica", root, scene="office0")
    assert not rep.ok and "cam_params.json" in rep.format()
    rep = check_dataset("scannet", tmp_path / "nope")
    assert not rep.ok and "does not exist" in rep.format()
    with pytest.raises(KeyError):
        check_dataset("synthetic", tmp_path)


def test_cli_check_data(tmp_path, capsys):
    from ovmap.cli import entrypoint

    root = write_scannet(tmp_path / "S")
    entrypoint(["check-data", "dataset=scannet", f"dataset.path={root}", "dataset.scene=scene0011_00"])
    assert "complete" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        entrypoint(["check-data", "dataset=scannet", f"dataset.path={root}"])  # the 12 protocol scans
    assert e.value.code == 1
    out = capsys.readouterr()
    assert "scene0518_00" in out.out and "check-data found problems" in out.err
