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
