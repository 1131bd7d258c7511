"""The prefetching frame loader: order, resume offset, bounded read-ahead, errors raised where they happen."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ovmap.pipeline import FrameLoader


class CountingFrames:
    """An indexable dataset of tiny frames that records how many frames were read; frame ``fail_at`` is bad."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.reads = n, fail_at, 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        with self.lock:
            self.reads += 1
        if i == self.fail_at:
            raise ValueError(f"frame {i}: depth/{i:06d}.png is not an image")
        return {"index": i, "depth": torch.full((1, 2, 2), float(i))}


def test_frames_come_in_order_from_the_start_index():
    frames = list(FrameLoader(CountingFrames(7), "cpu", start=3))
    assert [f["index"] for f in frames] == [3, 4, 5, 6]
    assert [float(f["depth"][0, 0, 0]) for f in frames] == [3.0, 4.0, 5.0, 6.0]


def test_read_ahead_is_bounded_by_the_queue():
    data = CountingFrames(50)
    loader = FrameLoader(data, "cpu", prefetch=2)
    it = iter(loader)
    next(it)
    time.sleep(0.3)  # let the thread fill the queue
    # one frame consumed, at most 2 waiting in the queue and 1 held by the blocked thread
    assert data.reads <= 4
    loader.close()


def test_a_bad_frame_raises_in_the_consumer_after_the_good_ones():
    seen = []
    with pytest.raises(ValueError, match=r"^frame 2: depth/000002.png is not an image$"):
        with FrameLoader(CountingFrames(5, fail_at=2), "cpu") as loader:
            for frame in loader:
                seen.append(frame["index"])
    assert seen == [0, 1]


def test_plain_iterables_skip_to_the_start():
    frames = ({"index": i} for i in range(5))
    assert [f["index"] for f in FrameLoader(frames, "cpu", start=2)] == [2, 3, 4]


def test_refused_frames_are_counted_in_the_stats_and_the_saved_map(tmp_path):
    """A mirrored pose and an all-zero depth image: both frames are refused by the dataset, the counts reach
    ``MappingStats.input_skips``, the map's counters and the saved file, and the other frames are fused."""
    import cv2
    import numpy as np

    from ovmap.datasets import build_dataset, write_folder
    from ovmap.encoders import build_encoder
    from ovmap.mapping.io import load_map
    from ovmap.pipeline import build_map

    root = write_folder(build_dataset("synthetic", preset="test", num_frames=5), tmp_path / "scene")
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    poses[1, :3, 0] *= -1  # mirrored rotation (det -1)
    np.savetxt(root / "poses.txt", poses.reshape(len(poses), 16))
    depth3 = sorted((root / "depth").iterdir())[3]
    cv2.imwrite(str(depth3), np.zeros_like(cv2.imread(str(depth3), cv2.IMREAD_UNCHANGED)))

    scene = build_dataset("folder", path=str(root))
    oracle = build_encoder("oracle", class_names=scene.class_names)
    vm, stats = build_map(scene, oracle, mode="probability", voxel_size=0.1, progress=False)
    assert stats.input_skips == {"invalid_pose": 1, "no_valid_depth": 1}
    assert stats.frames == 4  # frame 1 never reaches the map; frame 3 arrives with no valid depth
    vm.save(tmp_path / "map.npz")
    counters = load_map(tmp_path / "map.npz").stats
    assert (counters["frames_invalid_pose"], counters["frames_no_valid_depth"],
            counters["frames_implausible_depth"]) == (1, 1, 0)
