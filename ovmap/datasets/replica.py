"""Replica loaders: the NICE-SLAM release (``replica``) and the Semantic-NeRF release (``replica_semnerf``).

NICE-SLAM layout (``download_replica.sh`` of NICE-SLAM; the RADSeg / RayFronts paper setting)::

    <root>/cam_params.json                      {"camera": {w, h, fx, fy, cx, cy, scale}}; 1200x680, scale 6553.5
    <root>/<scene>/traj.txt                     one line per frame: row-major 4x4 camera-to-world (OpenCV axes)
    <root>/<scene>/results/frame%06d.jpg        RGB (680x1200)
    <root>/<scene>/results/depth%06d.png        16-bit depth; metres = value / scale; 0 = missing
    <root>/<scene>/external_semseg_gt.pt        optional external GT (HOV-SG labels as re-hosted by RayFronts)
    <root>/semantic_info/<office_0>/info_semantic.json   optional class list (from the Semantic-NeRF release)

Scenes: office0 .. office4, room0 .. room2. Frame i is ``frame{i:06d}.jpg`` / ``depth{i:06d}.png`` / line i + 1 of
traj.txt (paired by name). Class names come from ``info_semantic.json`` when present, else the shipped 101-class list.

Semantic-NeRF layout::

    <root>/<scene>/<Sequence_k>/traj_w_c.txt    row-major 4x4 camera-to-world per line
    <root>/<scene>/<Sequence_k>/rgb/rgb_%d.png, depth/depth_%d.png (mm), semantic_class/semantic_class_%d.png
    <root>/semantic_info/<scene>/info_semantic.json      classes [{id, name}]

Scene ``office_0`` concatenates all of its sequences (in numeric order); ``office_0/Sequence_1`` selects one.
Intrinsics are the release's 90-degree horizontal FOV: fx = fy = W / 2, cx = W / 2, cy = H / 2 (spec §9.4.6).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.folder import read_poses, read_rgb, read_uint16
from ovmap.datasets.validation import check_intrinsics, depth_from_uint16
from ovmap.datasets.labels_io import (
    check_depth_scale,
    class_names_from_id_map,
    class_names_from_set,
    list_scenes,
    load_label_set,
    missing_scene_error,
    read_external_gt,
    split_trailing_number,
)

logger = logging.getLogger(__name__)

REPLICA_SCENES = ["office0", "office1", "office2", "office3", "office4", "room0", "room1", "room2"]
GT_FILE = "external_semseg_gt.pt"

STEP_NICE = "download NICE-SLAM's Replica (bash scripts/download_replica.sh in the NICE-SLAM repo) and unzip it"
STEP_SEMINFO = "copy semantic_info/ from the Semantic-NeRF Replica release into the root (optional: class names)"
STEP_GT = (
    "download the Replica external GT (HOV-SG labels re-hosted by RayFronts, link in RayFronts experiments/README.md) "
    "and put <scene>/external_semseg_gt.pt under the root or under dataset.gt_path"
)
STEP_SEMNERF = "download Semantic-NeRF's Replica release (Replica_Dataset) and unzip it"


def read_info_semantic(path: Path) -> dict[int, str]:
    """{id: name} from a Replica ``info_semantic.json`` ``classes`` list (id 0 / negative ids dropped)."""
    try:
        data = json.loads(path.read_text())
        classes = data["classes"]
        out = {int(c["id"]): str(c["name"]) for c in classes}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected a JSON object with 'classes': [{{id, name}}, ...] ({e})") from None
    return {i: n for i, n in out.items() if i >= 1}


def read_cam_params(path: Path) -> dict[str, float]:
    """NICE-SLAM ``cam_params.json``: {"camera": {w, h, fx, fy, cx, cy, scale}}."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (NICE-SLAM Replica camera parameters); {STEP_NICE}")
    try:
        cam = json.loads(path.read_text())["camera"]
        out = {k: float(cam[k]) for k in ("w", "h", "fx", "fy", "cx", "cy", "scale")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected {{'camera': {{w, h, fx, fy, cx, cy, scale}}}} ({e})") from None
    if not all(np.isfinite(list(out.values()))) or min(out["w"], out["h"], out["fx"], out["fy"], out["scale"]) <= 0:
        raise ValueError(f"{path}: camera parameters must be finite and positive, got {out}")
    return out


def resolve_gt_file(root: Path, scene: str, gt_path: str | os.PathLike | None) -> Path:
    """Where the external GT of ``scene`` is expected: ``gt_path`` (a file, or a folder holding
    ``<scene>/external_semseg_gt.pt`` or ``external_semseg_gt.pt``), else ``<root>/<scene>/external_semseg_gt.pt``."""
    if gt_path is None:
        return root / scene / GT_FILE
    p = Path(gt_path).expanduser()
    if p.is_dir():
        return p / scene / GT_FILE if (p / scene / GT_FILE).exists() or not (p / GT_FILE).exists() else p / GT_FILE
    return p


def _is_nice_scene(p: Path) -> bool:
    return (p / "traj.txt").is_file()


@DATASETS.register("replica")
class ReplicaDataset(PosedRGBDDataset):
    """One scene of NICE-SLAM's Replica (the paper setting; layout in the module docstring).

    Ground truth for eval3d is external (``gt_source = "external"``): :meth:`gt_points` reads
    ``external_semseg_gt.pt`` (float64 xyz, int64 Replica class ids; float ids must be integral, ids < 0 -> 0).

    Args:
        path: the NICE-SLAM Replica root (holds cam_params.json and the scene folders).
        scene: scene folder name, e.g. ``office0``.
        frame_skip: keep raw frames with index % (frame_skip + 1) == 0.
        rgb_resolution: output RGB [H, W] or None (native 680x1200).
        depth_resolution: output depth [H, W] or None (native); intrinsics are scaled to it.
        gt_path: external GT file, or a folder with ``<scene>/external_semseg_gt.pt``; default
            ``<path>/<scene>/external_semseg_gt.pt``.
        scenes: the protocol's scene list (used by eval / check-data; ignored here).

    Raises:
        FileNotFoundError: missing root, scene (the message lists the scenes found), cam_params.json, traj.txt or a
            frame's image (named).
        ValueError: malformed cam_params / traj.txt, images whose size differs from cam_params, files in results/
            without a pose line, or a first depth image whose valid depths all exceed 100 m (wrong scale).
    """

    gt_source = "external"

    def __init__(
        self,
        path: str | os.PathLike,
        scene: str = "office0",
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
        gt_path: str | os.PathLike | None = None,
        scenes: Any = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        self.path = Path(path).expanduser()
        self.scene = str(scene)
        self.scene_name = self.scene
        self.gt_path = None if gt_path is None else str(gt_path)
        root, sdir = self.path, self.path / self.scene
        if not root.is_dir() or not _is_nice_scene(sdir):
            if root.is_dir() and sdir.is_dir():
                raise FileNotFoundError(f"missing {sdir / 'traj.txt'} (scene '{self.scene}'); {STEP_NICE}")
            raise missing_scene_error("Replica (NICE-SLAM)", root, self.scene, list_scenes(root, _is_nice_scene))
        cam = read_cam_params(root / "cam_params.json")
        self.cam = cam
        self.depth_scale = cam["scale"]
        self._K = np.array([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1]], dtype=np.float64)
        self._hw = (int(round(cam["h"])), int(round(cam["w"])))
        self._poses = read_poses(sdir / "traj.txt")
        n = len(self._poses)
        results = sdir / "results"
        if not results.is_dir():
            raise FileNotFoundError(f"missing folder {results} (RGB and depth of scene '{self.scene}'); {STEP_NICE}")
        names = {p.name for p in results.iterdir() if p.is_file()}
        self._rgb_files, self._depth_files = [], []
        for i in range(n):
            rgb = next((f"frame{i:06d}{e}" for e in (".jpg", ".png", ".jpeg") if f"frame{i:06d}{e}" in names), None)
            if rgb is None:
                raise FileNotFoundError(f"missing {results / f'frame{i:06d}.jpg'} for line {i + 1} of traj.txt")
            if f"depth{i:06d}.png" not in names:
                raise FileNotFoundError(f"missing {results / f'depth{i:06d}.png'} for line {i + 1} of traj.txt")
            self._rgb_files.append(results / rgb)
            self._depth_files.append(results / f"depth{i:06d}.png")
        extra = sorted(
            nm for nm in names if (m := re.fullmatch(r"(?:frame|depth)(\d+)\.\w+", nm)) and int(m.group(1)) >= n
        )
        if extra:
            raise ValueError(
                f"{results} holds {len(extra)} frame file(s) without a line in {sdir / 'traj.txt'} ({n} lines), "
                f"e.g. {', '.join(extra[:3])}"
            )
        self._set_invalid(self._poses, str(sdir / "traj.txt"))

        info = root / "semantic_info" / split_trailing_number(self.scene) / "info_semantic.json"
        if info.is_file():
            id_to_name = read_info_semantic(info)
            self.class_names = class_names_from_id_map(id_to_name)
            if self.class_names[1:] != load_label_set("replica101"):
                logger.info("%s: class names differ from the shipped Replica list; using the file's", info)
        else:
            self.class_names = class_names_from_set("replica101")

        # The first depth image: size and scale checks.
        d = read_uint16(self._depth_files[0], "depth")
        if d.shape != self._hw:
            raise ValueError(
                f"depth image {self._depth_files[0]} is {d.shape[0]}x{d.shape[1]} but {root / 'cam_params.json'} "
                f"says {self._hw[0]}x{self._hw[1]}"
            )
        check_depth_scale(
            depth_from_uint16(d, self.depth_scale), self._depth_files[0], f"scale {self.depth_scale} from cam_params.json"
        )
        check_intrinsics(self._K, self._hw, str(root / "cam_params.json"))

    # ------------------------------------------------------------------------------------------------ info
    def gt_file(self) -> Path:
        """The path :meth:`gt_points` reads."""
        return resolve_gt_file(self.path, self.scene, self.gt_path)

    def gt_points(self) -> tuple[np.ndarray, np.ndarray]:
        """External GT: ((M, 3) float64 xyz, (M,) int64 Replica class ids, 0 = unlabelled).

        Raises:
            FileNotFoundError: the GT file is missing (the message says where to get it).
            ValueError: malformed file or non-integral labels.
        """
        f = self.gt_file()
        if not f.is_file():
            raise FileNotFoundError(f"missing external GT {f} for Replica scene '{self.scene}'; {STEP_GT}")
        return read_external_gt(f)

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames (non-finite ones included)."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {"path": str(self.path), "scene": self.scene, "gt_path": self.gt_path}

    # ---------------------------------------------------------------------------------------------- raw access
    def _num_raw_frames(self) -> int:
        return len(self._poses)

    def _frame_source(self, raw_index: int) -> str:
        return f"frame {raw_index} ({self._rgb_files[raw_index]}, {self._depth_files[raw_index]})"

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rgb = read_rgb(self._rgb_files[raw_index])
        depth = depth_from_uint16(read_uint16(self._depth_files[raw_index], "depth"), self.depth_scale)
        for what, f, hw in (("RGB", self._rgb_files[raw_index], rgb.shape[1:]), ("depth", self._depth_files[raw_index], depth.shape)):
            if tuple(hw) != self._hw:
                raise ValueError(
                    f"{what} image {f} is {hw[0]}x{hw[1]} but cam_params.json says {self._hw[0]}x{self._hw[1]}"
                )
        return {"rgb": rgb, "depth": depth[None], "pose": self._poses[raw_index], "intrinsics": self._K}

    def _intrinsics_source(self, raw_index: int) -> str:
        return str(self.path / "cam_params.json")


def _seq_number(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def _is_semnerf_scene(p: Path) -> bool:
    return any((s / "traj_w_c.txt").is_file() for s in p.iterdir() if s.is_dir())


@DATASETS.register("replica_semnerf")
class ReplicaSemanticNerfDataset(PosedRGBDDataset):
    """One scene (all sequences, or one) of Semantic-NeRF's Replica release, with per-pixel class ids.

    Labels are the ``semantic_class`` PNG values (Replica class ids, 0 = unlabelled) at RGB resolution; class names
    from ``<root>/semantic_info/<scene>/info_semantic.json`` when present, else the shipped 101-class list. Ground
    truth for eval3d is lifted from these labels (``gt_source = "lifted"``).

    Args:
        path: the Semantic-NeRF Replica root (``Replica_Dataset``).
        scene: ``office_0`` (every ``Sequence_*`` in numeric order, concatenated) or ``office_0/Sequence_1``.
            NICE-SLAM-style names (``office0``) are accepted.
        frame_skip, rgb_resolution, depth_resolution: as for every dataset.
        depth_scale: depth PNG units per metre (1000).
        scenes: the protocol's scene list (ignored here).
    """

    gt_source = "lifted"

    def __init__(
        self,
        path: str | os.PathLike,
        scene: str = "office_0",
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
        depth_scale: float = 1000.0,
        scenes: Any = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        self.path = Path(path).expanduser()
        self.scene = str(scene)
        self.depth_scale = float(depth_scale)
        root = self.path
        base, _, seq = self.scene.partition("/")
        if not (root / base).is_dir() and (root / split_trailing_number(base)).is_dir():
            base = split_trailing_number(base)
        sdir = root / base
        if not root.is_dir() or not sdir.is_dir() or not _is_semnerf_scene(sdir):
            raise missing_scene_error("Replica (Semantic-NeRF)", root, base, list_scenes(root, _is_semnerf_scene))
        if seq:
            if not (sdir / seq / "traj_w_c.txt").is_file():
                seqs = sorted(p.name for p in sdir.iterdir() if (p / "traj_w_c.txt").is_file())
                raise FileNotFoundError(f"sequence '{seq}' not found in {sdir}; sequences there: {', '.join(seqs)}")
            seq_dirs = [sdir / seq]
        else:
            seq_dirs = sorted(
                (p for p in sdir.iterdir() if (p / "traj_w_c.txt").is_file()), key=lambda p: (_seq_number(p.name), p.name)
            )
        self.scene_name = self.scene.replace("/", "_")
        poses, self._files = [], []
        for sq in seq_dirs:
            sp = read_poses(sq / "traj_w_c.txt")
            poses.append(sp)
            listing = {sub: {p.name for p in (sq / sub).iterdir()} if (sq / sub).is_dir() else set()
                       for sub in ("rgb", "depth", "semantic_class")}
            for i in range(len(sp)):
                row = []
                for sub, name in (("rgb", f"rgb_{i}.png"), ("depth", f"depth_{i}.png"),
                                  ("semantic_class", f"semantic_class_{i}.png")):
                    if name not in listing[sub]:
                        raise FileNotFoundError(
                            f"missing {sq / sub / name} for line {i + 1} of {sq / 'traj_w_c.txt'}; {STEP_SEMNERF}"
                        )
                    row.append(sq / sub / name)
                self._files.append(tuple(row))
            extra = sorted(
                f"{sub}/{nm}" for sub, names in listing.items() for nm in names
                if (m := re.fullmatch(r"\D+_(\d+)\.png", nm)) and int(m.group(1)) >= len(sp)
            )
            if extra:
                raise ValueError(
                    f"{sq} holds {len(extra)} image(s) without a line in traj_w_c.txt ({len(sp)} lines), "
                    f"e.g. {', '.join(extra[:3])}"
                )
        self._poses = np.concatenate(poses)
        self._set_invalid(self._poses, str(sdir))
        info = root / "semantic_info" / base / "info_semantic.json"
        self.class_names = (
            class_names_from_id_map(read_info_semantic(info)) if info.is_file() else class_names_from_set("replica101")
        )
        d = depth_from_uint16(read_uint16(self._files[0][1], "depth"), self.depth_scale)
        check_depth_scale(d, self._files[0][1], f"depth_scale {self.depth_scale}")
        h, w = d.shape
        self._K = np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1]], dtype=np.float64)

    @property
    def has_labels(self) -> bool:
        return True

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames (non-finite ones included)."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {"path": str(self.path), "scene": self.scene, "depth_scale": self.depth_scale}

    def _num_raw_frames(self) -> int:
        return len(self._poses)

    def _frame_source(self, raw_index: int) -> str:
        return f"frame {raw_index} ({', '.join(map(str, self._files[raw_index]))})"

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rgb_f, depth_f, lab_f = self._files[raw_index]
        rgb = read_rgb(rgb_f)
        depth = depth_from_uint16(read_uint16(depth_f, "depth"), self.depth_scale)
        if depth.shape != rgb.shape[1:]:
            raise ValueError(f"depth image {depth_f} is {depth.shape} but RGB image {rgb_f} is {rgb.shape[1:]}")
        labels = read_uint16(lab_f, "semantic_class", allow_uint8=True).astype(np.int64)
        if labels.shape != rgb.shape[1:]:
            raise ValueError(f"label image {lab_f} is {labels.shape} but RGB image {rgb_f} is {rgb.shape[1:]}")
        if labels.max(initial=0) > self.num_classes:
            raise ValueError(f"label image {lab_f} holds class id {int(labels.max())} > {self.num_classes} classes")
        h, w = depth.shape
        K = self._K if (h, w) == (self._K[1, 2] * 2, self._K[0, 2] * 2) else None
        if K is None:
            raise ValueError(f"depth image {depth_f} is {h}x{w}, unlike the first frame of scene '{self.scene}'")
        return {"rgb": rgb, "depth": depth[None], "pose": self._poses[raw_index], "intrinsics": K, "labels": labels[None]}
