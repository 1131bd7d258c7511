"""Raw ScanNet ``.sens`` files, read directly (``dataset=scannet dataset.sens=<file>``, or found as
``<path>/<scene>/<scene>.sens`` when the scan has no exported ``color/`` folder), and a writer for tests.

The binary layout (ScanNet's SensReader documentation; little-endian)::

    uint32 version (4)
    uint64 n; char sensor_name[n]
    float32 intrinsic_color[16], extrinsic_color[16], intrinsic_depth[16], extrinsic_depth[16]   (row-major 4x4)
    int32 color_compression_type (2 = jpeg; 0 raw, 1 png), int32 depth_compression_type (1 = zlib_ushort; 0 raw)
    uint32 color_width, color_height, depth_width, depth_height
    float32 depth_shift (depth units per metre, 1000)
    uint64 num_frames, then per frame:
        float32 camera_to_world[16]; uint64 timestamp_color, timestamp_depth (microseconds);
        uint64 color_size_bytes, depth_size_bytes; color bytes; depth bytes

The reader indexes the frame offsets in one pass (seeking over the image data) and reads each frame on demand, so
memory does not grow with the file. Frames, poses (camera-to-world, OpenCV axes; non-finite ones are skipped and
counted as in the exported layout) and ``intrinsic_depth`` match what SensReader exports; labels are not stored in
a ``.sens`` file (export ``label-filt`` for evaluation).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import PosedRGBDDataset
from ovmap.datasets.labels_io import check_pose, load_label_set
from ovmap.datasets.stamped import frame_to_arrays

logger = logging.getLogger(__name__)

COLOR_TYPES = {0: "raw", 1: "png", 2: "jpeg"}
DEPTH_TYPES = {0: "raw_ushort", 1: "zlib_ushort"}
_FRAME_HEAD = struct.Struct("<16f4Q")


class ScanNetSensDataset(PosedRGBDDataset):
    """One ScanNet scan read from its ``.sens`` file (layout in the module docstring).

    Args:
        sens: the ``.sens`` file.
        scene: scan name (default: the file's stem).
        frame_skip, rgb_resolution, depth_resolution: see :class:`PosedRGBDDataset`.

    Attributes:
        timestamps: (N,) float64 seconds (depth timestamps, or ``index / 30`` when the file stores zeros).

    Raises:
        FileNotFoundError: no file. ValueError: a truncated file, an unknown version or compression type.
    """

    gt_source = "lifted"

    def __init__(
        self,
        sens: str | os.PathLike,
        scene: str | None = None,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(
            frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution
        )
        self.sens = Path(sens).expanduser()
        if not self.sens.is_file():
            raise FileNotFoundError(f".sens file {self.sens} does not exist")
        self.scene = self.scene_name = str(scene) if scene else self.sens.stem
        self.class_names = ["ignore"] + load_label_set("nyu40")[:37]
        self._index()

    def _index(self) -> None:
        size = self.sens.stat().st_size
        with self.sens.open("rb") as f:

            def read(fmt: str) -> tuple:
                st = struct.Struct("<" + fmt)
                buf = f.read(st.size)
                if len(buf) != st.size:
                    raise ValueError(
                        f"{self.sens} is truncated (header ends at byte {f.tell()}); re-download it"
                    )
                return st.unpack(buf)

            (version,) = read("I")
            if version != 4:
                raise ValueError(f"{self.sens}: .sens version {version} is not supported (expected 4)")
            (n,) = read("Q")
            self.sensor_name = f.read(n).decode(errors="replace")
            mats = np.array(read("64f"), dtype=np.float64).reshape(4, 4, 4)
            self._K = mats[2, :3, :3].copy()
            self.color_intrinsics = mats[0].copy()
            ctype, dtype = read("ii")
            if ctype not in COLOR_TYPES or dtype not in DEPTH_TYPES:
                raise ValueError(
                    f"{self.sens}: colour compression {ctype} / depth compression {dtype} not supported "
                    f"(colour {COLOR_TYPES}, depth {DEPTH_TYPES})"
                )
            self.color_type, self.depth_type = COLOR_TYPES[ctype], DEPTH_TYPES[dtype]
            self.color_wh = read("II")
            self.depth_wh = read("II")
            (self.depth_shift,) = read("f")
            (num,) = read("Q")
            poses, offsets, stamps = np.zeros((num, 4, 4)), [], []
            for i in range(num):
                head = f.read(_FRAME_HEAD.size)
                if len(head) != _FRAME_HEAD.size:
                    raise ValueError(f"{self.sens} is truncated at frame {i} of {num}; re-download it")
                vals = _FRAME_HEAD.unpack(head)
                poses[i] = np.array(vals[:16], dtype=np.float64).reshape(4, 4)
                _, t_depth, csize, dsize = vals[16:]
                pos = f.tell()
                if pos + csize + dsize > size:
                    raise ValueError(f"{self.sens} is truncated at frame {i} of {num}; re-download it")
                offsets.append((pos, csize, dsize))
                stamps.append(t_depth)
                f.seek(csize + dsize, os.SEEK_CUR)
        if not np.isfinite(self._K).all() or self._K[0, 0] <= 0 or self._K[1, 1] <= 0:
            raise ValueError(f"{self.sens}: intrinsic_depth must be finite with fx, fy > 0, got\n{self._K}")
        for i, p in enumerate(poses):
            check_pose(p, f"{self.sens} frame {i}")
        self._poses, self._offsets = poses, offsets
        st = np.asarray(stamps, dtype=np.float64)
        self.timestamps = st / 1e6 if num and st.any() else np.arange(num) / 30.0
        self._set_invalid(poses, str(self.sens))

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames (non-finite ones included)."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {"sens": str(self.sens), "scene": self.scene}

    def _num_raw_frames(self) -> int:
        return len(self._offsets)

    def _frame_source(self, raw_index: int) -> str:
        return f"frame {raw_index} of {self.sens}"

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        import cv2

        pos, csize, dsize = self._offsets[raw_index]
        with self.sens.open("rb") as f:
            f.seek(pos)
            cbytes, dbytes = f.read(csize), f.read(dsize)
        cw, ch = self.color_wh
        dw, dh = self.depth_wh
        if self.color_type == "raw":
            rgb = np.frombuffer(cbytes, np.uint8).reshape(ch, cw, 3)
        else:
            bgr = cv2.imdecode(np.frombuffer(cbytes, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot decode the colour image of {self._frame_source(raw_index)}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        raw = zlib.decompress(dbytes) if self.depth_type == "zlib_ushort" else dbytes
        if len(raw) != 2 * dw * dh:
            raise ValueError(
                f"depth of {self._frame_source(raw_index)} has {len(raw)} bytes, expected {2 * dw * dh}"
            )
        depth = np.frombuffer(raw, "<u2").reshape(dh, dw).astype(np.float32) / np.float32(self.depth_shift)
        return {
            "rgb": rgb.transpose(2, 0, 1).astype(np.float32) / 255.0,
            "depth": depth,
            "pose": self._poses[raw_index],
            "intrinsics": self._K,
        }


def write_sens(
    dataset: PosedRGBDDataset,
    path: str | os.PathLike,
    depth_shift: float = 1000.0,
    rate_hz: float = 30.0,
    jpeg_quality: int = 95,
) -> Path:
    """Writes the kept frames of ``dataset`` as a version-4 ``.sens`` file (JPEG colour, zlib uint16 depth).

    ``intrinsic_depth`` is the dataset's K; ``intrinsic_color`` is K scaled to the RGB resolution; both extrinsics
    are the identity; frame i is stamped ``i / rate_hz`` seconds (in microseconds).
    """
    import cv2

    frames = [frame_to_arrays(f, depth_shift) for f in dataset]
    if not frames:
        raise ValueError("dataset has no frames to write")
    a0 = frames[0]
    ch, cw = a0["rgb8"].shape[:2]
    dh, dw = a0["depth16"].shape
    Kd = np.eye(4)
    Kd[:3, :3] = a0["K"]
    Kc = Kd.copy()
    Kc[0] *= cw / dw
    Kc[1] *= ch / dh
    Kc[:, 3], Kc[3] = 0, [0, 0, 0, 1]
    out = Path(path)
    with out.open("wb") as f:
        name = b"ovmap-synthetic"
        f.write(struct.pack("<IQ", 4, len(name)) + name)
        f.write(
            struct.pack(
                "<64f", *Kc.reshape(-1), *np.eye(4).reshape(-1), *Kd.reshape(-1), *np.eye(4).reshape(-1)
            )
        )
        f.write(struct.pack("<iiIIIIfQ", 2, 1, cw, ch, dw, dh, depth_shift, len(frames)))
        for i, a in enumerate(frames):
            ok, jpg = cv2.imencode(
                ".jpg", cv2.cvtColor(a["rgb8"], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
            )
            dz = zlib.compress(a["depth16"].astype("<u2").tobytes())
            t_us = int(round(i * 1e6 / rate_hz))
            f.write(_FRAME_HEAD.pack(*a["pose"].reshape(-1), t_us, t_us, len(jpg), len(dz)))
            f.write(jpg.tobytes())
            f.write(dz)
    return out
