"""The mapping loop: dataset frames -> encoder -> voxel map, shared by the CLI, tests and benchmarks.

Frames are decoded (and copied to the device) by a background thread (:class:`FrameLoader`) while the encoder
and the map work on the previous one; Ctrl-C / SIGTERM inside :func:`interruptible` end the loop after the
current frame, and the stats say where to continue (``next_index``).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ovmap.mapping import VoxelMap

if TYPE_CHECKING:
    from ovmap.datasets import PosedRGBDDataset
    from ovmap.encoders import Encoder

log = logging.getLogger(__name__)

MODES = ("feature", "probability")


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available; use device=cpu or auto")
    return resolved


def make_encoder(name: str, cfg: dict[str, Any], dataset: PosedRGBDDataset, device: torch.device) -> Encoder:
    """Build an encoder from its config; encoders that read labels get the dataset's class table."""
    from ovmap.encoders import build_encoder
    from ovmap.encoders.base import ENCODERS

    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    kwargs["device"] = str(device)
    if getattr(ENCODERS.get(name), "needs_labels", False):
        if not dataset.has_labels:
            raise ValueError(
                f"encoder '{name}' needs per-pixel ground-truth labels, but dataset '{dataset.scene_name}' "
                "has none"
            )
        kwargs["class_names"] = list(dataset.class_names)
    return build_encoder(name, **kwargs)


@dataclass
class MappingStats:
    """What ``build_map`` did: frame counts and wall-clock times in seconds.

    ``seconds_encoder`` / ``seconds_fusion`` are device times on CUDA (CUDA events, read once at the end, so the
    loop never waits for the device to time it) and wall-clock times on the CPU. ``seconds_waiting`` is the time
    the loop waited for the loader (decoding not hidden behind the previous frame's work).
    """

    frames: int = 0
    frames_skipped: int = 0
    seconds_total: float = 0.0
    seconds_encoder: float = 0.0
    seconds_fusion: float = 0.0
    seconds_waiting: float = 0.0
    seconds_to_first_frame: float = float("nan")  # from the start of build_map to the end of its first frame
    started_at: float = 0.0  # time.perf_counter() when build_map started
    skipped_indices: list[int] = field(default_factory=list)
    interrupted: bool = False
    next_index: int = 0  # dataset index to continue from (== len(dataset) when complete)
    input_skips: dict[str, int] = field(default_factory=dict)  # frames the dataset refused, by reason

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else float("nan")


# --- prefetching ----------------------------------------------------------------------------------------------
_END = object()


def _to_device(frame: dict[str, Any], device: torch.device, stream: Any) -> dict[str, Any]:
    """Tensors of ``frame`` on ``device``: pinned + non-blocking copies on a side stream on CUDA."""
    if device.type != "cuda":
        return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in frame.items()}
    out = {}
    with torch.cuda.stream(stream):
        for k, v in frame.items():
            out[k] = v.pin_memory().to(device, non_blocking=True) if isinstance(v, Tensor) else v
    stream.synchronize()  # in the loader thread: the main thread never waits for this copy
    return out


class FrameLoader:
    """Iterate ``dataset[start:]`` with decoding and host->device copies done by a background thread.

    Up to ``prefetch`` frames wait in a bounded queue (memory stays bounded); on CUDA the copies use pinned
    memory and a side stream. An exception in the thread is raised in the consumer, unchanged, at the frame where
    it happened. ``close()`` (or leaving the ``with`` block) stops the thread.

    Args:
        dataset: a ``PosedRGBDDataset`` (indexable, with ``len``) or any iterable of frame dicts.
        device: where the frame tensors go.
        start: first dataset index (resuming); iterables skip that many frames.
        prefetch: frames decoded ahead (>= 1).
    """

    def __init__(self, dataset: Any, device: torch.device | str = "cpu", start: int = 0, prefetch: int = 2) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.dataset = dataset
        self.device = torch.device(device)
        self.start = int(start)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ovmap-frame-loader", daemon=True)
        self._started = False

    def __len__(self) -> int:
        return max(len(self.dataset) - self.start, 0)

    def _frames(self) -> Iterator[dict[str, Any]]:
        if hasattr(self.dataset, "__getitem__") and hasattr(self.dataset, "__len__"):
            for i in range(self.start, len(self.dataset)):
                yield self.dataset[i]
        else:
            for i, frame in enumerate(self.dataset):
                if i >= self.start:
                    yield frame

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            for frame in self._frames():
                if not self._put(_to_device(frame, self.device, stream)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put((_END, err))
            return
        self._put((_END, None))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            item = self._queue.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=5)

    def __enter__(self) -> FrameLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- interrupts -----------------------------------------------------------------------------------------------
@contextmanager
def interruptible() -> Iterator[threading.Event]:
    """Within the block, the first Ctrl-C (SIGINT) or SIGTERM only sets the returned event (a loop checks it
    between frames and stops cleanly); a second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside the main
    thread signals cannot be caught: the event is returned and never set."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, _frame: Any) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning("%s: stopping after the current frame (press Ctrl-C again to abort at once)", name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Timer:
    """Per-frame encoder / fusion times without synchronising the device every frame (CUDA events on GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []
        self.totals = [0.0, 0.0]

    def mark(self) -> Any:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def add(self, t0: Any, t1: Any, t2: Any) -> None:
        if self.cuda:
            self.marks.append((t0, t1, t2))
        else:
            self.totals[0] += t1 - t0
            self.totals[1] += t2 - t1

    def result(self) -> tuple[float, float]:
        if self.cuda and self.marks:
            self.marks[-1][2].synchronize()  # once, at the end
            for t0, t1, t2 in self.marks:
                self.totals[0] += t0.elapsed_time(t1) / 1000.0
                self.totals[1] += t1.elapsed_time(t2) / 1000.0
            self.marks.clear()
        return self.totals[0], self.totals[1]


def build_map(
    dataset: PosedRGBDDataset | Iterable[dict[str, Any]],
    encoder: Encoder,
    *,
    mode: str = "feature",
    voxel_size: float = 0.05,
    feature_dtype: str = "float32",
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
    feature_sampling: str = "bilinear",
    cache_language: bool = True,
    class_names: list[str] | None = None,
    voxel_map: VoxelMap | None = None,
    progress: bool = True,
    on_frame: Callable[[dict[str, Any], Tensor, dict[str, Any], VoxelMap], None] | None = None,
    start: int = 0,
    stop: threading.Event | None = None,
    prefetch: int = 2,
) -> tuple[VoxelMap, MappingStats]:
    """Integrate the frames of ``dataset`` (from index ``start``) into a voxel map.

    Args:
        dataset: a ``PosedRGBDDataset`` (or any iterable of its frame dicts).
        encoder: dense encoder; in ``"feature"`` mode the map stores ``encoder.encode_frame`` features, in
            ``"probability"`` mode ``encoder.predict_frame`` probabilities over the dataset's classes.
        mode: ``"feature"`` or ``"probability"``.
        voxel_size: voxel edge in metres.
        feature_dtype, min_depth, max_depth, feature_sampling, cache_language: :class:`~ovmap.mapping.VoxelMap`
            options (depths in metres).
        class_names: class table for probability mode (index 0 = ignore); defaults to the dataset's.
        voxel_map: an existing map to keep integrating into (e.g. a loaded or partial one); built fresh if None.
        progress: show a progress bar with frames/s.
        on_frame: called after each frame as ``on_frame(frame, values, info, voxel_map)`` with the
            encoder output ``values`` ((C, h, w) features or (K + 1, H, W) probabilities) and the map's
            integrate info; used by visualisers. Its time is not counted as encoder or fusion time.
        start: first dataset index (resume an interrupted run with its ``stats.next_index``).
        stop: when this event is set (e.g. by :func:`interruptible`), the loop ends after the current frame and
            the stats say ``interrupted=True`` and where to continue (``next_index``).
        prefetch: frames decoded ahead by the background loader.

    Returns:
        The map and timing statistics. Frames with a non-finite pose are skipped and counted by the map.
    """
    if mode not in MODES:
        raise ValueError(f"mapping mode must be one of {MODES}, got '{mode}'")
    device = encoder.device
    text_embeds = None
    if mode == "probability":
        class_names = list(class_names or getattr(dataset, "class_names", None) or [])
        if len(class_names) < 2:
            raise ValueError("probability mode needs a class table (index 0 = ignore) from the dataset")
        text_embeds = encoder.encode_text(class_names[1:])
    if voxel_map is None:
        voxel_map = VoxelMap(
            voxel_size=voxel_size,
            mode=mode,
            encoder=encoder,
            class_names=class_names if mode == "probability" else None,
            device=device,
            feature_dtype=feature_dtype,
            min_depth=min_depth,
            max_depth=max_depth,
            feature_sampling=feature_sampling,
            cache_language=cache_language,
        )
    elif voxel_map.mode != mode:
        raise ValueError(f"cannot integrate {mode}-mode frames into a {voxel_map.mode}-mode map")

    stats = MappingStats(next_index=int(start))
    depth_issues_before = _input_issues(dataset)
    timer = _Timer(torch.device(device))
    loader = FrameLoader(dataset, device, start=start, prefetch=prefetch)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    bar = tqdm(total=total, initial=int(start), unit="frame", desc="mapping", disable=not progress,
               dynamic_ncols=True)
    begin = stats.started_at = time.perf_counter()
    # no_grad, not inference_mode: the map's storage must stay updatable outside this loop.
    with torch.no_grad(), loader:
        frames = iter(loader)
        while True:
            if stop is not None and stop.is_set():
                stats.interrupted = True
                break
            w0 = time.perf_counter()
            frame = next(frames, None)
            stats.seconds_waiting += time.perf_counter() - w0
            if frame is None:
                break
            t0 = timer.mark()
            if mode == "feature":
                values = encoder.encode_frame(frame)
            else:
                values = encoder.predict_frame(frame, text_embeds)
            t1 = timer.mark()
            info = voxel_map.integrate(frame["depth"], frame["pose"], frame["intrinsics"], values, rgb=frame["rgb"])
            t2 = timer.mark()
            timer.add(t0, t1, t2)
            if info.get("skipped"):
                stats.frames_skipped += 1
                stats.skipped_indices.append(int(frame.get("index", -1)))
            else:
                stats.frames += 1
            if stats.next_index == start:
                stats.seconds_to_first_frame = time.perf_counter() - begin
            stats.next_index += 1
            bar.update(1)
            bar.set_postfix_str(f"voxels={len(voxel_map)}", refresh=False)
            if on_frame is not None:
                on_frame(frame, values, info, voxel_map)
    stats.seconds_total = time.perf_counter() - begin
    stats.seconds_encoder, stats.seconds_fusion = timer.result()
    bar.close()
    if stats.frames_skipped:
        log.warning(
            "skipped %d frame(s) with a non-finite pose: %s", stats.frames_skipped, stats.skipped_indices[:20]
        )
    issues = _input_issues(dataset)
    if issues:  # frames the data source refused (docs/validation.md): counted in the stats and the map's metadata
        voxel_map.frames_invalid_pose = issues.get("invalid_pose", 0)  # known for the whole dataset up front
        for kind in ("no_valid_depth", "implausible_depth"):  # counted as frames are read: add this run's
            new = issues.get(kind, 0) - depth_issues_before.get(kind, 0)
            setattr(voxel_map, f"frames_{kind}", getattr(voxel_map, f"frames_{kind}") + new)
        stats.input_skips = {k: v for k, v in issues.items() if v}
    return voxel_map, stats


def _input_issues(dataset: Any) -> dict[str, int]:
    """The data source's counts of refused frames (``PosedRGBDDataset.validation_summary``), or {}."""
    summary = getattr(dataset, "validation_summary", None)
    return dict(summary()) if callable(summary) else {}


def open_map(path: str | Path, device: str | torch.device | None = "auto") -> VoxelMap:
    """Load a saved map (:func:`ovmap.mapping.io.load_map`) and rebuild the encoder recorded in it, so the map
    can be queried.

    Args:
        path: a ``map.npz`` written by ``VoxelMap.save``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; the map and its encoder are placed there.
    """
    import numpy as np

    from ovmap.encoders import build_encoder
    from ovmap.mapping.io import load_map

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    dev = resolve_device(device)
    voxel_map = load_map(path, device=dev)  # validates the file
    with np.load(path, allow_pickle=False) as data:
        encoder_json = str(data["encoder"]) if "encoder" in data.files else "{}"
    encoder_cfg = json.loads(encoder_json or "{}")
    if encoder_cfg.get("name"):
        name = encoder_cfg.pop("name")
        encoder_cfg["device"] = str(dev)
        voxel_map.encoder = build_encoder(name, **encoder_cfg)
    return voxel_map
