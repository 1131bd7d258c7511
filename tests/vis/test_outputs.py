"""Files people look at: top-down query PNGs, segmentation outputs, coloured PLY exports, ``ovmap view``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from _helpers.rerun_recording import read_ply

VIRIDIS_TOP = np.array([253, 231, 37])


def png_geometry(path):
    """The map area in pixels and its world extent, from the PNG text chunks written by save_topdown_png."""
    img = Image.open(path)
    x0, y0, x1, y1 = (float(v) for v in img.text["ovmap:axes_px"].split())
    xmin, xmax, ymin, ymax = (float(v) for v in img.text["ovmap:extent_m"].split())
    return np.asarray(img.convert("RGB")).astype(np.int64), (x0, y0, x1, y1), (xmin, xmax, ymin, ymax)


def brightest_world_xy(path) -> tuple[np.ndarray, float]:
    """World x, y of the map pixel closest to the top of the viridis ramp, and that colour distance."""
    rgb, (x0, y0, x1, y1), (xmin, xmax, ymin, ymax) = png_geometry(path)
    inner = rgb[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1]
    dist = np.abs(inner - VIRIDIS_TOP).sum(axis=2)
    r, c = np.unravel_index(np.argmin(dist), dist.shape)
    px, py = c + int(np.ceil(x0)) + 1 + 0.5, r + int(np.ceil(y0)) + 1 + 0.5
    wx = xmin + (px - x0) / (x1 - x0) * (xmax - xmin)
    wy = ymax - (py - y0) / (y1 - y0) * (ymax - ymin)
    return np.array([wx, wy]), float(dist.min())


def test_topdown_png_brightest_pixel_over_the_best_voxel(tmp_path):
    from ovmap.vis.images import save_topdown_png, topdown_grid

    rng = np.random.default_rng(0)
    vs = 0.1
    keys = np.stack(np.meshgrid(np.arange(-20, 25), np.arange(-10, 18), np.arange(0, 6), indexing="ij"), -1)
    keys = keys.reshape(-1, 3)[rng.random(45 * 28 * 6) < 0.5]
    centers = keys * vs + np.array([0.0, 0.0, 0.05])
    scores = rng.random(len(keys)) * 0.5
    best = rng.integers(len(keys))
    scores[best] = 0.9
    grid, extent = topdown_grid(centers, scores, vs)
    # the grid is the column-wise max (independent loop)
    expected = {}
    for (i, j, _), s in zip(keys, scores):
        expected[(i, j)] = max(expected.get((i, j), -np.inf), s)
    assert np.isfinite(grid).sum() == len(expected)
    for (i, j), s in expected.items():
        assert grid[j - keys[:, 1].min(), i - keys[:, 0].min()] == pytest.approx(s)
    assert extent[0] == pytest.approx(centers[:, 0].min() - vs / 2)

    png = save_topdown_png(tmp_path / "q.png", centers, scores, vs, title="a test query")
    xy, dist = brightest_world_xy(png)
    assert dist < 30  # a truly yellow pixel exists
    assert np.abs(xy - centers[best, :2]).max() <= vs  # ... and it lies over the best voxel's column


def test_query_outputs_png_next_to_ply(tmp_path, feature_map):
    from ovmap.commands.common import answer_queries

    lines = answer_queries(feature_map, ["a chair"], tmp_path, margin=0.05)
    png = tmp_path / "query_a_chair.png"
    assert png.is_file() and (tmp_path / "query_a_chair.ply").is_file() and str(png) in lines[0]
    sim = feature_map.query(["a chair"]).similarity[0].numpy()
    centers = feature_map.centers.numpy()
    xy, dist = brightest_world_xy(png)
    assert dist < 30
    # the yellow pixel is over a column holding one of the top-scoring (chair) voxels
    top = centers[sim >= sim.max() - 1e-4]
    assert np.abs(top[:, :2] - xy).max(axis=1).min() <= feature_map.voxel_size


def test_segment_oracle_frame_equals_ground_truth(tmp_path, folder_scene, compose_cfg, capsys):
    import cv2

    from ovmap.commands.segment import run_segment
    from ovmap.datasets import build_dataset

    cfg = compose_cfg("segment", [f"frame={folder_scene}", "index=3", f"out_dir={tmp_path}", "device=cpu"])
    run_segment(cfg)
    out = capsys.readouterr().out
    scene = build_dataset("folder", path=str(folder_scene))
    stem = f"{scene.scene_name}_000003"
    label_png = tmp_path / f"{stem}_labels.png"
    assert f"wrote {label_png}" in out
    ids = cv2.imread(str(label_png), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, scene[3]["labels"][0].numpy())  # labels default to the scene's classes
    with np.load(tmp_path / f"{stem}_probs.npz") as data:
        probs, names = data["probs"], list(data["class_names"])
    assert names[1:] == list(scene.class_names[1:])
    assert probs.shape == (len(scene.class_names), *ids.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(axis=0), ids)
    overlay = Image.open(tmp_path / f"{stem}_overlay.png")
    assert overlay.size[0] > ids.shape[1] and overlay.size[1] > ids.shape[0]


def test_segment_free_text_labels_and_bad_inputs(tmp_path, folder_scene, compose_cfg):
    import cv2

    from ovmap.commands.segment import run_segment
    from ovmap.datasets import build_dataset

    cfg = compose_cfg(
        "segment",
        [
            f"frame={folder_scene}",
            "index=1",
            f"out_dir={tmp_path}",
            "device=cpu",
            "labels=[a chair,the floor]",
        ],
    )
    run_segment(cfg)
    scene = build_dataset("folder", path=str(folder_scene))
    gt = scene[1]["labels"][0].numpy()
    ids = cv2.imread(str(tmp_path / f"{scene.scene_name}_000001_labels.png"), cv2.IMREAD_UNCHANGED)
    names = scene.class_names
    assert (gt == names.index("floor")).any()
    assert (ids[gt == names.index("floor")] == 2).all()
    if (gt == names.index("chair")).any():
        assert (ids[gt == names.index("chair")] == 1).all()
    assert (ids[gt == 0] == 0).all()
    with pytest.raises(ValueError, match="reads ground-truth labels"):
        run_segment(compose_cfg("segment", [f"image={tmp_path / 'x.png'}", "device=cpu"]))
    with pytest.raises(ValueError, match="exactly one input"):
        run_segment(
            compose_cfg(
                "segment",
                ["encoder=oracle", "device=cpu", f"frame={folder_scene}", f"image={tmp_path / 'x.png'}"],
            )
        )


@pytest.mark.parametrize("color", ["rgb", "label", "hits", "query"])
def test_export_colourings(tmp_path, saved_map, compose_cfg, color, capsys):
    from ovmap.commands.mapping import run_export
    from ovmap.pipeline import open_map
    from ovmap.vis.colors import label_palette

    out = tmp_path / f"{color}.ply"
    run_export(
        compose_cfg(
            "export", [f"map={saved_map}", f"out={out}", f"color={color}", "query='a chair'", "device=cpu"]
        )
    )
    assert f"wrote {out}" in capsys.readouterr().out
    xyz, rgb = read_ply(out)
    feature_map = open_map(saved_map, "cpu")  # the saved map's row order
    np.testing.assert_allclose(xyz, feature_map.centers.numpy(), atol=1e-6)
    if color == "rgb":
        expected = np.round(feature_map.rgb.numpy().clip(0, 1) * 255)
        assert np.abs(rgb - expected).max() <= 1
    elif color == "label":  # oracle features are class frequencies: the label is the dominant class
        freq = feature_map.features.float()[:, 1:].numpy()
        dominant = freq.argmax(axis=1) + 1
        same = (rgb == label_palette(freq.shape[1] + 1)[dominant]).all(axis=1)
        pure = freq.max(axis=1) >= 0.9 * freq.sum(axis=1)  # mixed voxels may match a blend better
        assert same[pure].all() and same.mean() > 0.99
    elif color == "hits":
        hits = feature_map.hits.numpy()
        assert (rgb[hits.argmax()] == [253, 231, 37]).all() and (rgb[hits.argmin()] == [68, 1, 84]).all()
    else:  # cosine computed here from the encoder's own text and language projection, then the documented ramp
        enc = feature_map.encoder
        text = enc.encode_text(["a chair"]).double().numpy()[0]
        lang = enc.align_to_language(feature_map.features.float()).double().numpy()
        cos = lang @ text / (np.linalg.norm(lang, axis=1) * np.linalg.norm(text))
        t = (cos - cos.min()) / (cos.max() - cos.min())
        purple, yellow = np.array([68.0, 1.0, 84.0]), np.array([253.0, 231.0, 37.0])
        expected = purple + t[:, None] * (yellow - purple)
        assert np.abs(rgb - expected).max() <= 0.5 + 1e-3  # float32 map features vs this float64 cosine


def test_view_logs_queries_from_arguments_and_stdin(tmp_path, saved_map, compose_cfg, monkeypatch, capsys):
    from rerun.chunk import RrdReader

    from ovmap.commands.view import run_view

    monkeypatch.setattr("sys.stdin", io.StringIO("a bed\n\n"))
    cfg = compose_cfg(
        "view",
        [f"map={saved_map}", "queries=[a chair]", "vis.mode=save", f"out_dir={tmp_path}", "device=cpu"],
    )
    run_view(cfg)
    out = capsys.readouterr().out
    assert '"a chair": top region centroid' in out and '"a bed": top region centroid' in out
    rrd = tmp_path / "recording.rrd"
    assert str(rrd) in out
    entities = {str(c.entity_path) for c in RrdReader(rrd).stream().to_chunks()}
    assert {"/world/voxel_rgb", "/world/queries/a_chair", "/world/queries/a_bed"} <= entities
