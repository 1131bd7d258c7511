"""Dataset base class, the dataset registry and ``build_dataset``.

Every posed RGB-D source derives from :class:`PosedRGBDDataset`. Subclasses only provide raw, native-resolution
access to frames; frame selection (``frame_skip``), resizing and validation live here, so every dataset behaves
the same way.

Typical usage example:

    >>> from ovmap.datasets import build_dataset
    >>> ds = build_dataset("synthetic", preset="test")  # doctest: +SKIP
    >>> frame = ds[0]  # doctest: +SKIP
    >>> frame["rgb"].shape, frame["depth"].shape, frame["pose"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovmap.datasets.validation import check_intrinsics, depth_problem, pose_problem
from ovmap.registry import Registry

logger = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset")

COMMON_KWARGS = ("frame_skip", "rgb_resolution", "depth_resolution")
#: per-frame warnings logged for one kind of skipped frame before only the summary is logged.
MAX_FRAME_WARNINGS = 10
#: kinds of counted frame problems in :meth:`PosedRGBDDataset.validation_summary`.
SKIP_KINDS = ("invalid_pose", "no_valid_depth", "implausible_depth")


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset` (the Hydra ``dataset=<name>`` config names)."""
    return DATASETS.names()


def build_dataset(name: str, **cfg: Any) -> PosedRGBDDataset:
    """Instantiates the dataset registered as ``name`` with keyword arguments ``cfg``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the available names).
        TypeError: ``cfg`` holds keyword arguments the dataset does not accept (the message names them).
    """
    cls = DATASETS.get(name)
    sig = inspect.signature(cls.__init__)
    params = sig.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = {
            n
            for n, p in params.items()
            if n != "self" and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        }
        unknown = sorted(set(cfg) - accepted)
        if unknown:
            raise TypeError(
                f"dataset '{name}' got unknown argument(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(accepted))}"
            )
    return cls(**cfg)


def _parse_resolution(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be [H, W] or None, got {value!r}")
    items = list(value)
    if len(items) != 2:
        raise ValueError(f"{what} must be [H, W] (two integers), got {value!r}")
    try:
        h, w = (int(x) for x in items)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be [H, W] with integers, got {value!r}") from None
    if h != items[0] or w != items[1] or h <= 0 or w <= 0:
        raise ValueError(f"{what} must hold two positive integers, got {value!r}")
    return h, w


def scale_intrinsics(K: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Scales a 3x3 K from image size ``src_hw`` to ``dst_hw`` by the simple rule.

    Row 0 (fx, 0, cx) is multiplied by W'/W and row 1 (0, fy, cy) by H'/H (mapping_and_datasets.md §1).
    """
    K = K.clone()
    K[0] *= dst_hw[1] / src_hw[1]
    K[1] *= dst_hw[0] / src_hw[0]
    return K


class PosedRGBDDataset(ABC):
    """A sequence of posed RGB-D frames of one scene.

    Conventions (docs/conventions.md):
        * ``pose``: 4x4 float32 **camera-to-world** (T_wc), last row [0, 0, 0, 1]; camera axes OpenCV "RDF"
          (x right, y down, z forward); world frame is the dataset's (the synthetic scene is z-up); metres.
          Invalid poses (non-finite, rotation not orthonormal with det +1, bad last row; rules in
          :mod:`ovmap.datasets.validation`): loaders that parse all poses up front hand them to
          :meth:`_set_invalid`, and those frames are dropped (:meth:`_excluded_raw_indices`), warned about and
          counted (:meth:`num_invalid_poses`); a frame whose pose is found invalid only when loaded is delivered
          with an all-NaN pose (the map skips and counts it) and counted too.
        * ``depth``: (1, H', W') float32 **z-depth** in metres; valid iff finite and > 0; NaN = missing (a stored 0
          becomes NaN; uint16 loaders also turn 65535 into NaN). A frame with no valid depth, or a median depth
          outside the plausible range, is warned about and counted (:meth:`validation_summary`); the latter is
          delivered with all-NaN depth so that nothing of it is fused.
        * ``intrinsics``: (3, 3) float32 pinhole K in pixels **at depth resolution**; integer pixel indices
          (u = column, v = row) are pixel centres (no +0.5), so a pixel back-projects to d * K^-1 [u, v, 1].
        * ``rgb``: (3, H, W) float32 in [0, 1]; RGB and depth share the camera and may differ only in resolution.
        * ``labels`` (only when :attr:`has_labels`): (1, H, W) int64 class ids at **RGB** resolution, 0 = ignore.
        * ``index``: the **raw** frame index in the underlying sequence (before ``frame_skip``).

    Frame selection and resizing (done here, not in subclasses):
        * ``frame_skip = k`` keeps raw frames with index % (k + 1) == 0 (0, k+1, 2(k+1), ...).
        * ``rgb_resolution`` / ``depth_resolution``: [H, W] or None (native). RGB is resized bilinearly with
          antialiasing; depth and labels with ``nearest-exact``; labels follow the RGB resolution; K is scaled from
          the native depth size to the output depth size by the simple rule (row 0 by W'/W, row 1 by H'/H).

    Validation (docs/validation.md): a label map whose size differs from its RGB image, an RGB / depth / label
    size that changes between frames of one scene, or intrinsics that do not fit the depth image (last row, focal
    lengths, principal point) raise ``ValueError`` naming the frame or file (:meth:`_intrinsics_source`); every
    raw frame selected by ``frame_skip`` having an invalid pose raises ``ValueError``.

    Subclasses implement :meth:`_num_raw_frames` and :meth:`_load_raw_frame` (native resolution, see its docstring),
    set :attr:`class_names` and :attr:`scene_name`, and may override :meth:`gt_points`, :meth:`_frame_source` and
    :meth:`_extra_config`.

    Attributes:
        class_names: class names by id; index 0 is the "ignore" placeholder, ids >= 1 are real classes.
        scene_name: a short scene identifier.
    """

    class_names: list[str] = ["ignore"]
    scene_name: str = "scene"

    def __init__(
        self,
        frame_skip: int = 0,
        rgb_resolution: Sequence[int] | None = None,
        depth_resolution: Sequence[int] | None = None,
    ) -> None:
        if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 0:
            raise ValueError(f"frame_skip must be an integer >= 0, got {frame_skip!r}")
        self.frame_skip = int(frame_skip)
        self.rgb_resolution = _parse_resolution(rgb_resolution, "rgb_resolution")
        self.depth_resolution = _parse_resolution(depth_resolution, "depth_resolution")
        self._native_shapes: dict[str, tuple[int, int]] = {}
        self._native_shapes_source: str = ""
        self.invalid_pose_indices: list[int] = []
        self.pose_problems: dict[int, str] = {}
        self._excluded: frozenset[int] = frozenset()
        self._frame_issues: dict[str, dict[int, str]] = {k: {} for k in SKIP_KINDS}
        self._checked_intrinsics: set[tuple[bytes, tuple[int, int]]] = set()

    # ----------------------------------------------------------------------------------------------- subclass API
    @abstractmethod
    def _num_raw_frames(self) -> int:
        """Number of frames in the underlying sequence, before ``frame_skip``."""

    @abstractmethod
    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        """Loads one raw frame at native resolution.

        Returns:
            A dict with ``rgb`` (3, H, W) float32 in [0, 1]; ``depth`` (1, H', W') or (H', W') float32 metres
            (0 or NaN = missing); ``pose`` (4, 4) camera-to-world; ``intrinsics`` (3, 3) at the native depth
            resolution; optionally ``labels`` (1, H, W) or (H, W) integer class ids. numpy arrays or tensors.
        """

    def _excluded_raw_indices(self) -> frozenset[int]:
        """Raw frames to drop after ``frame_skip`` selection: by default those :meth:`_set_invalid` found.

        Selection stays anchored to raw indices: an excluded frame is dropped, later frames do not shift.
        """
        return self._excluded

    def _set_invalid(self, poses: np.ndarray, where: str) -> None:
        """Validates all raw poses (N, 4, 4) up front; invalid frames are excluded, warned about and counted.

        Call it from ``__init__`` once the poses are parsed. ``where`` names their file (or folder) for messages.

        Raises:
            ValueError: every raw frame kept by ``frame_skip`` has an invalid pose (names ``where`` and the first
                frame's reason).
        """
        poses = np.asarray(poses)
        problems = {i: r for i in range(len(poses)) if (r := pose_problem(poses[i])) is not None}
        self.pose_problems = problems
        self.invalid_pose_indices = sorted(problems)
        self._excluded = frozenset(problems)
        self._frame_issues["invalid_pose"] = dict(problems)
        if not problems:
            return
        for i in self.invalid_pose_indices[:MAX_FRAME_WARNINGS]:
            logger.warning("%s: frame %d skipped: invalid pose (%s)", where, i, problems[i])
        shown = ", ".join(map(str, self.invalid_pose_indices[:20])) + (" ..." if len(problems) > 20 else "")
        logger.warning(
            "%s: %d of %d frames have invalid poses and are skipped (raw indices %s)",
            where, len(problems), len(poses), shown,
        )
        kept = range(0, len(poses), self.frame_skip + 1)
        if len(poses) and all(i in problems for i in kept):
            first = kept[0]
            raise ValueError(
                f"{where}: all {len(kept)} selected frames have invalid poses (frame {first}: {problems[first]}); "
                "poses must be rigid camera-to-world transforms (see docs/validation.md)"
            )

    def _frame_source(self, raw_index: int) -> str:
        """Human-readable origin of a raw frame for error messages (e.g. its file names)."""
        return f"frame {raw_index}"

    def _intrinsics_source(self, raw_index: int) -> str:
        """Where a raw frame's intrinsics come from, for error messages (e.g. the intrinsics file)."""
        return f"intrinsics of {self._frame_source(raw_index)}"

    def _extra_config(self) -> dict[str, Any]:
        """Subclass constructor kwargs for :meth:`config` (JSON-serialisable)."""
        return {}

    # ------------------------------------------------------------------------------------------------ public API
    @property
    def has_labels(self) -> bool:
        """Whether frames carry a ``labels`` entry."""
        return False

    @property
    def num_classes(self) -> int:
        """Number of real classes (ids 1..num_classes), excluding the ignore placeholder."""
        return len(self.class_names) - 1

    def gt_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        """External ground-truth surface points: ((M, 3) float xyz, (M,) int64 class ids), or None.

        Loaders of benchmark GT return float64 xyz: the protocol computes GT voxel keys in float64.
        """
        return None

    def num_invalid_poses(self) -> int:
        """Number of raw frames skipped because of an invalid pose (all found so far; see :meth:`_set_invalid`)."""
        return len(self._frame_issues["invalid_pose"])

    def validation_summary(self) -> dict[str, int]:
        """Counts of problem frames among the frames selected by ``frame_skip``: ``invalid_pose`` (skipped),
        ``no_valid_depth`` (nothing to fuse) and ``implausible_depth`` (depth not fused).

        Pose counts are complete once the dataset is built (for loaders that call :meth:`_set_invalid`); depth
        counts grow as frames are loaded (complete after one pass). :meth:`num_invalid_poses` counts all raw frames.
        """
        step = self.frame_skip + 1
        return {k: sum(1 for i in v if i % step == 0) for k, v in self._frame_issues.items()}

    def skipped_frames(self) -> dict[str, dict[int, str]]:
        """{kind: {raw index: reason}} of the frames counted by :meth:`validation_summary`."""
        return {k: dict(v) for k, v in self._frame_issues.items()}

    def config(self) -> dict[str, Any]:
        """The constructor kwargs (JSON-serialisable) that rebuild this dataset."""
        cfg: dict[str, Any] = {
            "frame_skip": self.frame_skip,
            "rgb_resolution": list(self.rgb_resolution) if self.rgb_resolution else None,
            "depth_resolution": list(self.depth_resolution) if self.depth_resolution else None,
        }
        cfg.update(self._extra_config())
        return cfg

    @property
    def raw_indices(self) -> list[int]:
        """Raw indices of the kept frames, in order."""
        excluded = self._excluded_raw_indices()
        kept = range(0, self._num_raw_frames(), self.frame_skip + 1)
        return [i for i in kept if i not in excluded] if excluded else list(kept)

    def __len__(self) -> int:
        if self._excluded_raw_indices():
            return len(self.raw_indices)
        n = self._num_raw_frames()
        return 0 if n <= 0 else (n - 1) // (self.frame_skip + 1) + 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(i).__name__}")
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        raw = self.raw_indices[int(i)] if self._excluded_raw_indices() else int(i) * (self.frame_skip + 1)
        return self._prepare(raw, self._load_raw_frame(raw))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scene={self.scene_name!r}, frames={len(self)}, frame_skip={self.frame_skip})"

    # ----------------------------------------------------------------------------------------------- internals
    def _check_shape(self, key: str, hw: tuple[int, int], raw_index: int) -> None:
        seen = self._native_shapes.get(key)
        if seen is None:
            self._native_shapes[key] = hw
            self._native_shapes_source = self._native_shapes_source or self._frame_source(raw_index)
        elif seen != hw:
            raise ValueError(
                f"{key} size {hw[0]}x{hw[1]} of {self._frame_source(raw_index)} differs from the size "
                f"{seen[0]}x{seen[1]} of earlier frames ({self._native_shapes_source}) of scene '{self.scene_name}'"
            )

    def _validate_intrinsics(self, K: torch.Tensor, depth_hw: tuple[int, int], raw_index: int) -> None:
        Kn = K.detach().cpu().numpy().astype(np.float64).reshape(3, 3)
        key = (Kn.tobytes(), depth_hw)
        if key not in self._checked_intrinsics:
            check_intrinsics(Kn, depth_hw, self._intrinsics_source(raw_index))
            self._checked_intrinsics.add(key)

    def _prepare(self, raw_index: int, raw: dict[str, Any]) -> dict[str, Any]:
        src = self._frame_source(raw_index)
        rgb = torch.as_tensor(np.asarray(raw["rgb"]) if not torch.is_tensor(raw["rgb"]) else raw["rgb"])
        rgb = rgb.to(torch.float32)
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"rgb of {src} must have shape (3, H, W), got {tuple(rgb.shape)}")
        depth = torch.as_tensor(raw["depth"]).to(torch.float32)
        if depth.ndim == 2:
            depth = depth[None]
        if depth.ndim != 3 or depth.shape[0] != 1:
            raise ValueError(f"depth of {src} must have shape (1, H, W), got {tuple(depth.shape)}")
        depth = torch.where(depth == 0, torch.full_like(depth, float("nan")), depth)
        pose_in = torch.as_tensor(raw["pose"])
        K_in = torch.as_tensor(raw["intrinsics"])
        pose = pose_in.to(torch.float32).reshape(4, 4)
        K = K_in.to(torch.float32).reshape(3, 3)

        rgb_hw = (int(rgb.shape[1]), int(rgb.shape[2]))
        depth_hw = (int(depth.shape[1]), int(depth.shape[2]))
        self._check_shape("rgb", rgb_hw, raw_index)
        self._check_shape("depth", depth_hw, raw_index)
        self._validate_intrinsics(K_in, depth_hw, raw_index)
        problem = pose_problem(pose_in.detach().cpu().numpy().astype(np.float64).reshape(4, 4))
        if problem is not None:
            if raw_index not in self._frame_issues["invalid_pose"]:
                self._frame_issues["invalid_pose"][raw_index] = problem
                logger.warning("%s skipped: invalid pose (%s)", src, problem)
            pose = torch.full((4, 4), float("nan"))
        issue = depth_problem(depth.numpy())
        if issue is not None:
            kind, reason = issue
            if raw_index not in self._frame_issues[kind]:
                self._frame_issues[kind][raw_index] = reason
                n = len(self._frame_issues[kind])
                if n <= MAX_FRAME_WARNINGS:
                    action = "nothing to fuse" if kind == "no_valid_depth" else "its depth is not fused"
                    logger.warning("%s: %s; %s (%d such frame(s) so far)", src, reason, action, n)
            if kind == "implausible_depth":
                depth = torch.full_like(depth, float("nan"))

        labels = raw.get("labels")
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).to(torch.int64)
            if labels.ndim == 2:
                labels = labels[None]
            lab_hw = (int(labels.shape[-2]), int(labels.shape[-1]))
            if labels.ndim != 3 or labels.shape[0] != 1 or lab_hw != rgb_hw:
                raise ValueError(
                    f"labels of {src} have shape {tuple(labels.shape)} but the RGB image is "
                    f"{rgb_hw[0]}x{rgb_hw[1]}; labels must be (1, H, W) at RGB resolution"
                )

        out_rgb_hw = self.rgb_resolution or rgb_hw
        out_depth_hw = self.depth_resolution or depth_hw
        if out_rgb_hw != rgb_hw:
            rgb = F.interpolate(rgb[None], size=out_rgb_hw, mode="bilinear", align_corners=False, antialias=True)[0]
            rgb = rgb.clamp_(0.0, 1.0)
            if labels is not None:
                labels = F.interpolate(labels[None].to(torch.float64), size=out_rgb_hw, mode="nearest-exact")[0]
                labels = labels.to(torch.int64)
        if out_depth_hw != depth_hw:
            depth = F.interpolate(depth[None], size=out_depth_hw, mode="nearest-exact")[0]
            K = scale_intrinsics(K, depth_hw, out_depth_hw)

        frame = {
            "rgb": rgb.contiguous(),
            "depth": depth.contiguous(),
            "pose": pose,
            "intrinsics": K,
            "index": int(raw_index),
        }
        if labels is not None:
            frame["labels"] = labels.contiguous()
        return frame
