"""The rerun recording: written while mapping, read back with rerun's own reader (rerun.chunk.RrdReader)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from _helpers.rerun_recording import VOXEL, last_value, read_entities


@pytest.mark.parametrize("mode", ["feature", "probability"])
def test_recording_has_the_documented_entities(tmp_path, small_scene, oracle, mode):
    from ovmap.pipeline import build_map
    from ovmap.vis import RerunVisualizer

    rrd = tmp_path / "run.rrd"
    vis = RerunVisualizer(mode="save", save_path=rrd, map_period=2)
    voxel_map, _ = build_map(
        small_scene, oracle, mode=mode, voxel_size=VOXEL, progress=False, on_frame=vis.on_frame
    )
    vis.log_map(voxel_map)
    texts = ["a chair", "a bed / sofa"] if mode == "feature" else ["chair", "bed"]
    paths = vis.log_queries(voxel_map, voxel_map.query(texts))
    vis.close()
    expected_query_paths = (
        ["world/queries/a_chair", "world/queries/a_bed_sofa"]  # ovmap.naming.slug
        if mode == "feature"
        else ["world/queries/chair", "world/queries/bed"]
    )
    assert paths == expected_query_paths

    rows = read_entities(rrd)
    n = len(voxel_map)
    for entity in (
        "/world/voxel_rgb",
        "/world/voxel_feature",
        "/world/voxel_log_hit_count",
        "/world/voxel_label",
        *(f"/{p}" for p in paths),
    ):
        assert entity in rows, f"{entity} missing; have {sorted(rows)}"
        assert len(last_value(rows[entity], "Points3D:positions")) == n, entity
    # top voxels per query: those within the upper half of the query's score range
    sim = voxel_map.query(texts).similarity[0].numpy()
    top = (sim - sim.min()) >= 0.5 * (sim.max() - sim.min())
    top_positions = last_value(rows[f"/world/query_top/{paths[0].split('/')[-1]}"], "Points3D:positions")
    np.testing.assert_allclose(np.array(top_positions), voxel_map.centers.numpy()[top], atol=1e-5)
    # the final clouds sit where the voxels are
    np.testing.assert_allclose(
        np.array(last_value(rows["/world/voxel_rgb"], "Points3D:positions")),
        voxel_map.centers.numpy(),
        atol=1e-5,
    )
    # labels: argmax (probability) / best class name (oracle features) = the voxel's dominant GT class
    ids = np.array(last_value(rows["/world/voxel_label"], "Points3D:class_ids"))
    dominant = voxel_map.features.float()[:, 1:].argmax(dim=1).numpy() + 1
    assert (ids == dominant).mean() > 0.99
    # camera, images, timeline, annotation context and world axes
    frames = len(small_scene)
    pose_rows = [r for f, r in rows["/world/pose"] if r.get("Transform3D:translation") is not None]
    assert len(pose_rows) == frames
    np.testing.assert_allclose(
        last_value(rows["/world/pose"], "Transform3D:translation")[0],
        small_scene[frames - 1]["pose"][:3, 3],
        atol=1e-5,
    )
    assert any(r.get("Pinhole:image_from_camera") is not None for _, r in rows["/world/pose"])
    for entity in (
        "/world/pose/img",
        "/world/pose/img_depth",
        "/world/pose/img_label",
        "/world/pose/img_feat",
    ):
        assert sorted(f for f, _ in rows[entity]) == list(range(frames)), entity
    assert any(r.get("AnnotationContext:context") for _, r in rows["/world"])
    assert any(r.get("ViewCoordinates:xyz") for _, r in rows["/world"])
    assert len(last_value(rows["/world/trajectory"], "LineStrips3D:strips")[0]) == frames


def test_spawn_without_display_falls_back_to_save(tmp_path, monkeypatch, caplog):
    from ovmap.vis import RerunVisualizer

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    rrd = tmp_path / "fallback.rrd"
    with caplog.at_level(logging.WARNING, logger="ovmap.vis"):
        vis = RerunVisualizer(mode="spawn", save_path=rrd)
    assert vis.mode == "save"
    assert any("needs a display" in r.getMessage() for r in caplog.records)
    vis.rec.log("world/p", vis.rr.Points3D(np.zeros((3, 3))))
    vis.close()
    assert "/world/p" in read_entities(rrd)


def test_build_visualizer_from_configs(tmp_path, compose_cfg):
    from ovmap.vis import RerunVisualizer, build_visualizer

    assert build_visualizer(compose_cfg("map", []).vis) is None  # vis: none is the default
    cfg = compose_cfg("map", ["vis=rerun", f"out_dir={tmp_path}"])
    vis = build_visualizer(cfg.vis)
    assert isinstance(vis, RerunVisualizer) and vis.mode == "save"
    assert vis.save_path == tmp_path / "recording.rrd"
    vis.close()
    with pytest.raises(ValueError, match="vis.mode must be one of"):
        RerunVisualizer(mode="window", save_path=tmp_path / "x.rrd")


def test_pca_colours_fixed_basis_running_range():
    from ovmap.vis.colors import PCAColorizer

    gen = torch.Generator().manual_seed(0)
    # variance mostly along channel 2, then 0, then 4
    first = torch.randn(500, 6, generator=gen) * torch.tensor([3.0, 0.1, 5.0, 0.1, 1.0, 0.1])
    pca = PCAColorizer()
    colors = pca(first)
    assert colors.shape == (500, 3) and colors.dtype == np.uint8
    assert colors.min(axis=0).tolist() == [0, 0, 0] and colors.max(axis=0).tolist() == [255, 255, 255]
    axes = pca.components.abs().argmax(dim=0).tolist()
    assert axes == [2, 0, 4]
    basis = pca.components.clone()
    lo, hi = pca.lo.clone(), pca.hi.clone()
    pca(first * 0.5)  # inside the range: basis and range unchanged, same colours for the same features
    assert torch.equal(pca.components, basis) and torch.equal(pca.lo, lo) and torch.equal(pca.hi, hi)
    np.testing.assert_array_equal(pca(first), colors)
    pca(first * 3)  # widens the range only
    assert (pca.lo <= lo).all() and (pca.hi >= hi).all() and torch.equal(pca.components, basis)


def test_viewer_url():
    from ovmap.vis import viewer_url

    assert viewer_url(9090, "rerun+http://127.0.0.1:9876/proxy") == (
        "http://127.0.0.1:9090/?url=rerun%2Bhttp%3A%2F%2F127.0.0.1%3A9876%2Fproxy"
    )


def test_help_lists_view_and_segment():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ovmap", "--help"], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "\n  view " in proc.stdout and "\n  segment " in proc.stdout


def test_serve_refuses_a_busy_port_with_a_clear_error(tmp_path):
    import socket

    from ovmap.vis import RerunVisualizer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} is in use.*vis.grpc_port"):
            RerunVisualizer(
                mode="serve",
                grpc_port=port,
                web_port=port + 1 if port < 65535 else 1024,
                save_path=tmp_path / "x.rrd",
            )
