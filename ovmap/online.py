"""Online mapping: a worker thread that encodes and integrates frames while other threads query the map, and a
real-time replay that plays a recording into it at its recorded rate (``ovmap map ... online=true``).

:class:`OnlineMapper`:
    * ``push(frame)`` returns at once (policy ``drop_oldest`` / ``latest_only``) or waits for room (``block``);
    * one worker thread encodes a frame (outside any lock) and integrates it into the :class:`VoxelMap` under the
      map lock, so ``query(texts)`` and ``snapshot()`` from any thread see the map between two frames, never a
      half-merged one;
    * when frames arrive faster than they are processed the queue (``queue_size`` frames) overflows: ``block``
      makes the producer wait (nothing is lost), ``drop_oldest`` discards the oldest queued frame, ``latest_only``
      keeps only the newest; every discarded frame is counted;
    * memory is bounded: at most ``queue_size`` frames wait, latency statistics keep the last ``history`` values;
    * ``close()`` stops accepting frames, processes every frame still queued (no accepted frame is lost) and joins
      the worker; a worker error is re-raised by ``push``, ``flush`` and ``close``.

Times are ``time.perf_counter()`` seconds. Latency = time from ``push`` to the frame being in the map; staleness
(sampled at each push) = how old the newest frame in the map is at that moment (push time of the newest
integrated frame -> now; from the first push while the map is empty).

Typical usage example:

    >>> from ovmap.online import OnlineMapper
    >>> with OnlineMapper(encoder, voxel_size=0.05, policy="drop_oldest") as om:  # doctest: +SKIP
    ...     for frame in camera:
    ...         om.push(frame)
    ...         hits = om.query(["a chair"])
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ovmap.mapping import VoxelMap
from ovmap.mapping.io import map_to_arrays

log = logging.getLogger(__name__)

POLICIES = ("block", "drop_oldest", "latest_only")
MODES = ("feature", "probability")


@dataclass
class OnlineStats:
    """Counters and timing of an :class:`OnlineMapper` (seconds; NaN when nothing was measured)."""

    pushed: int = 0
    processed: int = 0  # integrated into the map (includes frames skipped for a non-finite pose)
    skipped: int = 0  # processed frames the map skipped (non-finite pose)
    dropped: int = 0  # discarded by the queue policy
    queued: int = 0  # waiting now
    max_queued: int = 0  # the most frames that ever waited at once
    latency_median: float = float("nan")
    latency_p95: float = float("nan")
    staleness_median: float = float("nan")
    staleness_p95: float = float("nan")
    encoder_seconds_per_frame: float = float("nan")
    fusion_seconds_per_frame: float = float("nan")

    def format(self) -> str:
        ms = lambda s: f"{1000 * s:.1f} ms"
        return (
            f"pushed {self.pushed}, processed {self.processed} ({self.skipped} skipped: non-finite pose), "
            f"dropped {self.dropped} (max queued {self.max_queued})\n"
            f"latency push -> in map: median {ms(self.latency_median)}, p95 {ms(self.latency_p95)}; "
            f"map staleness: median {ms(self.staleness_median)}, p95 {ms(self.staleness_p95)}; "
            f"encoder {ms(self.encoder_seconds_per_frame)}/frame, fusion {ms(self.fusion_seconds_per_frame)}/frame"
        )


def _pct(values: Iterable[float], q: float) -> float:
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


class OnlineMapper:
    """Thread-safe incremental mapping (module docstring).

    Args:
        encoder: dense encoder (``encode_frame`` in feature mode, ``predict_frame`` in probability mode).
        mode: "feature" or "probability".
        **map_options: further :class:`VoxelMap` options (voxel_size, feature_dtype, min_depth, max_depth in metres,
            feature_sampling, cache_language), as in the `mapping` config group.
        class_names: probability mode class table (index 0 = ignore).
        voxel_map: an existing map to keep integrating into (built fresh if None).
        policy: "block", "drop_oldest" or "latest_only" (what happens when the queue is full).
        queue_size: frames that may wait (``latest_only`` keeps one).
        history: latency / staleness samples kept for the statistics.
    """

    def __init__(
        self,
        encoder: Any,
        *,
        mode: str = "feature",
        class_names: list[str] | None = None,
        voxel_map: VoxelMap | None = None,
        policy: str = "drop_oldest",
        queue_size: int = 4,
        history: int = 10_000,
        **map_options: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if isinstance(queue_size, bool) or int(queue_size) != queue_size or queue_size < 1:
            raise ValueError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.encoder, self.mode, self.policy = encoder, mode, policy
        self.queue_size = 1 if policy == "latest_only" else int(queue_size)
        self._text_embeds = None
        if mode == "probability":
            if not class_names or len(class_names) < 2:
                raise ValueError("probability mode needs class_names (index 0 = ignore)")
            with torch.no_grad():
                self._text_embeds = encoder.encode_text(list(class_names[1:]))
        if voxel_map is None:
            voxel_map = VoxelMap(
                mode=mode, encoder=encoder, class_names=list(class_names) if mode == "probability" else None,
                device=encoder.device, **map_options,
            )  # fmt: skip
        elif voxel_map.mode != mode:
            raise ValueError(f"cannot integrate {mode}-mode frames into a {voxel_map.mode}-mode map")
        self.voxel_map = voxel_map
        self._queue: collections.deque[tuple[dict[str, Any], float]] = collections.deque()
        self._cv = threading.Condition()
        self._map_lock = threading.Lock()
        self._closed = False
        self._busy = False
        self._error: BaseException | None = None
        self._stats = OnlineStats()
        self._latency: collections.deque[float] = collections.deque(maxlen=history)
        self._staleness: collections.deque[float] = collections.deque(maxlen=history)
        self._t_enc = self._t_fus = 0.0
        self._first_push: float | None = None
        self._newest_in_map: float | None = None
        self._worker = threading.Thread(target=self._run, name="ovmap-online-mapper", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------------ producer
    def push(self, frame: dict[str, Any], t_arrival: float | None = None) -> bool:
        """Queues a frame (dict with rgb, depth, pose, intrinsics[, labels]); returns False if it was dropped.

        ``latest_only`` and ``drop_oldest`` never wait; ``block`` waits until the queue has room. ``t_arrival``
        (perf_counter seconds) defaults to now.
        """
        now = time.perf_counter() if t_arrival is None else t_arrival
        with self._cv:
            self._raise_worker_error()
            if self._closed:
                raise RuntimeError("push() after close(): the online mapper no longer accepts frames")
            self._stats.pushed += 1
            if self._first_push is None:
                self._first_push = now
            ref = self._newest_in_map if self._newest_in_map is not None else self._first_push
            self._staleness.append(now - ref)
            if self.policy == "block":
                while len(self._queue) >= self.queue_size and self._error is None:
                    self._cv.wait()
                self._raise_worker_error()
            else:
                while len(self._queue) >= self.queue_size:
                    self._queue.popleft()
                    self._stats.dropped += 1
            self._queue.append((frame, now))
            self._stats.max_queued = max(self._stats.max_queued, len(self._queue))
            self._cv.notify_all()
        return True

    # -------------------------------------------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue and self._closed:
                    return
                frame, t_arrival = self._queue.popleft()
                self._busy = True
                self._cv.notify_all()
            try:
                self._process(frame, t_arrival)
            except BaseException as e:  # noqa: BLE001 - handed to the producer thread
                log.error("online mapper worker failed on frame %s: %s", frame.get("index", "?"), e)
                with self._cv:
                    self._error = e
                    self._busy = False
                    self._queue.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _process(self, frame: dict[str, Any], t_arrival: float) -> None:
        dev = self.voxel_map.device
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.mode == "feature":
                values = self.encoder.encode_frame(frame)
            else:
                values = self.encoder.predict_frame(frame, self._text_embeds)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t1 = time.perf_counter()
            depth, pose, K, rgb = (frame[k].to(dev) for k in ("depth", "pose", "intrinsics", "rgb"))
            with self._map_lock:
                info = self.voxel_map.integrate(depth, pose, K, values, rgb=rgb)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        with self._cv:
            self._t_enc += t1 - t0
            self._t_fus += t2 - t1
            self._stats.processed += 1
            self._stats.skipped += int(bool(info.get("skipped")))
            self._latency.append(t2 - t_arrival)
            self._newest_in_map = max(self._newest_in_map or t_arrival, t_arrival)

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the online mapper's worker failed: {self._error}") from self._error

    # -------------------------------------------------------------------------------------------------- readers
    def query(self, texts: list[str], softmax_temperature: float = 0.01):
        """:meth:`VoxelMap.query` on the map between two frames (waits for a frame being merged)."""
        with self._map_lock:
            return self.voxel_map.query(texts, softmax_temperature=softmax_temperature)

    def snapshot(self) -> dict[str, np.ndarray]:
        """A consistent copy of the map as numpy arrays (``ovmap.mapping.io.map_to_arrays``: keys, centers,
        features, hits, rgb, frames_integrated, ...), taken between two frames."""
        with self._map_lock:
            return map_to_arrays(self.voxel_map)

    def stats(self) -> OnlineStats:
        """Current counters and latency / staleness percentiles."""
        with self._cv:
            s = OnlineStats(
                **{
                    k: getattr(self._stats, k)
                    for k in ("pushed", "processed", "skipped", "dropped", "max_queued")
                }
            )
            s.queued = len(self._queue)
            lat, stale = list(self._latency), list(self._staleness)
            n = max(s.processed, 1)
            s.encoder_seconds_per_frame = self._t_enc / n if s.processed else float("nan")
            s.fusion_seconds_per_frame = self._t_fus / n if s.processed else float("nan")
        s.latency_median, s.latency_p95 = _pct(lat, 50), _pct(lat, 95)
        s.staleness_median, s.staleness_p95 = _pct(stale, 50), _pct(stale, 95)
        return s

    # ------------------------------------------------------------------------------------------------ shutdown
    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued frame is in the map; False on timeout."""
        with self._cv:
            ok = self._cv.wait_for(
                lambda: (not self._queue and not self._busy) or self._error is not None, timeout
            )
            self._raise_worker_error()
            return ok

    def close(self, timeout: float | None = None) -> OnlineStats:
        """Stops accepting frames, integrates every queued one, joins the worker; returns the final stats."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():
            raise RuntimeError(f"the online mapper did not finish its queue within {timeout} s")
        self._raise_worker_error()
        return self.stats()

    def __enter__(self) -> OnlineMapper:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # do not mask the original error; still stop the worker
            with self._cv:
                self._closed = True
                self._queue.clear()
                self._cv.notify_all()
            self._worker.join()


# ----------------------------------------------------------------------------------------------------- replay
@dataclass
class ReplayReport:
    """What a live run would have done: :class:`OnlineStats` plus the replay's own figures."""

    stats: OnlineStats
    frames: int
    rate_hz: float
    seconds: float
    late: int  # frames the reader could not deliver on time (source slower than the recording)

    def format(self) -> str:
        return (
            f"replayed {self.frames} frames at {self.rate_hz:.1f} Hz in {self.seconds:.1f} s; "
            f"{self.late} delivered late by the reader\n" + self.stats.format()
        )


def replay(
    dataset: Any,
    mapper: OnlineMapper,
    *,
    rate_hz: float | None = None,
    timestamps: np.ndarray | None = None,
    prefetch: int = 32,
    progress: bool = True,
) -> ReplayReport:
    """Plays ``dataset`` into ``mapper`` at its recorded rate (``timestamps``, seconds per kept frame) or at a
    fixed ``rate_hz``, like a live sensor: frame i is pushed at ``start + (t_i - t_0)`` whether or not the mapper
    is ready. A reader thread loads up to ``prefetch`` frames ahead, so reading files is not mapping time; a frame
    it delivers after its due time is pushed at once and counted as late. Closes the mapper (flushing its queue).
    """
    n = len(dataset)
    if timestamps is None:
        if not rate_hz or rate_hz <= 0:
            raise ValueError("replay needs the dataset's timestamps or a rate in Hz (realtime=<Hz>)")
        timestamps = np.arange(n) / float(rate_hz)
    if isinstance(prefetch, bool) or int(prefetch) != prefetch or prefetch < 1:
        raise ValueError(f"prefetch must be an integer >= 1, got {prefetch!r}")
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if len(timestamps) != n:
        raise ValueError(f"{len(timestamps)} timestamps for {n} frames")
    if n > 1 and np.any(np.diff(timestamps) < 0):
        raise ValueError("replay timestamps must not decrease")
    buf: collections.deque[Any] = collections.deque()
    cv = threading.Condition()
    done, stop = [False], [False]
    err: list[BaseException] = []

    def reader() -> None:
        try:
            for frame in dataset:
                with cv:
                    cv.wait_for(lambda: len(buf) < prefetch or stop[0])
                    if stop[0]:
                        break
                    buf.append(frame)
                    cv.notify_all()
        except BaseException as e:  # noqa: BLE001
            err.append(e)
        with cv:
            done[0] = True
            cv.notify_all()

    th = threading.Thread(target=reader, name="ovmap-replay-reader", daemon=True)
    th.start()
    with cv:  # start the clock once the reader is primed, like a sensor that is already streaming
        cv.wait_for(lambda: len(buf) >= min(prefetch, n) or done[0])
    late = 0
    period = float(np.median(np.diff(timestamps))) if n > 1 else 1.0 / float(rate_hz or 30.0)
    bar = tqdm(total=n, unit="frame", desc="replay", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for i in range(n):
            due = start + (timestamps[i] - timestamps[0])
            with cv:
                cv.wait_for(lambda: buf or done[0])
                if not buf:
                    break
                frame = buf.popleft()
                cv.notify_all()
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            elif now - due > 0.5 * period:
                late += 1
            mapper.push(frame)
            bar.update(1)
            if progress:
                s = mapper.stats()
                bar.set_postfix_str(f"processed={s.processed} dropped={s.dropped}", refresh=False)
    finally:
        bar.close()
        with cv:
            stop[0] = True
            buf.clear()
            cv.notify_all()
    stats = mapper.close()
    th.join(timeout=5)
    if err:
        raise err[0]
    seconds = time.perf_counter() - start
    span = timestamps[-1] - timestamps[0] if n > 1 else 0.0
    rate = (n - 1) / span if span > 0 else float(rate_hz or 0.0)
    return ReplayReport(stats=stats, frames=n, rate_hz=rate, seconds=seconds, late=late)
