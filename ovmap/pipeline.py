"""The mapping loop: dataset frames -> encoder -> voxel map, shared by the CLI, tests and benchmarks."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ovmap.datasets import PosedRGBDDataset
from ovmap.encoders import Encoder, build_encoder
from ovmap.mapping import VoxelMap

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
    """What ``build_map`` did: frame counts and wall-clock times in seconds."""

    frames: int = 0
    frames_skipped: int = 0
    seconds_total: float = 0.0
    seconds_encoder: float = 0.0
    seconds_fusion: float = 0.0
    skipped_indices: list[int] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_map(
    dataset: PosedRGBDDataset | Iterable[dict[str, Any]],
    encoder: Encoder,
    *,
    mode: str = "feature",
    voxel_size: float = 0.05,
    feature_dtype: str = "float32",
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
    class_names: list[str] | None = None,
    voxel_map: VoxelMap | None = None,
    progress: bool = True,
    on_frame: Callable[[dict[str, Any], Tensor, dict[str, Any], VoxelMap], None] | None = None,
) -> tuple[VoxelMap, MappingStats]:
    """Integrate every frame of ``dataset`` into a voxel map.

    Args:
        dataset: a ``PosedRGBDDataset`` (or any iterable of its frame dicts).
        encoder: dense encoder; in ``"feature"`` mode the map stores ``encoder.encode_frame`` features, in
            ``"probability"`` mode ``encoder.predict_frame`` probabilities over the dataset's classes.
        mode: ``"feature"`` or ``"probability"``.
        voxel_size: voxel edge in metres.
        class_names: class table for probability mode (index 0 = ignore); defaults to the dataset's.
        voxel_map: an existing map to keep integrating into (e.g. a loaded one); built fresh if None.
        progress: show a progress bar with frames/s.
        on_frame: called after each frame as ``on_frame(frame, values, info, voxel_map)`` with the
            encoder output ``values`` ((C, h, w) features or (K + 1, H, W) probabilities) and the map's
            integrate info; used by visualisers. Its time is not counted as encoder or fusion time.

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
        )
    elif voxel_map.mode != mode:
        raise ValueError(f"cannot integrate {mode}-mode frames into a {voxel_map.mode}-mode map")

    stats = MappingStats()
    total = len(dataset) if hasattr(dataset, "__len__") else None
    bar = tqdm(dataset, total=total, unit="frame", desc="mapping", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    # no_grad, not inference_mode: the map's storage must stay updatable outside this loop.
    with torch.no_grad():
        for frame in bar:
            t0 = time.perf_counter()
            if mode == "feature":
                values = encoder.encode_frame(frame)
            else:
                values = encoder.predict_frame(frame, text_embeds)
            _sync(device)
            t1 = time.perf_counter()
            info = voxel_map.integrate(
                frame["depth"].to(device),
                frame["pose"].to(device),
                frame["intrinsics"].to(device),
                values,
                rgb=frame["rgb"].to(device),
            )
            _sync(device)
            t2 = time.perf_counter()
            stats.seconds_encoder += t1 - t0
            stats.seconds_fusion += t2 - t1
            if info.get("skipped"):
                stats.frames_skipped += 1
                stats.skipped_indices.append(int(frame.get("index", -1)))
            else:
                stats.frames += 1
            bar.set_postfix_str(f"voxels={len(voxel_map)}", refresh=False)
            if on_frame is not None:
                on_frame(frame, values, info, voxel_map)
    stats.seconds_total = time.perf_counter() - start
    bar.close()
    if stats.frames_skipped:
        log.warning(
            "skipped %d frame(s) with a non-finite pose: %s", stats.frames_skipped, stats.skipped_indices[:20]
        )
    return voxel_map, stats


def load_map(path: str | Path, device: str | torch.device | None = "auto") -> VoxelMap:
    """Load a saved map and rebuild the encoder recorded in it, so the map can be queried.

    Args:
        path: a ``map.npz`` written by ``VoxelMap.save``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; the map and its encoder are placed there.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    dev = resolve_device(device)
    with np.load(path, allow_pickle=False) as data:
        encoder_json = str(data["encoder"]) if "encoder" in data.files else "{}"
    encoder_cfg = json.loads(encoder_json or "{}")
    encoder = None
    if encoder_cfg.get("name"):
        name = encoder_cfg.pop("name")
        encoder_cfg["device"] = str(dev)
        encoder = build_encoder(name, **encoder_cfg)
    return VoxelMap.load(path, encoder=encoder, device=dev)
