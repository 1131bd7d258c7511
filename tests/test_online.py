"""OnlineMapper and the real-time replay: consistency under concurrent queries, queue policies (what is lost and
what is counted, checked against offline maps of the frames that must have been integrated), bounded memory,
worker errors, and ``ovmap map ... realtime=<Hz>``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _helpers import sources

from ovmap.mapping.io import map_to_arrays
from ovmap.online import OnlineMapper, replay
from ovmap.pipeline import build_map


class GatedEncoder:
    """Wraps the oracle: ``encode_frame`` waits for ``gate`` (when set up) and can sleep, so tests control when
    the worker is busy; everything else is the oracle's."""

    def __init__(self, inner, delay: float = 0.0, gated: bool = False, fail_on: int | None = None):
        self.inner, self.delay, self.fail_on = inner, delay, fail_on
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not gated:
            self.gate.set()

    def encode_frame(self, frame):
        self.entered.set()
        self.gate.wait()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and frame["index"] == self.fail_on:
            raise ValueError(f"encoder failure on frame {frame['index']}")
        return self.inner.encode_frame(frame)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _frames():
    return [dict(f) for f in sources.scene_frames()]


def _offline(frames):
    vm, _ = build_map(frames, sources.oracle(), mode="feature", voxel_size=sources.VOXEL, progress=False)
    return map_to_arrays(vm)


def _assert_equal_maps(a, b):
    np.testing.assert_array_equal(a["keys"], b["keys"])
    np.testing.assert_array_equal(a["hits"], b["hits"])
    np.testing.assert_allclose(a["features"], b["features"], rtol=0, atol=1e-6)


def _mapper(encoder, **kw):
    return OnlineMapper(encoder, voxel_size=sources.VOXEL, **kw)


def test_block_loses_nothing_and_equals_offline_map():
    frames = _frames()
    om = _mapper(GatedEncoder(sources.oracle(), delay=0.02), policy="block", queue_size=2)
    for f in frames:
        assert om.push(f)
    st = om.close()
    assert (st.pushed, st.processed, st.dropped, st.queued) == (len(frames), len(frames), 0, 0)
    assert st.max_queued <= 2
    _assert_equal_maps(map_to_arrays(om.voxel_map), _offline(frames))


@pytest.mark.parametrize("policy,kept", [("drop_oldest", [0, 4, 5]), ("latest_only", [0, 5])])
def test_overflow_policies_count_what_they_drop(policy, kept):
    frames = _frames()  # 6 frames
    enc = GatedEncoder(sources.oracle(), gated=True)
    om = _mapper(enc, policy=policy, queue_size=2)
    om.push(frames[0])
    assert enc.entered.wait(10)  # the worker holds frame 0 inside the encoder
    for f in frames[1:]:
        om.push(f)  # returns at once although the worker is stuck
    assert om.stats().dropped == len(frames) - len(kept)
    enc.gate.set()
    st = om.close()
    assert (st.pushed, st.processed, st.dropped) == (len(frames), len(kept), len(frames) - len(kept))
    _assert_equal_maps(map_to_arrays(om.voxel_map), _offline([frames[i] for i in kept]))


def test_concurrent_queries_never_see_a_half_merged_frame():
    frames = _frames()
    # after k frames (offline): total hits and voxel count; every snapshot must match one k exactly
    cum_hits, cum_voxels = [0.0], [0]
    for k in range(1, len(frames) + 1):
        m = _offline(frames[:k])
        cum_hits.append(float(m["hits"].sum()))
        cum_voxels.append(len(m["keys"]))
    om = _mapper(GatedEncoder(sources.oracle(), delay=0.01), policy="block", queue_size=8)
    seen, bad, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            s = om.snapshot()
            k = int(s["frames_integrated"])
            seen.add(k)
            if len(s["keys"]) != cum_voxels[k] or float(s["hits"].sum()) != cum_hits[k]:
                bad.append((k, len(s["keys"]), float(s["hits"].sum())))
            if k > 0:
                r = om.query(["a chair", "a table"])
                if r.similarity.shape[1] not in cum_voxels[k:]:
                    bad.append(("query", k, tuple(r.similarity.shape)))

    th = threading.Thread(target=reader)
    th.start()
    for f in frames:
        om.push(f)
    om.close()
    stop.set()
    th.join()
    assert not bad, bad[:5]
    assert len(seen) >= 2  # the reader did observe the map while it was being built
    assert int(om.snapshot()["frames_integrated"]) == len(frames)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc")
def test_memory_bounded_over_a_long_stream():
    f0 = _frames()[0]
    small = {k: f0[k] for k in ("pose", "index")}
    small["rgb"] = f0["rgb"][:, ::4, ::4].contiguous()
    small["labels"] = f0["labels"][:, ::4, ::4].contiguous()
    small["depth"] = f0["depth"][:, ::4, ::4].contiguous()
    K = f0["intrinsics"].clone()
    K[:2] /= 4
    small["intrinsics"] = K
    om = _mapper(sources.oracle(), policy="block", queue_size=3, history=200)
    rss = []
    for i in range(600):
        om.push({**small, "rgb": small["rgb"].clone(), "index": i})  # a fresh image per frame, like a camera
        if i in (100, 599):
            om.flush()
            rss.append(_rss_mb())
    st = om.close()
    assert (st.pushed, st.processed, st.dropped) == (600, 600, 0) and st.max_queued <= 3
    assert len(om._latency) == 200
    assert int(om.snapshot()["frames_integrated"]) == 600
    assert rss[1] - rss[0] < 50, f"RSS grew {rss[1] - rss[0]:.1f} MB over 500 integrated frames"


def test_worker_error_reaches_the_producer_and_push_after_close():
    frames = _frames()
    om = _mapper(GatedEncoder(sources.oracle(), fail_on=frames[1]["index"]), policy="block", queue_size=1)
    with pytest.raises(RuntimeError, match="encoder failure on frame"):
        for f in frames:
            om.push(f)
            time.sleep(0.05)
        om.close()
    om2 = _mapper(sources.oracle())
    om2.close()
    with pytest.raises(RuntimeError, match="after close"):
        om2.push(frames[0])
    with pytest.raises(ValueError, match="policy must be one of"):
        _mapper(sources.oracle(), policy="newest")


def test_replay_plays_at_the_given_rate():
    frames = _frames()
    om = _mapper(sources.oracle(), policy="block", queue_size=4)
    rep = replay(frames, om, rate_hz=20.0, progress=False)
    assert rep.frames == len(frames) and rep.stats.processed == len(frames) and rep.stats.dropped == 0
    assert rep.seconds >= (len(frames) - 1) / 20.0 - 1e-3  # not faster than the recording
    assert rep.rate_hz == pytest.approx(20.0)
    with pytest.raises(ValueError, match="realtime=<Hz>"):
        replay(frames, _mapper(sources.oracle()), progress=False)


@pytest.mark.slow
def test_cli_realtime_replay(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ovmap", "map", "dataset=synthetic", "dataset.preset=test", "dataset.num_frames=4",
           "encoder=oracle", "realtime=30", "online_policy=block", f"out_dir={tmp_path}", "progress=false"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pushed 4, processed 4" in out.stdout and "dropped 0" in out.stdout and "latency" in out.stdout
    assert (tmp_path / "map.npz").is_file()
    # the synthetic scene has no timestamps: online=true (recorded rate) says to give a rate
    bad = subprocess.run([c for c in cmd if not c.startswith("realtime=")] + ["online=true"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "realtime=30" in bad.stderr
