"""Record3D ``.r3d`` captures (iPhone / iPad LiDAR): a reader (registered as ``record3d``) and a writer for tests.

An ``.r3d`` file is a zip archive (Record3D's export documentation)::

    metadata            JSON: "w", "h" (colour size), "dw", "dh" (depth size; 256x192 when absent), "K" (9 floats,
                        column-major 3x3, pixels at the *colour* resolution), "fps", "poses" (one
                        [qx, qy, qz, qw, tx, ty, tz] per frame: camera-to-world in ARKit's world), optional
                        "frameTimestamps" (seconds)
    rgbd/<i>.jpg        colour frame i
    rgbd/<i>.depth      LZFSE-compressed float32 depth in metres (dh x dw)
    rgbd/<i>.conf       optional LZFSE-compressed uint8 confidence (0 low, 1 medium, 2 high)

Camera axes: ARKit's camera has x right, y **up**, z **backward** (it looks along -z); ovmap's is OpenCV (x right,
y down, z forward), so the pose is converted by flipping the camera's y and z axes:
``T_wc = T_wc_arkit @ diag(1, -1, -1, 1)``. The world frame stays ARKit's (y up, gravity-aligned, metres). K is
scaled from the colour to the depth resolution by the simple rule (row 0 by dw / w, row 1 by dh / h).

Needs the optional ``lzfse`` package (``pip install -e ".[record3d]"``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset, scale_intrinsics
from ovmap.datasets.stamped import frame_to_arrays, matrix_to_quat_xyzw, pose_from_tq, require_extra

logger = logging.getLogger(__name__)

ARKIT_TO_OPENCV = np.diag(
    [1.0, -1.0, -1.0, 1.0]
)  # camera axes: (x right, y up, z back) -> (x right, y down, z fwd)
DEFAULT_DEPTH_HW = (192, 256)


def _lzfse():
    return require_extra("lzfse", "record3d", "reading Record3D .r3d files")


@DATASETS.register("record3d")
class Record3DDataset(PosedRGBDDataset):
    """Frames of one Record3D ``.r3d`` capture (layout and axis conversion in the module docstring).

    Args:
        path: the ``.r3d`` file.
        min_confidence: depth pixels whose LiDAR confidence is below this (0, 1 or 2) are dropped; 0 keeps all.
        frame_skip, rgb_resolution, depth_resolution: see :class:`PosedRGBDDataset`.

    Attributes:
        timestamps: (N,) float64 seconds (``frameTimestamps`` when present, else ``index / fps``).

    Raises:
        MissingExtraError (ImportError, RuntimeError): lzfse is missing (names the extra). FileNotFoundError: no file. ValueError: not a zip, a missing member or key,
        a pose count different from the frame count, a depth blob of the wrong size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        min_confidence: int = 0,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(
            frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution
        )
        _lzfse()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"Record3D file {self.path} does not exist")
        if min_confidence not in (0, 1, 2):
            raise ValueError(f"min_confidence must be 0, 1 or 2, got {min_confidence!r}")
        self.min_confidence = int(min_confidence)
        self.scene_name = self.path.stem
        try:
            with zipfile.ZipFile(self.path) as z:
                names = set(z.namelist())
                if "metadata" not in names:
                    raise ValueError(f"{self.path} has no 'metadata' member; is it a Record3D .r3d export?")
                meta = json.loads(z.read("metadata"))
        except zipfile.BadZipFile:
            raise ValueError(f"{self.path} is not a zip archive; a Record3D .r3d export is one") from None
        missing = [k for k in ("w", "h", "K", "poses") if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: metadata lacks {', '.join(missing)}")
        self.rgb_hw = (int(meta["h"]), int(meta["w"]))
        self.depth_hw = (
            (int(meta["dh"]), int(meta["dw"])) if "dh" in meta and "dw" in meta else DEFAULT_DEPTH_HW
        )
        K_rgb = np.asarray(meta["K"], dtype=np.float64).reshape(3, 3).T  # stored column-major
        self._K = scale_intrinsics_np(K_rgb, self.rgb_hw, self.depth_hw)
        poses = np.asarray(meta["poses"], dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 7:
            raise ValueError(
                f"{self.path}: metadata poses must be [qx, qy, qz, qw, tx, ty, tz] rows, got {poses.shape}"
            )
        self._poses = np.stack([pose_from_tq(p[4:], p[:4]) @ ARKIT_TO_OPENCV for p in poses])
        n = sum(1 for k in names if k.startswith("rgbd/") and k.endswith(".depth"))
        if n != len(poses):
            logger.warning(
                "%s: %d depth frames but %d poses; using the first %d",
                self.path,
                n,
                len(poses),
                min(n, len(poses)),
            )
        self._n = min(n, len(poses))
        self._has_conf = "rgbd/0.conf" in names
        fps = float(meta.get("fps", 30.0) or 30.0)
        ts = meta.get("frameTimestamps")
        self.timestamps = (
            np.asarray(ts[: self._n], dtype=np.float64)
            if ts and len(ts) >= self._n
            else np.arange(self._n) / fps
        )
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"] = None
        return state

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses (OpenCV camera axes, ARKit world)."""
        return self._poses[: self._n].copy()

    def _extra_config(self) -> dict[str, Any]:
        return {"path": str(self.path), "min_confidence": self.min_confidence}

    def _num_raw_frames(self) -> int:
        return self._n

    def _frame_source(self, raw_index: int) -> str:
        return f"frame {raw_index} ({self.path}: rgbd/{raw_index}.jpg, rgbd/{raw_index}.depth)"

    def _read(self, name: str, raw_index: int) -> bytes:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        try:
            return self._zip.read(name)
        except KeyError:
            raise ValueError(f"{self.path} has no member {name} ({self._frame_source(raw_index)})") from None

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        import cv2

        lz = _lzfse()
        bgr = cv2.imdecode(
            np.frombuffer(self._read(f"rgbd/{raw_index}.jpg", raw_index), np.uint8), cv2.IMREAD_COLOR
        )
        if bgr is None:
            raise ValueError(f"cannot decode the colour image of {self._frame_source(raw_index)}")
        dh, dw = self.depth_hw
        raw = lz.decompress(self._read(f"rgbd/{raw_index}.depth", raw_index))
        if len(raw) != 4 * dh * dw:
            raise ValueError(
                f"depth of {self._frame_source(raw_index)} has {len(raw)} bytes, "
                f"expected {4 * dh * dw} ({dh}x{dw} float32)"
            )
        depth = np.frombuffer(raw, "<f4").reshape(dh, dw).copy()
        if self.min_confidence > 0 and self._has_conf:
            conf = np.frombuffer(lz.decompress(self._read(f"rgbd/{raw_index}.conf", raw_index)), np.uint8)
            depth[conf.reshape(dh, dw) < self.min_confidence] = 0.0
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0
        return {"rgb": rgb, "depth": depth, "pose": self._poses[raw_index], "intrinsics": self._K}


def scale_intrinsics_np(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """numpy front end of :func:`ovmap.datasets.base.scale_intrinsics` (float64)."""
    import torch

    return scale_intrinsics(torch.as_tensor(K, dtype=torch.float64), src_hw, dst_hw).numpy()


def write_r3d(
    dataset: PosedRGBDDataset, path: str | os.PathLike, fps: float = 30.0, jpeg_quality: int = 95
) -> Path:
    """Writes the kept frames of ``dataset`` as an ``.r3d`` zip (JPEG colour, LZFSE float32 depth, confidence 2).

    Poses are converted to ARKit camera axes (inverse of the reader's conversion); K is written at the colour
    resolution (scaled from the dataset's depth-resolution K); depth is the 16-bit millimetre value / 1000 in
    float32, so it equals the folder format's depth.
    """
    import cv2

    lz = _lzfse()
    frames = [frame_to_arrays(f, 1000.0) for f in dataset]
    if not frames:
        raise ValueError("dataset has no frames to write")
    h, w = frames[0]["rgb8"].shape[:2]
    dh, dw = frames[0]["depth16"].shape
    K_rgb = scale_intrinsics_np(frames[0]["K"], (dh, dw), (h, w))
    poses = []
    for a in frames:
        P = a["pose"] @ ARKIT_TO_OPENCV  # diag is its own inverse
        poses.append([*matrix_to_quat_xyzw(P[:3, :3]).tolist(), *P[:3, 3].tolist()])
    meta = {"w": w, "h": h, "dw": dw, "dh": dh, "K": K_rgb.T.reshape(-1).tolist(), "fps": fps, "poses": poses,
            "initPose": poses[0], "cameraType": 1}  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("metadata", json.dumps(meta))
        for i, a in enumerate(frames):
            ok, jpg = cv2.imencode(
                ".jpg", cv2.cvtColor(a["rgb8"], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
            )
            z.writestr(f"rgbd/{i}.jpg", jpg.tobytes())
            d = (a["depth16"].astype(np.float32) / np.float32(1000.0)).astype("<f4")
            z.writestr(f"rgbd/{i}.depth", lz.compress(d.tobytes()))
            z.writestr(f"rgbd/{i}.conf", lz.compress(np.full((dh, dw), 2, np.uint8).tobytes()))
    out = Path(path)
    out.write_bytes(buf.getvalue())
    return out
