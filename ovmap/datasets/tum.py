"""TUM RGB-D benchmark sequences: a reader (registered as ``tum``) and a writer (:func:`write_tum`).

Layout (the benchmark's file formats, docs/sources/tum.md)::

    <sequence>/
      rgb.txt           "timestamp filename" per line (# comments), e.g. "1305031102.175304 rgb/1305031102.175304.png"
      depth.txt         same, 16-bit PNG depth; metres = value / 5000 (0 = no depth)
      groundtruth.txt   "timestamp tx ty tz qx qy qz qw": the colour camera's optical centre in the world
                        (camera-to-world, optical axes x right, y down, z forward; metres)
      rgb/, depth/      the images

Frames follow ``rgb.txt``: each colour image is paired with the nearest depth image (greedy by time difference,
at most ``max_time_diff`` seconds, 0.02 s as in the benchmark's ``associate.py``), and its pose is interpolated
from ``groundtruth.txt`` at the colour timestamp (linear translation, slerp rotation; bracketing samples at most
``2 * max_time_diff`` apart, no extrapolation). Colour images that cannot be associated are dropped, counted in
:attr:`TUMDataset.unassociated` and logged. The depth images are registered to the colour camera, so one K
serves both; the published Freiburg 1/2/3 calibrations are the presets (``camera=fr1|fr2|fr3``), and lens
distortion (fr1, fr2) is not corrected.

Typical usage example:

    >>> from ovmap.datasets.tum import TUMDataset
    >>> ds = TUMDataset("/data/rgbd_dataset_freiburg1_xyz", camera="fr1")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.folder import _encode_png, read_rgb, read_uint16
from ovmap.datasets.stamped import (
    associate,
    frame_to_arrays,
    interpolate_pose,
    matrix_to_quat_xyzw,
    pose_from_tq,
)

logger = logging.getLogger(__name__)

# fx, fy, cx, cy of the colour camera (the benchmark's "Intrinsic Camera Calibration" table).
FREIBURG_INTRINSICS: dict[str, tuple[float, float, float, float]] = {
    "fr1": (517.3, 516.5, 318.6, 255.3),
    "fr2": (520.9, 521.0, 325.1, 249.7),
    "fr3": (535.4, 539.2, 320.1, 247.6),
}
TUM_DEPTH_SCALE = 5000.0


def _read_list(path: Path, ncols: int) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (TUM RGB-D sequence file)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < ncols:
            raise ValueError(f"{path} line {n}: expected {ncols} columns, got {len(parts)}: {line!r}")
        rows.append(parts[:ncols])
    if not rows:
        raise ValueError(f"{path} holds no entries")
    return rows


def _to_ns(text: str, where: str) -> int:
    try:
        return int(round(float(text) * 1e9))
    except ValueError:
        raise ValueError(f"{where}: timestamp {text!r} is not a number") from None


@DATASETS.register("tum")
class TUMDataset(PosedRGBDDataset):
    """One TUM RGB-D sequence (layout in the module docstring).

    Args:
        path: the sequence folder (holds rgb.txt, depth.txt, groundtruth.txt).
        camera: "fr1", "fr2" or "fr3" (published calibration) or "auto" (from a ``freiburgN`` folder name).
        intrinsics: [fx, fy, cx, cy] in pixels at the depth resolution; overrides ``camera``.
        max_time_diff: largest colour-depth timestamp difference in seconds (0.02).
        depth_scale: depth PNG units per metre (5000).
        frame_skip, rgb_resolution, depth_resolution: see :class:`PosedRGBDDataset`.

    Attributes:
        timestamps: (N,) float64 seconds of the associated frames (colour timestamps), by raw index.
        unassociated: number of colour images dropped (no depth within ``max_time_diff`` or no pose).

    Raises:
        FileNotFoundError: a missing list file or image. ValueError: malformed lines, unknown camera, no frames.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        camera: str = "auto",
        intrinsics: Any = None,
        max_time_diff: float = 0.02,
        depth_scale: float = TUM_DEPTH_SCALE,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(
            frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution
        )
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(f"TUM sequence folder {self.path} does not exist")
        self.scene_name = self.path.name
        self.camera, self.intrinsics_arg = camera, list(intrinsics) if intrinsics is not None else None
        self.max_time_diff = float(max_time_diff)
        self.depth_scale = float(depth_scale)
        if not self.max_time_diff > 0 or not self.depth_scale > 0:
            raise ValueError(f"max_time_diff and depth_scale must be > 0, got {max_time_diff}, {depth_scale}")
        self._K = self._resolve_K()

        rgb = _read_list(self.path / "rgb.txt", 2)
        depth = _read_list(self.path / "depth.txt", 2)
        gt = _read_list(self.path / "groundtruth.txt", 8)
        rgb_t = np.array([_to_ns(r[0], "rgb.txt") for r in rgb], dtype=np.int64)
        depth_t = np.array([_to_ns(r[0], "depth.txt") for r in depth], dtype=np.int64)
        gt_t = np.array([_to_ns(r[0], "groundtruth.txt") for r in gt], dtype=np.int64)
        try:
            vals = np.array([[float(x) for x in r[1:]] for r in gt])
        except ValueError:
            raise ValueError(f"{self.path / 'groundtruth.txt'}: pose values must be numbers") from None
        order = np.argsort(gt_t, kind="stable")
        gt_t = gt_t[order]
        gt_poses = np.stack([pose_from_tq(v[:3], v[3:]) for v in vals[order]])

        tol_ns = int(round(self.max_time_diff * 1e9))
        pairs = associate(rgb_t, depth_t, tol_ns)
        self._frames: list[tuple[Path, Path, np.ndarray]] = []
        times = []
        no_pose = 0
        for i, j in pairs:
            pose = interpolate_pose(gt_t, gt_poses, int(rgb_t[i]), max_gap=2 * tol_ns)
            if pose is None:
                no_pose += 1
                continue
            self._frames.append((self.path / rgb[i][1], self.path / depth[j][1], pose))
            times.append(rgb_t[i])
        self.unassociated = len(rgb) - len(self._frames)
        self.timestamps = np.asarray(times, dtype=np.int64) / 1e9
        if self.unassociated:
            logger.warning(
                "%s: %d of %d colour images dropped (%d without depth within %.3f s, %d without a ground-truth pose)",
                self.path,
                self.unassociated,
                len(rgb),
                len(rgb) - len(pairs),
                self.max_time_diff,
                no_pose,
            )
        if not self._frames:
            raise ValueError(
                f"{self.path}: no colour image could be associated with a depth image (within {self.max_time_diff} s) "
                "and a ground-truth pose; raise dataset.max_time_diff or check the timestamps"
            )

    def _resolve_K(self) -> np.ndarray:
        if self.intrinsics_arg is not None:
            if len(self.intrinsics_arg) != 4:
                raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {self.intrinsics_arg}")
            fx, fy, cx, cy = (float(x) for x in self.intrinsics_arg)
        else:
            cam = self.camera
            if cam == "auto":
                m = re.search(r"freiburg([123])", self.path.name)
                if m is None:
                    raise ValueError(
                        f"cannot tell the camera of {self.path} (no 'freiburg1/2/3' in its name); "
                        "set dataset.camera=fr1|fr2|fr3 or dataset.intrinsics=[fx,fy,cx,cy]"
                    )
                cam = f"fr{m.group(1)}"
            if cam not in FREIBURG_INTRINSICS:
                raise ValueError(f"camera must be auto, fr1, fr2 or fr3, got {cam!r}")
            fx, fy, cx, cy = FREIBURG_INTRINSICS[cam]
        if not (fx > 0 and fy > 0):
            raise ValueError(f"intrinsics need fx, fy > 0, got fx={fx}, fy={fy}")
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of the associated frames."""
        return np.stack([f[2] for f in self._frames])

    def _extra_config(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "camera": self.camera,
            "intrinsics": self.intrinsics_arg,
            "max_time_diff": self.max_time_diff,
            "depth_scale": self.depth_scale,
        }

    def _num_raw_frames(self) -> int:
        return len(self._frames)

    def _frame_source(self, raw_index: int) -> str:
        r, d, _ = self._frames[raw_index]
        return f"frame {raw_index} ({r}, {d})"

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        r, d, pose = self._frames[raw_index]
        for f in (r, d):
            if not f.is_file():
                raise FileNotFoundError(
                    f"missing {f} listed in {self.path}/{'rgb' if f is r else 'depth'}.txt"
                )
        depth = read_uint16(d, "depth").astype(np.float32) / np.float32(self.depth_scale)
        return {"rgb": read_rgb(r), "depth": depth, "pose": pose, "intrinsics": self._K}


def write_tum(
    dataset: PosedRGBDDataset,
    path: str | os.PathLike,
    rate_hz: float = 30.0,
    start_time: float = 1305031102.0,
    depth_offset_s: float = 0.0,
) -> Path:
    """Writes the kept frames of ``dataset`` as a TUM RGB-D sequence (colour PNG, depth PNG / 5000).

    Frame i gets colour timestamp ``start_time + i / rate_hz`` and depth timestamp ``+ depth_offset_s``;
    ``groundtruth.txt`` holds the pose at every colour timestamp.
    The caller chooses the intrinsics (``dataset.intrinsics=[...]`` when reading). Returns the folder.
    """
    import cv2

    from ovmap.fileio import atomic_write_bytes

    root = Path(path).expanduser()
    (root / "rgb").mkdir(parents=True, exist_ok=False)
    (root / "depth").mkdir()
    rgb_lines, depth_lines, gt_lines = (
        ["# color images"],
        ["# depth maps"],
        ["# timestamp tx ty tz qx qy qz qw"],
    )
    for i, frame in enumerate(dataset):
        a = frame_to_arrays(frame, TUM_DEPTH_SCALE)
        tr, td = start_time + i / rate_hz, start_time + i / rate_hz + depth_offset_s
        rn, dn = f"rgb/{tr:.6f}.png", f"depth/{td:.6f}.png"
        atomic_write_bytes(root / rn, _encode_png(cv2.cvtColor(a["rgb8"], cv2.COLOR_RGB2BGR), root))
        atomic_write_bytes(root / dn, _encode_png(a["depth16"], root))
        rgb_lines.append(f"{tr:.6f} {rn}")
        depth_lines.append(f"{td:.6f} {dn}")
        q = matrix_to_quat_xyzw(a["pose"][:3, :3])
        t = a["pose"][:3, 3]
        gt_lines.append(f"{tr:.6f} " + " ".join(repr(float(x)) for x in (*t, *q)))
    for name, lines in (("rgb.txt", rgb_lines), ("depth.txt", depth_lines), ("groundtruth.txt", gt_lines)):
        atomic_write_bytes(root / name, ("\n".join(lines) + "\n").encode())
    return root
