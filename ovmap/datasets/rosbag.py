"""ROS 1 ``.bag`` and ROS 2 (``.db3`` / ``.mcap``) bags without a ROS install: reader (``dataset=rosbag``), writer
(:func:`write_rosbag`, for tests) and :func:`check_rosbag` (``ovmap check-data dataset=rosbag``).

Needs the optional ``rosbags`` package (``pip install -e ".[ros]"``).

What is read (docs/sources/rosbag.md):
    * colour ``rgb_topic``: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) or ``CompressedImage``
      (jpeg / png);
    * depth ``depth_topic``: ``Image`` 16UC1 / mono16 (millimetres, ``depth_scale`` units per metre) or 32FC1
      (metres), or a ``compressedDepth`` PNG; it must be registered to the colour camera (e.g. RealSense
      ``aligned_depth_to_color``): colour and depth may differ only in resolution;
    * ``info_topic``: ``CameraInfo``; its K must be at the depth resolution. Non-zero distortion: plumb_bob /
      rational_polynomial images are undistorted (``undistort=True``, K kept), other models only warn;
    * poses, camera-to-world in the optical frame convention (x right, y down, z forward; ROS ``*_optical_frame``):
      either from the TF tree (``/tf`` + ``/tf_static``) from ``world_frame`` to ``camera_frame`` (default: the
      CameraInfo's ``header.frame_id``), or from ``pose_topic`` (``PoseStamped``, ``PoseWithCovarianceStamped``,
      ``Odometry``, ``TransformStamped``) composed with the static extrinsic body -> camera optical frame
      (``camera_extrinsic``, or looked up in the TF tree from the message's ``child_frame_id``). Poses are
      interpolated at the depth image's header stamp (linear translation, slerp rotation), never extrapolated.

Association: each colour image is paired with the depth image of nearest header stamp (at most ``max_time_diff``
seconds apart, each used once); frames without depth or without a pose are dropped and counted
(:attr:`RosbagDataset.dropped`) and logged, never paired wrongly.

Streaming: one indexing pass reads message headers and transforms (no image is kept); each frame is then read on
demand by its bag timestamp, so memory does not grow with the bag's size (TF samples excepted: 64 bytes each).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.stamped import (
    associate,
    frame_to_arrays,
    interpolate_pose,
    matrix_to_quat_xyzw,
    pose_from_tq,
    require_extra,
)

logger = logging.getLogger(__name__)

POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)  # fmt: skip
TF_TOPICS = ("/tf", "/tf_static")
# camera_link (x forward, y left, z up, REP 103) -> camera optical frame (x right, y down, z forward), REP 103.
R_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rosbags():
    highlevel = require_extra("rosbags.highlevel", "ros", "reading ROS bags")
    typesys = require_extra("rosbags.typesys", "ros", "reading ROS bags")
    return highlevel.AnyReader, typesys.Stores, typesys.get_typestore


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _frame_id(name: str) -> str:
    return str(name).lstrip("/")


def _tf_matrix(tr: Any) -> np.ndarray:
    return pose_from_tq([tr.translation.x, tr.translation.y, tr.translation.z],
                        [tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w])  # fmt: skip


def _pose_matrix(p: Any) -> np.ndarray:
    return pose_from_tq([p.position.x, p.position.y, p.position.z],
                        [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])  # fmt: skip


def _bag_paths(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    if path.is_file() and path.suffix in (".db3", ".mcap"):
        return [path.parent]  # a ROS 2 bag is the folder holding metadata.yaml
    return [path]


class TFBuffer:
    """The TF tree of a bag: static and time-stamped edges parent -> child (T_parent_child, float64).

    Each frame has one parent (TF's rule). :meth:`lookup` composes the chain between two frames through their
    common ancestor, interpolating each time-stamped edge at the query time.
    """

    def __init__(self, max_gap_ns: int | None = None) -> None:
        self.parent: dict[str, str] = {}
        self.static: dict[str, np.ndarray] = {}
        self._dyn: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.max_gap_ns = max_gap_ns

    def add(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool) -> None:
        parent, child = _frame_id(parent), _frame_id(child)
        self.parent[child] = parent
        if static:
            self.static[child] = T
        else:
            self._dyn.setdefault(child, []).append((stamp_ns, T))
            self._sorted.pop(child, None)

    @property
    def frames(self) -> set[str]:
        return set(self.parent) | set(self.parent.values())

    def _edge(self, child: str, t: int) -> np.ndarray | None:
        if child in self.static:
            return self.static[child]
        if child not in self._sorted:
            samples = sorted(self._dyn[child], key=lambda s: s[0])
            self._sorted[child] = (
                np.array([s[0] for s in samples], np.int64),
                np.stack([s[1] for s in samples]),
            )
        times, poses = self._sorted[child]
        return interpolate_pose(times, poses, t, self.max_gap_ns)

    def _chain(self, frame: str) -> list[str]:
        out = [frame]
        while out[-1] in self.parent and len(out) < 1000:
            out.append(self.parent[out[-1]])
        return out

    def connected(self, a: str, b: str) -> bool:
        return bool(set(self._chain(_frame_id(a))) & set(self._chain(_frame_id(b))))

    def lookup(self, target: str, source: str, t: int) -> np.ndarray | None:
        """T_target_source (maps points in ``source`` to ``target``) at time ``t`` (ns), or None."""
        target, source = _frame_id(target), _frame_id(source)
        ct, cs = self._chain(target), self._chain(source)
        common = next((f for f in cs if f in set(ct)), None)
        if common is None:
            return None

        def to_ancestor(chain: list[str]) -> np.ndarray | None:
            T = np.eye(4)
            for child in chain[: chain.index(common)]:
                E = self._edge(child, t)
                if E is None:
                    return None
                T = E @ T
            return T

        A, B = to_ancestor(ct), to_ancestor(cs)
        if A is None or B is None:
            return None
        return np.linalg.inv(A) @ B


@dataclass
class _Stream:
    stamps: list[int] = field(default_factory=list)  # header stamps (ns)
    bag_times: list[int] = field(default_factory=list)  # bag (receive) times (ns)


@DATASETS.register("rosbag")
class RosbagDataset(PosedRGBDDataset):
    """Posed RGB-D frames from a ROS 1 or ROS 2 bag (module docstring).

    Args:
        path: a ROS 1 ``.bag`` file, or a ROS 2 bag folder (or its ``.db3`` / ``.mcap`` file).
        rgb_topic, depth_topic, info_topic: colour, depth and CameraInfo topics.
        world_frame: TF frame the poses are expressed in (TF mode).
        camera_frame: the camera's optical frame; default: the CameraInfo's ``header.frame_id``.
        pose_topic: take poses from this topic instead of the TF tree.
        camera_extrinsic: 16 numbers, row-major 4x4 T_body_camera (body = the pose topic's child frame, camera =
            optical frame); default: looked up in the TF tree.
        max_time_diff: largest colour-depth header stamp difference in seconds.
        max_pose_gap: largest gap in seconds between the two pose (or TF) samples a frame's pose is interpolated
            from; frames in longer gaps are dropped and counted.
        depth_scale: 16-bit depth units per metre (1000 = millimetres, the ROS convention).
        undistort: undistort plumb_bob / rational_polynomial images with the CameraInfo's D (else only warn).
        frame_skip, rgb_resolution, depth_resolution: see :class:`PosedRGBDDataset`.

    Attributes:
        timestamps: (N,) float64 seconds (colour header stamps) of the associated frames, by raw index.
        dropped: {"no_depth": n, "no_pose": m} colour images that could not be associated.

    Raises:
        MissingExtraError (ImportError, RuntimeError): rosbags is missing (names the extra). FileNotFoundError: no bag. ValueError: a topic is
        missing (the message lists the bag's topics), unsupported encodings, no frame could be associated.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rgb_topic: str = "/camera/color/image_raw",
        depth_topic: str = "/camera/aligned_depth_to_color/image_raw",
        info_topic: str = "/camera/aligned_depth_to_color/camera_info",
        world_frame: str = "map",
        camera_frame: str | None = None,
        pose_topic: str | None = None,
        camera_extrinsic: Sequence[float] | None = None,
        max_time_diff: float = 0.02,
        max_pose_gap: float = 0.5,
        depth_scale: float = 1000.0,
        undistort: bool = True,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(
            frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution
        )
        _rosbags()
        self.path = Path(path).expanduser()
        self._paths = _bag_paths(self.path)
        self.scene_name = self.path.stem
        self.rgb_topic, self.depth_topic, self.info_topic = rgb_topic, depth_topic, info_topic
        self.world_frame, self.camera_frame, self.pose_topic = world_frame, camera_frame, pose_topic
        self.camera_extrinsic = list(camera_extrinsic) if camera_extrinsic is not None else None
        self.max_time_diff, self.depth_scale, self.undistort = (
            float(max_time_diff),
            float(depth_scale),
            bool(undistort),
        )
        self.max_pose_gap = float(max_pose_gap)
        if not self.max_time_diff > 0 or not self.depth_scale > 0 or not self.max_pose_gap > 0:
            raise ValueError(
                "max_time_diff, max_pose_gap and depth_scale must be > 0, got "
                f"{max_time_diff}, {max_pose_gap}, {depth_scale}"
            )
        self._reader = None
        self._undistort_maps: dict[tuple[int, int], Any] = {}
        self._index()

    # ------------------------------------------------------------------------------------------ indexing pass
    def _open(self):
        if self._reader is None:
            AnyReader, Stores, get_typestore = _rosbags()
            reader = AnyReader(self._paths, default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            reader.open()
            self._reader = reader
        return self._reader

    def close(self) -> None:
        """Closes the bag (it is reopened on the next frame read)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _connections(self, reader, topic: str, what: str, optional: bool = False):
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns and not optional:
            listed = ", ".join(
                f"{c.topic} ({c.msgtype})" for c in sorted(reader.connections, key=lambda c: c.topic)
            )
            raise ValueError(
                f"{self.path} has no {what} topic {topic!r}; set dataset.{what}_topic= one of: {listed}"
            )
        return conns

    def _index(self) -> None:
        reader = self._open()
        rgb_c = self._connections(reader, self.rgb_topic, "rgb")
        depth_c = self._connections(reader, self.depth_topic, "depth")
        info_c = self._connections(reader, self.info_topic, "info")
        pose_c = self._connections(reader, self.pose_topic, "pose") if self.pose_topic else []
        for c in pose_c:
            if c.msgtype not in POSE_TYPES:
                raise ValueError(
                    f"pose_topic {self.pose_topic} has type {c.msgtype}; supported: {', '.join(POSE_TYPES)}"
                )
        tf_c = [c for c in reader.connections if c.topic in TF_TOPICS]
        gap = int(round(self.max_time_diff * 1e9))
        self.tf = TFBuffer(max_gap_ns=int(round(self.max_pose_gap * 1e9)))
        streams = {self.rgb_topic: _Stream(), self.depth_topic: _Stream()}
        self._info = None
        pose_t: list[int] = []
        pose_m: list[np.ndarray] = []
        self._pose_child: str | None = None
        for conn, t, raw in reader.messages(connections=rgb_c + depth_c + info_c + pose_c + tf_c):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in TF_TOPICS:
                for tr in msg.transforms:
                    self.tf.add(tr.header.frame_id, tr.child_frame_id, _stamp_ns(tr.header.stamp),
                                _tf_matrix(tr.transform), static=conn.topic == "/tf_static")  # fmt: skip
            elif conn.topic in streams and conn.topic != self.info_topic:
                s = streams[conn.topic]
                s.stamps.append(_stamp_ns(msg.header.stamp))
                s.bag_times.append(int(t))
            if conn.topic == self.info_topic and self._info is None:
                self._info = msg
            if conn.topic == self.pose_topic:
                pose_t.append(_stamp_ns(msg.header.stamp))
                pose_m.append(self._pose_of(msg))
                self._pose_child = _frame_id(getattr(msg, "child_frame_id", "") or "") or self._pose_child
        if self._info is None:
            raise ValueError(f"{self.path}: topic {self.info_topic} holds no CameraInfo message")
        self._set_camera(self._info)
        if self.pose_topic:
            order = np.argsort(pose_t, kind="stable")
            self._pose_times = np.asarray(pose_t, np.int64)[order]
            self._pose_mats = np.stack(pose_m)[order] if pose_m else np.zeros((0, 4, 4))
            self._extrinsic = self._resolve_extrinsic()

        rgb_s, depth_s = streams[self.rgb_topic], streams[self.depth_topic]
        pairs = associate(np.asarray(rgb_s.stamps, np.int64), np.asarray(depth_s.stamps, np.int64), gap)
        self._frames: list[tuple[int, int, int, int, np.ndarray]] = []
        no_pose = 0
        for i, j in pairs:
            pose = self._pose_at(depth_s.stamps[j], self.tf.max_gap_ns)
            if pose is None:
                no_pose += 1
                continue
            self._frames.append(
                (rgb_s.stamps[i], rgb_s.bag_times[i], depth_s.stamps[j], depth_s.bag_times[j], pose)
            )
        self._frames.sort(key=lambda f: f[0])  # by colour header stamp (bag receive order may differ)
        self.dropped = {"no_depth": len(rgb_s.stamps) - len(pairs), "no_pose": no_pose}
        self.timestamps = np.array([f[0] for f in self._frames], dtype=np.int64) / 1e9
        if self.dropped["no_depth"] or no_pose:
            logger.warning(
                "%s: %d of %d colour images dropped: %d without a depth image within %.3f s, %d without a pose",
                self.path,
                sum(self.dropped.values()),
                len(rgb_s.stamps),
                self.dropped["no_depth"],
                self.max_time_diff,
                no_pose,
            )
        if not self._frames:
            hint = ""
            if no_pose and not self.pose_topic:
                frames = sorted(self.tf.frames)
                for name, frame in (("world_frame", self.world_frame), ("camera_frame", self.camera_frame)):
                    if frame not in frames:
                        hint += f"; {name} {frame!r} is not in the TF tree (frames: {', '.join(frames) or 'none'})"
            raise ValueError(
                f"{self.path}: no frame could be associated ({len(rgb_s.stamps)} colour, {len(depth_s.stamps)} depth "
                f"images; {self.dropped['no_depth']} without depth, {no_pose} without a pose); run "
                "ovmap check-data dataset=rosbag to see the topics, frames and rates" + hint
            )

    @staticmethod
    def _pose_of(msg: Any) -> np.ndarray:
        if hasattr(msg, "transform"):
            return _tf_matrix(msg.transform)
        p = msg.pose
        return _pose_matrix(p.pose if hasattr(p, "pose") else p)

    def _set_camera(self, info: Any) -> None:
        K = np.array(info.k if hasattr(info, "k") else info.K, dtype=np.float64).reshape(3, 3)
        D = np.array(info.d if hasattr(info, "d") else info.D, dtype=np.float64).reshape(-1)
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(
                f"{self.path}: CameraInfo on {self.info_topic} has an invalid K {K.reshape(-1).tolist()}"
            )
        self._K, self._D = K, D
        self._model = str(info.distortion_model)
        self._info_hw = (int(info.height), int(info.width))
        if self.camera_frame is None:
            self.camera_frame = _frame_id(info.header.frame_id)
        self._distorted = bool(np.any(np.abs(D) > 0))
        if self._distorted:
            can = self._model in ("plumb_bob", "rational_polynomial")
            logger.warning(
                "%s: CameraInfo has non-zero %s distortion %s; %s", self.path, self._model, D.tolist(),
                "images are undistorted (dataset.undistort=true)" if can and self.undistort
                else "images are used as they are (no undistortion)",
            )  # fmt: skip
            self._distorted = can and self.undistort

    def _resolve_extrinsic(self) -> np.ndarray:
        if self.camera_extrinsic is not None:
            T = np.asarray(self.camera_extrinsic, dtype=np.float64)
            if T.size != 16 or not np.allclose(T.reshape(4, 4)[3], [0, 0, 0, 1]):
                raise ValueError(
                    "camera_extrinsic must be 16 numbers (row-major 4x4, last row 0 0 0 1), "
                    f"got {self.camera_extrinsic}"
                )
            return T.reshape(4, 4)
        body = self._pose_child
        if body and self.tf.connected(body, self.camera_frame):
            return None  # looked up per frame (it may be time-stamped)
        raise ValueError(
            f"{self.path}: poses on {self.pose_topic} are of frame {body or '(unknown: no child_frame_id)'!r}; "
            "the TF tree "
            f"does not connect it to the camera frame {self.camera_frame!r}; set dataset.camera_extrinsic=[16 numbers] "
            "(row-major T_body_camera, camera = optical frame)"
        )

    def _pose_at(self, t: int, gap: int) -> np.ndarray | None:
        if not self.pose_topic:
            return self.tf.lookup(self.world_frame, self.camera_frame, t)
        T_wb = interpolate_pose(self._pose_times, self._pose_mats, t, gap)
        if T_wb is None:
            return None
        T_bc = (
            self._extrinsic
            if self._extrinsic is not None
            else self.tf.lookup(self._pose_child, self.camera_frame, t)
        )
        return None if T_bc is None else T_wb @ T_bc

    # ------------------------------------------------------------------------------------------------ frames
    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world (optical frame) poses of the associated frames."""
        return np.stack([f[4] for f in self._frames])

    def _extra_config(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rgb_topic": self.rgb_topic,
            "depth_topic": self.depth_topic,
            "info_topic": self.info_topic,
            "world_frame": self.world_frame,
            "camera_frame": self.camera_frame,
            "pose_topic": self.pose_topic,
            "camera_extrinsic": self.camera_extrinsic,
            "max_time_diff": self.max_time_diff,
            "max_pose_gap": self.max_pose_gap,
            "depth_scale": self.depth_scale,
            "undistort": self.undistort,
        }

    def _num_raw_frames(self) -> int:
        return len(self._frames)

    def _frame_source(self, raw_index: int) -> str:
        f = self._frames[raw_index]
        return (
            f"frame {raw_index} ({self.path}, {self.rgb_topic} @ {f[0] / 1e9:.6f} s, "
            f"{self.depth_topic} @ {f[2] / 1e9:.6f} s)"
        )

    def _message(self, topic: str, stamp: int, bag_time: int) -> tuple[Any, str]:
        reader = self._open()
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns, start=bag_time, stop=bag_time + 1):
            msg = reader.deserialize(raw, conn.msgtype)
            if _stamp_ns(msg.header.stamp) == stamp:
                return msg, conn.msgtype
        raise ValueError(f"{self.path}: message of {topic} stamped {stamp / 1e9:.6f} s vanished from the bag")

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rs, rb, ds, db, pose = self._frames[raw_index]
        rgb_msg, rgb_type = self._message(self.rgb_topic, rs, rb)
        depth_msg, depth_type = self._message(self.depth_topic, ds, db)
        rgb = decode_color(rgb_msg, rgb_type, self._frame_source(raw_index))
        depth = decode_depth(depth_msg, depth_type, self.depth_scale, self._frame_source(raw_index))
        if depth.shape != self._info_hw:
            raise ValueError(
                f"depth images on {self.depth_topic} are {depth.shape[0]}x{depth.shape[1]} but the CameraInfo on "
                f"{self.info_topic} is {self._info_hw[0]}x{self._info_hw[1]}; K must be at the depth resolution: "
                "set dataset.info_topic to the depth (aligned) camera's info"
            )
        if self._distorted:
            rgb, depth = self._undistort(rgb, depth)
        return {"rgb": rgb.transpose(2, 0, 1), "depth": depth, "pose": pose, "intrinsics": self._K}

    def _undistort(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        out = []
        for img, interp in ((rgb, cv2.INTER_LINEAR), (depth, cv2.INTER_NEAREST)):
            hw = img.shape[:2]
            if hw not in self._undistort_maps:
                K = self._K.copy()
                K[0] *= hw[1] / self._info_hw[1]
                K[1] *= hw[0] / self._info_hw[0]
                self._undistort_maps[hw] = cv2.initUndistortRectifyMap(
                    K, self._D, None, K, (hw[1], hw[0]), cv2.CV_32FC1
                )
            m1, m2 = self._undistort_maps[hw]
            out.append(cv2.remap(img, m1, m2, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        return out[0], out[1]


# ------------------------------------------------------------------------------------------------- decoding
def _image_array(msg: Any, dtype: np.dtype, channels: int, where: str) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * channels * dt.itemsize
    data = np.frombuffer(
        bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8
    )
    if step < row or data.size < step * h:
        raise ValueError(f"{where}: image data of {data.size} bytes does not hold {h} rows of step {step}")
    rows = data[: step * h].reshape(h, step)[:, :row]
    return np.ascontiguousarray(rows).view(dt).reshape(h, w, channels).astype(dt.newbyteorder("="))


def decode_color(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from an Image (rgb8, bgr8, rgba8, bgra8, mono8) or CompressedImage."""
    import cv2

    if msgtype.endswith("CompressedImage"):
        img = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{where}: cannot decode compressed colour image (format {msg.format!r})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    enc = str(msg.encoding).lower()
    table = {"rgb8": (3, None), "bgr8": (3, cv2.COLOR_BGR2RGB), "rgba8": (4, cv2.COLOR_RGBA2RGB),
             "bgra8": (4, cv2.COLOR_BGRA2RGB), "mono8": (1, cv2.COLOR_GRAY2RGB), "8uc3": (3, None)}  # fmt: skip
    if enc not in table:
        raise ValueError(
            f"{where}: colour encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8, mono8)"
        )
    ch, conv = table[enc]
    img = _image_array(msg, np.uint8, ch, where)
    img = img[..., 0] if ch == 1 else img
    if conv is not None:
        img = cv2.cvtColor(img, conv)
    return img.astype(np.float32) / 255.0


def decode_depth(msg: Any, msgtype: str, depth_scale: float, where: str) -> np.ndarray:
    """(H, W) float32 metres (0 = missing) from an Image 16UC1 / mono16 (/ depth_scale) or 32FC1, or a
    ``compressedDepth`` PNG (16UC1; the 12-byte configuration header of compressed_depth_image_transport first)."""
    import cv2

    if msgtype.endswith("CompressedImage"):
        buf = np.asarray(msg.data, np.uint8)
        if "compresseddepth" in str(msg.format).lower():
            buf = buf[12:]
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint16 or img.ndim != 2:
            raise ValueError(
                f"{where}: compressed depth (format {msg.format!r}) is not a 16-bit single-channel PNG"
            )
        return img.astype(np.float32) / np.float32(depth_scale)
    enc = str(msg.encoding).upper()
    if enc in ("16UC1", "MONO16"):
        return _image_array(msg, np.uint16, 1, where)[..., 0].astype(np.float32) / np.float32(depth_scale)
    if enc == "32FC1":
        d = _image_array(msg, np.float32, 1, where)[..., 0].copy()
        d[~np.isfinite(d)] = 0.0
        return d
    raise ValueError(
        f"{where}: depth encoding {msg.encoding!r} is not supported (16UC1 / mono16 in 1/depth_scale m, 32FC1 in m)"
    )


# --------------------------------------------------------------------------------------------------- writer
def write_rosbag(
    dataset: PosedRGBDDataset,
    path: str | os.PathLike,
    ros_version: int = 2,
    rate_hz: float = 30.0,
    poses: str = "tf",
    depth_encoding: str = "16UC1",
    rgb_encoding: str = "rgb8",
    storage: str = "sqlite3",
    start_s: float = 1_700_000_000.0,
    depth_offset_s: float = 0.0,
    distortion: Sequence[float] | None = None,
) -> Path:
    """Writes the kept frames of ``dataset`` as a RealSense-like bag (topics are :class:`RosbagDataset`'s defaults).

    Layout: frame i is stamped ``start_s + i / rate_hz`` (depth ``+ depth_offset_s``). Static TF
    ``base_link -> camera_link -> camera_color_optical_frame`` (camera_link 10 cm ahead and 20 cm above base_link
    and yawed 5 degrees; optical frame by REP 103). ``poses="tf"``: ``/tf`` holds ``map -> base_link`` at every frame
    stamp and halfway between frames; ``poses="odometry"``: ``/odom`` (``nav_msgs/Odometry``, frame ``odom``,
    child ``base_link``) at the same times. Depth as ``16UC1`` millimetres or ``32FC1`` metres (the 16-bit value
    / 1000, so both carry the same depths); colour as ``rgb8``, ``bgr8``, ``jpeg`` or ``png``. ``distortion``: the
    plumb_bob D (k1, k2, p1, p2, k3) written into CameraInfo (the images themselves are written unchanged).

    Returns the ROS 1 ``.bag`` file or the ROS 2 bag folder.
    """
    import cv2

    _, Stores, get_typestore = _rosbags()
    if ros_version == 1:
        from rosbags.rosbag1 import Writer
        from rosbags.typesys import get_types_from_msg

        ts = get_typestore(Stores.ROS1_NOETIC)
        if (
            "tf2_msgs/msg/TFMessage" not in ts.types
        ):  # the Noetic store lacks tf2_msgs; its definition is one field
            ts.register(
                get_types_from_msg("geometry_msgs/TransformStamped[] transforms", "tf2_msgs/msg/TFMessage")
            )
        writer = Writer(Path(path))
        ser = ts.serialize_ros1
    elif ros_version == 2:
        from rosbags.rosbag2 import StoragePlugin, Writer

        ts = get_typestore(Stores.ROS2_HUMBLE)
        plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
        writer = Writer(Path(path), version=9, storage_plugin=plugin)
        ser = ts.serialize_cdr
    else:
        raise ValueError(f"ros_version must be 1 or 2, got {ros_version}")
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Vec, Quat = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    Tr, TrS, TFM = (
        T["geometry_msgs/msg/Transform"],
        T["geometry_msgs/msg/TransformStamped"],
        T["tf2_msgs/msg/TFMessage"],
    )
    seq = [0]

    def header(ns: int, frame: str):
        stamp = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        if ros_version == 1:
            seq[0] += 1
            return Header(seq=seq[0], stamp=stamp, frame_id=frame)
        return Header(stamp=stamp, frame_id=frame)

    def tf_msg(M: np.ndarray):
        q = matrix_to_quat_xyzw(M[:3, :3])
        return Tr(
            translation=Vec(x=M[0, 3], y=M[1, 3], z=M[2, 3]), rotation=Quat(x=q[0], y=q[1], z=q[2], w=q[3])
        )

    yaw = np.deg2rad(5.0)
    T_base_link = np.eye(4)
    T_base_link[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    T_base_link[:3, 3] = [0.1, 0.0, 0.2]
    T_link_opt = np.eye(4)
    T_link_opt[:3, :3] = R_LINK_OPTICAL
    T_base_opt = T_base_link @ T_link_opt
    opt = "camera_color_optical_frame"
    topics = {
        "rgb": ("/camera/color/image_raw",
                "sensor_msgs/msg/CompressedImage" if rgb_encoding in ("jpeg", "png") else "sensor_msgs/msg/Image"),
        "depth": ("/camera/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image"),
        "info": ("/camera/aligned_depth_to_color/camera_info", "sensor_msgs/msg/CameraInfo"),
        "tf_static": ("/tf_static", "tf2_msgs/msg/TFMessage"),
        "pose": ("/tf", "tf2_msgs/msg/TFMessage") if poses == "tf" else ("/odom", "nav_msgs/msg/Odometry"),
    }  # fmt: skip
    if poses not in ("tf", "odometry"):
        raise ValueError(f"poses must be 'tf' or 'odometry', got {poses!r}")
    frames = [frame_to_arrays(f, 1000.0) for f in dataset]
    if not frames:
        raise ValueError("dataset has no frames to write")
    start_ns = int(round(start_s * 1e9))
    stamp = [start_ns + int(round(i * 1e9 / rate_hz)) for i in range(len(frames))]
    msgs: list[tuple[int, str, Any]] = []  # (bag time, key, message)
    st = TFM(transforms=[
        TrS(header=header(start_ns, "base_link"), child_frame_id="camera_link", transform=tf_msg(T_base_link)),
        TrS(header=header(start_ns, "camera_link"), child_frame_id=opt, transform=tf_msg(T_link_opt)),
    ])  # fmt: skip
    msgs.append((start_ns, "tf_static", st))
    Image, Info = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"]
    world = "map" if poses == "tf" else "odom"
    for i, a in enumerate(frames):
        ns, dns = stamp[i], stamp[i] + int(round(depth_offset_s * 1e9))
        h, w = a["rgb8"].shape[:2]
        if rgb_encoding in ("jpeg", "png"):
            ok, buf = cv2.imencode(
                "." + ("jpg" if rgb_encoding == "jpeg" else "png"), cv2.cvtColor(a["rgb8"], cv2.COLOR_RGB2BGR)
            )
            rgb_msg = T["sensor_msgs/msg/CompressedImage"](
                header=header(ns, opt), format=rgb_encoding, data=np.frombuffer(buf.tobytes(), np.uint8)
            )
        else:
            img = a["rgb8"] if rgb_encoding == "rgb8" else np.ascontiguousarray(a["rgb8"][..., ::-1])
            rgb_msg = Image(header=header(ns, opt), height=h, width=w, encoding=rgb_encoding, is_bigendian=0,
                            step=3 * w, data=img.reshape(-1))  # fmt: skip
        dh, dw = a["depth16"].shape
        if depth_encoding == "16UC1":
            draw, step = a["depth16"].astype("<u2").view(np.uint8).reshape(-1), 2 * dw
        elif depth_encoding == "32FC1":
            d32 = a["depth16"].astype(np.float32) / np.float32(1000.0)
            draw, step = d32.astype("<f4").view(np.uint8).reshape(-1), 4 * dw
        else:
            raise ValueError(f"depth_encoding must be 16UC1 or 32FC1, got {depth_encoding!r}")
        depth_msg = Image(header=header(dns, opt), height=dh, width=dw, encoding=depth_encoding, is_bigendian=0,
                          step=step, data=draw)  # fmt: skip
        K = a["K"]
        P = np.zeros((3, 4))
        P[:, :3] = K
        D = np.zeros(5) if distortion is None else np.asarray(distortion, dtype=np.float64)
        kw = {"d": D, "k": K.reshape(-1), "r": np.eye(3).reshape(-1), "p": P.reshape(-1)}
        if ros_version == 1:
            kw = {k.upper(): v for k, v in kw.items()}
        roi = T["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        info = Info(header=header(dns, opt), height=dh, width=dw, distortion_model="plumb_bob", binning_x=0,
                    binning_y=0, roi=roi, **kw)  # fmt: skip
        msgs += [(ns, "rgb", rgb_msg), (dns, "depth", depth_msg), (dns, "info", info)]
        T_wb = a["pose"] @ np.linalg.inv(T_base_opt)
        samples = [(dns, T_wb)]
        if i + 1 < len(
            frames
        ):  # a sample halfway to the next frame (slerp of the two), so TF is denser than images
            nxt = frames[i + 1]["pose"] @ np.linalg.inv(T_base_opt)
            t_next = stamp[i + 1] + int(round(depth_offset_s * 1e9))
            mid = (dns + t_next) // 2
            samples.append((mid, interpolate_pose(np.array([dns, t_next]), np.stack([T_wb, nxt]), mid)))
        for t_s, M in samples:
            if poses == "tf":
                pm = TFM(
                    transforms=[
                        TrS(header=header(t_s, world), child_frame_id="base_link", transform=tf_msg(M))
                    ]
                )
            else:
                q = matrix_to_quat_xyzw(M[:3, :3])
                point = T["geometry_msgs/msg/Point"](x=M[0, 3], y=M[1, 3], z=M[2, 3])
                pose = T["geometry_msgs/msg/Pose"](
                    position=point, orientation=Quat(x=q[0], y=q[1], z=q[2], w=q[3])
                )
                twist = T["geometry_msgs/msg/Twist"](
                    linear=Vec(x=0.0, y=0.0, z=0.0), angular=Vec(x=0.0, y=0.0, z=0.0)
                )
                pm = T["nav_msgs/msg/Odometry"](
                    header=header(t_s, world), child_frame_id="base_link",
                    pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                    twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
                )  # fmt: skip
            msgs.append((t_s, "pose", pm))
    msgs.sort(key=lambda m: m[0])
    with writer:
        conns = {k: writer.add_connection(topic, typ, typestore=ts) for k, (topic, typ) in topics.items()}
        for t_bag, key, msg in msgs:
            writer.write(conns[key], t_bag, ser(msg, topics[key][1]))
    return Path(path)


# ----------------------------------------------------------------------------------------------- check-data
def check_rosbag(path: str | os.PathLike, **options: Any) -> tuple[bool, str]:
    """Lists a bag's topics (type, count, rate) and what the configured reader would miss.

    Returns (ok, report text). ``options`` are :class:`RosbagDataset` arguments (topics, frames, ...).
    """
    AnyReader, Stores, get_typestore = _rosbags()
    p = Path(path).expanduser()
    lines = [f"ROS bag {p}"]
    with AnyReader(_bag_paths(p), default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        dur = max(reader.duration, 1) / 1e9
        lines.append(f"  duration {dur:.2f} s, {reader.message_count} messages")
        lines.append("  topics:")
        for topic, info in sorted(reader.topics.items()):
            rate = (info.msgcount - 1) / dur if info.msgcount > 1 else 0.0
            lines.append(f"    {topic:<48} {info.msgtype or '?':<40} {info.msgcount:>7} msgs {rate:8.2f} Hz")
        have = set(reader.topics)
    defaults = {
        k: v.default for k, v in __import__("inspect").signature(RosbagDataset.__init__).parameters.items()
    }
    wanted = {
        k: options.get(k, defaults[k]) for k in ("rgb_topic", "depth_topic", "info_topic", "pose_topic")
    }
    problems = [f"{k} {v!r} is not in the bag" for k, v in wanted.items() if v and v not in have]
    if not options.get("pose_topic") and not (have & set(TF_TOPICS)):
        problems.append(
            "no /tf or /tf_static topic: set dataset.pose_topic= (PoseStamped / Odometry) for poses"
        )
    if not problems:
        try:
            ds = RosbagDataset(p, **{k: v for k, v in options.items() if k in defaults})
            lines.append(
                f"  frames: {len(ds)} associated (colour {ds.rgb_topic}, depth {ds.depth_topic}); dropped "
                f"{ds.dropped['no_depth']} without depth within {ds.max_time_diff} s, "
                f"{ds.dropped['no_pose']} without a pose"
            )
            lines.append(
                f"  camera frame {ds.camera_frame!r}; TF frames: {', '.join(sorted(ds.tf.frames)) or '(none)'}"
            )
            if ds.dropped["no_pose"]:
                src = ds.pose_topic or f"TF {ds.world_frame} -> {ds.camera_frame}"
                problems.append(f"{ds.dropped['no_pose']} frame(s) have no pose ({src})")
        except ValueError as e:
            problems.append(str(e))
    lines.append("  missing / problems:" if problems else "  missing: nothing")
    lines += [f"    - {m}" for m in problems]
    return not problems, "\n".join(lines)
