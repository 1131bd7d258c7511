"""Map cache (input fingerprint, corrupt entries), Ctrl-C / SIGTERM with map.partial.npz and resume, check-data
on folder scenes, probability maps asked free text."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ovmap.datasets import build_dataset, write_folder
from ovmap.encoders import build_encoder
from ovmap.map_cache import cached_map, map_cache_key, partial_paths
from ovmap.pipeline import build_map, interruptible

MAPPING = {"mode": "feature", "voxel_size": 0.1}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    src = build_dataset("synthetic", preset="test", num_frames=6, height=48, width=64)
    return write_folder(src, tmp_path_factory.mktemp("scene") / "room")


@pytest.fixture(scope="module")
def oracle(scene_dir):
    return build_encoder("oracle", class_names=build_dataset("folder", path=str(scene_dir)).class_names)


def rows(voxel_map) -> dict[str, np.ndarray]:
    """The map's rows in key order (row order may differ between maps)."""
    keys = voxel_map.keys.cpu().numpy()
    order = np.lexsort(keys.T[::-1])
    return {"keys": keys[order], "features": voxel_map.features.float().cpu().numpy()[order],
            "hits": voxel_map.hits.cpu().numpy()[order]}


def assert_same_map(a, b) -> None:
    ra, rb = rows(a), rows(b)
    np.testing.assert_array_equal(ra["keys"], rb["keys"])
    np.testing.assert_array_equal(ra["hits"], rb["hits"])
    np.testing.assert_allclose(ra["features"], rb["features"], rtol=0, atol=1e-6)


def test_cache_key_follows_the_input_files(tmp_path, scene_dir, oracle):
    import shutil

    scene = tmp_path / "room"
    shutil.copytree(scene_dir, scene)
    key = map_cache_key(oracle, build_dataset("folder", path=str(scene)), MAPPING)
    assert map_cache_key(oracle, build_dataset("folder", path=str(scene)), MAPPING) == key
    depth = sorted((scene / "depth").iterdir())[0]
    data = depth.read_bytes()
    depth.write_bytes(data)  # same bytes, new modification time
    os.utime(depth, ns=(depth.stat().st_atime_ns, depth.stat().st_mtime_ns + 10**9))
    assert map_cache_key(oracle, build_dataset("folder", path=str(scene)), MAPPING) != key


def test_corrupt_cache_entry_is_discarded_and_rebuilt(tmp_path, scene_dir, oracle, caplog):
    dataset = build_dataset("folder", path=str(scene_dir))
    first, source = cached_map(dataset, oracle, MAPPING, tmp_path, progress=False)
    assert source == "built"
    (entry,) = tmp_path.glob("*.npz")
    again, source = cached_map(dataset, oracle, MAPPING, tmp_path, progress=False)
    assert source == "cache"
    assert_same_map(first, again)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        rebuilt, source = cached_map(dataset, oracle, MAPPING, tmp_path, progress=False)
    assert source == "built"
    assert f"discarding unreadable cached map {entry}" in caplog.text
    assert_same_map(first, rebuilt)
    _, source = cached_map(dataset, oracle, MAPPING, tmp_path, progress=False)
    assert source == "cache"  # the rebuilt entry is readable


def test_signal_stops_after_the_frame_and_resume_gives_the_same_map(scene_dir, oracle):
    dataset = build_dataset("folder", path=str(scene_dir))
    full, _ = build_map(dataset, oracle, progress=False, **MAPPING)

    def on_frame(frame, values, info, voxel_map):
        if frame["index"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during frame 1

    with interruptible() as stop:
        part, stats = build_map(dataset, oracle, progress=False, on_frame=on_frame, stop=stop, **MAPPING)
    assert stats.interrupted and stats.next_index == 2 and stats.frames == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed, stats2 = build_map(dataset, oracle, progress=False, voxel_map=part, start=stats.next_index, **MAPPING)
    assert not stats2.interrupted and stats2.frames == len(dataset) - 2 and stats2.next_index == len(dataset)
    assert_same_map(full, resumed)


def test_sigterm_saves_a_partial_map_that_resume_completes(tmp_path, oracle):
    src = build_dataset("synthetic", preset="test", num_frames=40)
    scene_dir = write_folder(src, tmp_path / "long_room")
    out_dir = tmp_path / "out"
    args = [sys.executable, "-m", "ovmap", "map", "dataset=folder", f"dataset.path={scene_dir}", "device=cpu",
            "progress=false", "mapping.voxel_size=0.1", f"out_dir={out_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # the line is logged once the interrupt handler is installed
        if "mapping 40 frames" in line:
            break
    time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ovmap: interrupted: stopped at frame "), err
    assert "resume=true" in lines[0]
    partial, meta = partial_paths(out_dir / "map.npz")
    assert partial.is_file() and meta.is_file() and not (out_dir / "map.npz").exists()

    done = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not partial.exists() and not meta.exists()
    from ovmap.mapping.io import load_map

    full, _ = build_map(build_dataset("folder", path=str(scene_dir)), oracle, progress=False, **MAPPING)
    assert_same_map(full, load_map(out_dir / "map.npz"))


def test_resume_with_other_settings_is_refused(tmp_path, scene_dir, oracle):
    from ovmap.map_cache import load_partial, save_partial

    dataset = build_dataset("folder", path=str(scene_dir))
    part, _ = build_map(dataset, oracle, progress=False, **MAPPING)
    save_partial(part, tmp_path / "map.npz", 3, "key-a")
    loaded, start = load_partial(tmp_path / "map.npz", "key-a", oracle, "cpu")
    assert start == 3 and len(loaded) == len(part)
    with pytest.raises(ValueError, match="was made with other data, encoder or mapping settings"):
        load_partial(tmp_path / "map.npz", "key-b", oracle, "cpu")


def test_check_data_reads_every_frame_of_a_folder_scene(tmp_path, scene_dir, capsys):
    import shutil

    from ovmap.cli import entrypoint

    entrypoint(["check-data", "dataset=folder", f"dataset.path={scene_dir}"])
    assert "6 frame(s) read" in capsys.readouterr().out
    broken = tmp_path / "room"
    shutil.copytree(scene_dir, broken)
    bad = sorted((broken / "depth").iterdir())[2]
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["check-data", "dataset=folder", f"dataset.path={broken}"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert bad.name in out  # the problem list names the file
    assert err.strip() == f"ovmap: error: check-data found 1 problem(s) in {broken} (see the list above)"


def test_probability_map_explains_free_text(scene_dir, oracle, tmp_path):
    from ovmap.commands.common import check_queries

    dataset = build_dataset("folder", path=str(scene_dir))
    prob, _ = build_map(dataset, oracle, progress=False, mode="probability", voxel_size=0.1)
    check_queries(prob, ["chair"])  # a class name is fine
    with pytest.raises(ValueError) as info:
        check_queries(prob, ["something to sit on"])
    message = str(info.value)
    assert message.startswith("this is a probability-mode map: it knows only its")
    assert "'something to sit on'" in message and "free-text queries need a feature-mode map" in message


def test_interrupted_cache_build_resumes_on_the_next_run(tmp_path, scene_dir, oracle):
    dataset = build_dataset("folder", path=str(scene_dir))
    full, _ = build_map(dataset, oracle, progress=False, **MAPPING)

    def on_frame(frame, values, info, voxel_map):
        if frame["index"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="interrupted at frame 3 of 6; the map so far is in .*partial.npz"):
        cached_map(dataset, oracle, MAPPING, tmp_path, progress=False, on_frame=on_frame)
    assert len(list(tmp_path.glob("*.partial.npz"))) == 1 and not list(tmp_path.glob("*[0-9a-f].npz"))
    resumed, source = cached_map(dataset, oracle, MAPPING, tmp_path, progress=False)
    assert source == "resumed" and not list(tmp_path.glob("*.partial.*"))
    assert_same_map(full, resumed)
