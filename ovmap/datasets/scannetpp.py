"""ScanNet++ loader (``scannetpp``): DSLR frames, undistorted, with depth rendered from the laser-scan mesh.

Layout (``path`` = the ScanNet++ ``data/`` folder, or any root holding the scene folders)::

    <root>/<scene>/dslr/undistorted_images/<name>.JPG      RGB, undistorted pinhole (toolkit: dslr.undistort)
    <root>/<scene>/dslr/colmap/images.txt                  COLMAP: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME
                                                           (world-to-camera), one 2D-points line after each
    <root>/<scene>/dslr/colmap/cameras.txt                 COLMAP OPENCV_FISHEYE camera (fx fy cx cy k1 k2 k3 k4)
    <root>/<scene>/dslr/nerfstudio/transforms_undistorted.json   fl_x, fl_y, cx, cy, w, h of the pinhole camera
    <root>/<scene>/dslr/nerfstudio/transforms.json         fisheye camera (fallback when cameras.txt is missing)
    depth, one of (searched in this order):
      <root>/depth/<scene>/dslr/render_depth_undistorted/<name>.png   rendered for the undistorted pinhole camera
      <root>/<scene>/dslr/render_depth_undistorted/<name>.png
      <root>/depth/<scene>/dslr/render_depth/<name>.png     toolkit common.render (render_dslr: true): FISHEYE camera
      <root>/<scene>/dslr/render_depth/<name>.png
    <root>/<scene>/external_semseg_gt.pt                   external GT (vertices + top-100 labels), or dataset.gt_path

Depth is 16-bit PNG in mm (z-depth). The official renderer draws depth through the original OPENCV_FISHEYE camera
while ``undistorted_images`` are pinhole (spec §9.4.2). With fisheye depth (``depth_source = fisheye``, or ``auto``
when no undistorted depth is found) every frame's depth is resampled onto the undistorted pinhole grid with
**nearest** sampling: pinhole pixel (u, v) -> ray ((u - cx) / fx, (v - cy) / fy, 1) -> fisheye projection
(theta = atan(r), theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), OpenCV's model, integer
pixel centres as in the toolkit's cv2-based undistortion) -> the nearest fisheye depth pixel; pixels that project
outside the fisheye image get no depth. Both cameras share the pose (undistortion does not rotate), so z-depth is
carried over unchanged.

Frames: ``images.txt`` entries in ascending IMAGE_ID whose undistorted image exists (entries without an image are
counted in :attr:`skipped_images` and warned about); depth is paired by file stem. Poses: COLMAP gives world-to-camera
(R(q), t); the camera-to-world pose is [R^T | -R^T t].
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.folder import read_rgb, read_uint16
from ovmap.datasets.labels_io import (
    check_depth_scale,
    class_names_from_set,
    list_scenes,
    missing_scene_error,
    read_external_gt,
)
from ovmap.datasets.replica import resolve_gt_file
from ovmap.datasets.validation import check_intrinsics, depth_from_uint16
from ovmap.fileio import read_text

logger = logging.getLogger(__name__)

STEP_DATA = "download the scene's DSLR data (dslr/ with colmap/ and nerfstudio/) and mesh with the official ScanNet++ download script"
STEP_UNDISTORT = "run the ScanNet++ toolkit's DSLR undistortion (python -m dslr.undistort dslr/configs/undistort.yml)"
STEP_RENDER = (
    "render depth with the ScanNet++ toolkit (python -m common.render common/configs/render.yml with render_dslr: "
    "true and output_dir: <root>/depth), or render depth for the undistorted camera into render_depth_undistorted/"
)
STEP_GT = (
    "download external_semseg_gt.pt (link in RayFronts rayfronts/datasets/scannetpp_prep.md) or generate it with the "
    "toolkit's semantic/prep/prepare_training_data.py (top100 labels), and put it at <root>/<scene>/ or dataset.gt_path"
)
DEPTH_SOURCES = ("auto", "fisheye", "undistorted")


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (qw, qx, qy, qz) quaternion (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def colmap_w2c_to_c2w(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world from COLMAP's world-to-camera (qw, qx, qy, qz), (tx, ty, tz)."""
    R = quat_to_rotmat(qvec)
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ np.asarray(tvec, dtype=np.float64)
    return T


def read_colmap_images(path: Path) -> list[dict[str, Any]]:
    """Parses COLMAP ``images.txt``: [{id, qvec, tvec, camera_id, name}] sorted by image id."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (COLMAP poses of the DSLR images); {STEP_DATA}")
    lines = [ln for ln in read_text(path, "COLMAP images file").splitlines() if not ln.startswith("#")]
    out = []
    for j in range(0, len(lines), 2):
        ln = lines[j]
        if not ln.strip():
            continue
        parts = ln.split()
        try:
            if len(parts) < 10:
                raise ValueError
            entry = {
                "id": int(parts[0]),
                "qvec": np.array([float(v) for v in parts[1:5]]),
                "tvec": np.array([float(v) for v in parts[5:8]]),
                "camera_id": int(parts[8]),
                "name": " ".join(parts[9:]),
            }
        except ValueError:
            raise ValueError(
                f"{path}: malformed image line {ln[:80]!r} (expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                f"each followed by one 2D-points line)"
            ) from None
        out.append(entry)
    if not out:
        raise ValueError(f"{path} lists no images")
    ids = [e["id"] for e in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate IMAGE_IDs")
    return sorted(out, key=lambda e: e["id"])


def read_colmap_cameras(path: Path) -> dict[int, dict[str, Any]]:
    """Parses COLMAP ``cameras.txt``: {camera_id: {model, w, h, params}}."""
    cams = {}
    for ln in read_text(path, "COLMAP cameras file").splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        p = ln.split()
        try:
            cams[int(p[0])] = {"model": p[1], "w": int(p[2]), "h": int(p[3]), "params": [float(v) for v in p[4:]]}
        except (ValueError, IndexError):
            raise ValueError(f"{path}: malformed camera line {ln[:80]!r}") from None
    return cams


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_pinhole(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """K (3x3) and (h, w) of the undistorted camera from ``transforms_undistorted.json``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (undistorted camera intrinsics); {STEP_UNDISTORT}")
    d = _read_json(path)
    try:
        fx, fy, cx, cy = (float(d[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
        hw = (int(d["h"]), int(d["w"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: expected numbers fl_x, fl_y, cx, cy, w, h ({e})") from None
    if d.get("camera_model", "PINHOLE") not in ("PINHOLE", "OPENCV") or any(d.get(k, 0) for k in ("k1", "k2", "k3", "k4", "p1", "p2")):
        raise ValueError(f"{path}: the undistorted camera must be a pinhole camera without distortion")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64), hw


def read_fisheye(colmap_cameras: Path, transforms: Path, camera_id: int) -> dict[str, Any]:
    """The OPENCV_FISHEYE camera of the rendered depth: {fx, fy, cx, cy, k (4,), w, h}.

    Read from COLMAP ``cameras.txt`` (``camera_id``), else nerfstudio ``transforms.json``.
    """
    if colmap_cameras.is_file():
        cams = read_colmap_cameras(colmap_cameras)
        if camera_id not in cams:
            raise ValueError(f"{colmap_cameras} has no camera {camera_id} (used in images.txt)")
        c = cams[camera_id]
        if c["model"] != "OPENCV_FISHEYE" or len(c["params"]) != 8:
            raise ValueError(f"{colmap_cameras}: camera {camera_id} must be OPENCV_FISHEYE with 8 params, got {c['model']}")
        fx, fy, cx, cy, *k = c["params"]
        return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "k": np.array(k), "w": c["w"], "h": c["h"], "src": colmap_cameras}
    if transforms.is_file():
        d = _read_json(transforms)
        if d.get("camera_model", "OPENCV_FISHEYE") != "OPENCV_FISHEYE":
            raise ValueError(f"{transforms}: camera_model must be OPENCV_FISHEYE, got {d.get('camera_model')}")
        try:
            return {
                "fx": float(d["fl_x"]), "fy": float(d["fl_y"]), "cx": float(d["cx"]), "cy": float(d["cy"]),
                "k": np.array([float(d.get(f"k{i}", 0.0)) for i in range(1, 5)]), "w": int(d["w"]), "h": int(d["h"]),
                "src": transforms,
            }
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{transforms}: expected fl_x, fl_y, cx, cy, k1..k4, w, h ({e})") from None
    raise FileNotFoundError(
        f"fisheye depth needs the fisheye camera: missing {colmap_cameras} and {transforms}; {STEP_DATA}"
    )


def fisheye_project(x: np.ndarray, y: np.ndarray, cam: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Projects normalised pinhole coordinates (x, y) = (X/Z, Y/Z) with OpenCV's fisheye model; returns (u, v)."""
    r = np.hypot(x, y)
    theta = np.arctan(r)
    t2 = theta * theta
    k1, k2, k3, k4 = cam["k"]
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
    return cam["fx"] * x * scale + cam["cx"], cam["fy"] * y * scale + cam["cy"]


def fisheye_to_pinhole_index(K: np.ndarray, hw: tuple[int, int], cam: dict[str, Any]) -> np.ndarray:
    """(h, w) int64 flat index into the fisheye image of the nearest source pixel of each pinhole pixel; -1 = none."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    uf, vf = fisheye_project(x, y, cam)
    ui, vi = np.floor(uf + 0.5), np.floor(vf + 0.5)
    ok = (ui >= 0) & (ui < cam["w"]) & (vi >= 0) & (vi < cam["h"])
    idx = np.where(ok, vi * cam["w"] + ui, -1)
    return idx.astype(np.int64)


def undistort_depth(depth: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Resamples a fisheye depth image with an index map from :func:`fisheye_to_pinhole_index` (NaN = none)."""
    flat = depth.reshape(-1).astype(np.float32)
    out = np.where(index >= 0, flat[np.maximum(index, 0)], np.nan).astype(np.float32)
    return out


def _is_scannetpp_scene(p: Path) -> bool:
    return (p / "dslr").is_dir()


def find_depth_dir(root: Path, scene: str, source: str) -> tuple[Path | None, str]:
    """(folder, kind) of the rendered depth of ``scene``; kind is ``undistorted`` or ``fisheye``."""
    cands = []
    if source in ("auto", "undistorted"):
        cands += [(root / "depth" / scene / "dslr" / "render_depth_undistorted", "undistorted"),
                  (root / scene / "dslr" / "render_depth_undistorted", "undistorted")]
    if source in ("auto", "fisheye"):
        cands += [(root / "depth" / scene / "dslr" / "render_depth", "fisheye"),
                  (root / scene / "dslr" / "render_depth", "fisheye")]
    for folder, kind in cands:
        if folder.is_dir():
            return folder, kind
    return None, "undistorted" if source == "undistorted" else "fisheye"


@DATASETS.register("scannetpp")
class ScanNetPPDataset(PosedRGBDDataset):
    """One ScanNet++ scene's DSLR sequence (layout and depth handling in the module docstring).

    Ground truth for eval3d is external (``gt_source = "external"``): :meth:`gt_points` reads
    ``external_semseg_gt.pt`` (RayFronts' ``semseg_gt_xyz`` / ``semseg_gt_label`` = top-100 index + 1, or the
    toolkit's ``vtx_coords`` / ``vtx_labels``, shifted by +1). Class names: the shipped top-100 list.

    Args:
        path: the root holding the scene folders (and ``depth/`` when depth was rendered there).
        scene: scene id, e.g. ``bcd2436daf``.
        frame_skip, rgb_resolution, depth_resolution: as for every dataset (native 1168x1752).
        depth_source: ``auto`` (undistorted depth if found, else fisheye depth undistorted here), ``fisheye`` or
            ``undistorted``.
        depth_dir: explicit depth folder (then ``depth_source`` must be ``fisheye`` or ``undistorted``).
        gt_path: external GT file, or a folder with ``<scene>/external_semseg_gt.pt``; default
            ``<path>/<scene>/external_semseg_gt.pt``.
        depth_scale: depth PNG units per metre (1000).
        scenes: the protocol's scene list (ignored here).
    """

    gt_source = "external"

    def __init__(
        self,
        path: str | os.PathLike,
        scene: str = "bcd2436daf",
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
        depth_source: str = "auto",
        depth_dir: str | os.PathLike | None = None,
        gt_path: str | os.PathLike | None = None,
        depth_scale: float = 1000.0,
        scenes: Any = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        if depth_source not in DEPTH_SOURCES:
            raise ValueError(f"depth_source must be one of {', '.join(DEPTH_SOURCES)}, got {depth_source!r}")
        self.path = Path(path).expanduser()
        self.scene = self.scene_name = str(scene)
        self.depth_scale = float(depth_scale)
        self.gt_path = None if gt_path is None else str(gt_path)
        self.depth_source_arg = depth_source
        self.depth_dir_arg = None if depth_dir is None else str(depth_dir)
        root, dslr = self.path, self.path / self.scene / "dslr"
        if not root.is_dir() or not dslr.is_dir():
            raise missing_scene_error("ScanNet++", root, self.scene, list_scenes(root, _is_scannetpp_scene))
        img_dir = dslr / "undistorted_images"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"missing folder {img_dir}; {STEP_UNDISTORT}")
        self._K, self._hw = read_pinhole(dslr / "nerfstudio" / "transforms_undistorted.json")
        entries = read_colmap_images(dslr / "colmap" / "images.txt")

        if depth_dir is not None:
            if depth_source == "auto":
                raise ValueError("with depth_dir set, depth_source must be 'fisheye' or 'undistorted'")
            ddir, kind = Path(depth_dir).expanduser(), depth_source
            if not ddir.is_dir():
                raise FileNotFoundError(f"depth_dir {ddir} does not exist")
        else:
            ddir, kind = find_depth_dir(root, self.scene, depth_source)
            if ddir is None:
                raise FileNotFoundError(
                    f"no rendered depth for scene '{self.scene}': expected {root / 'depth' / self.scene / 'dslr'}/"
                    f"render_depth (fisheye) or render_depth_undistorted; {STEP_RENDER}"
                )
        self.depth_dir, self.depth_kind = ddir, kind

        images = {p.name: p for p in img_dir.iterdir() if p.is_file()}
        depths = {p.stem: p for p in ddir.iterdir() if p.suffix.lower() == ".png"}
        self.skipped_images: list[str] = []
        self._files: list[tuple[Path, Path]] = []
        poses, cams = [], set()
        for e in entries:
            img = images.get(e["name"]) or images.get(Path(e["name"]).name)
            if img is None:
                self.skipped_images.append(e["name"])
                continue
            dep = depths.get(Path(e["name"]).stem)
            if dep is None:
                raise FileNotFoundError(f"missing depth {ddir / (Path(e['name']).stem + '.png')} for {img}; {STEP_RENDER}")
            self._files.append((img, dep))
            poses.append(colmap_w2c_to_c2w(e["qvec"], e["tvec"]))
            cams.add(e["camera_id"])
        if self.skipped_images:
            logger.warning(
                "%s: %d of %d images listed in images.txt are not in %s and are skipped (e.g. %s)",
                self.scene, len(self.skipped_images), len(entries), img_dir, self.skipped_images[0],
            )
        if not self._files:
            raise FileNotFoundError(f"none of the images in {dslr / 'colmap' / 'images.txt'} is in {img_dir}")
        self._poses = np.stack(poses)
        self._set_invalid(self._poses, str(dslr / "colmap" / "images.txt"))
        self.class_names = class_names_from_set("scannetpp_top100")

        self._index = None
        if kind == "fisheye":
            if len(cams) != 1:
                raise ValueError(f"{self.scene}: images.txt uses {len(cams)} cameras; one DSLR camera expected")
            self.fisheye = read_fisheye(dslr / "colmap" / "cameras.txt", dslr / "nerfstudio" / "transforms.json", cams.pop())
            self._index = fisheye_to_pinhole_index(self._K, self._hw, self.fisheye)
            logger.info("%s: undistorting fisheye-rendered depth from %s (nearest)", self.scene, ddir)
        d = depth_from_uint16(read_uint16(self._files[0][1], "depth"), self.depth_scale)
        check_depth_scale(d, self._files[0][1], f"depth_scale {self.depth_scale}")
        check_intrinsics(self._K, self._hw, str(dslr / "nerfstudio" / "transforms_undistorted.json"))

    def gt_file(self) -> Path:
        """The path :meth:`gt_points` reads."""
        return resolve_gt_file(self.path, self.scene, self.gt_path)

    def gt_points(self) -> tuple[np.ndarray, np.ndarray]:
        """External GT: ((M, 3) float64 mesh vertices, (M,) int64 top-100 ids 1..100, 0 = ignore)."""
        f = self.gt_file()
        if not f.is_file():
            raise FileNotFoundError(f"missing external GT {f} for ScanNet++ scene '{self.scene}'; {STEP_GT}")
        return read_external_gt(f)

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of the frames (images.txt order, inverted)."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "scene": self.scene, "depth_source": self.depth_source_arg,
            "depth_dir": self.depth_dir_arg, "gt_path": self.gt_path, "depth_scale": self.depth_scale,
        }

    def _num_raw_frames(self) -> int:
        return len(self._files)

    def _frame_source(self, raw_index: int) -> str:
        return f"frame {raw_index} ({self._files[raw_index][0]}, {self._files[raw_index][1]})"

    def _intrinsics_source(self, raw_index: int) -> str:
        return str(self.path / self.scene / "dslr" / "nerfstudio" / "transforms_undistorted.json")

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rgb_f, depth_f = self._files[raw_index]
        rgb = read_rgb(rgb_f)
        if tuple(rgb.shape[1:]) != self._hw:
            raise ValueError(
                f"image {rgb_f} is {rgb.shape[1]}x{rgb.shape[2]} but transforms_undistorted.json says "
                f"{self._hw[0]}x{self._hw[1]}"
            )
        raw = depth_from_uint16(read_uint16(depth_f, "depth"), self.depth_scale)
        if self._index is not None:
            fh, fw = self.fisheye["h"], self.fisheye["w"]
            if raw.shape != (fh, fw):
                raise ValueError(
                    f"fisheye depth {depth_f} is {raw.shape[0]}x{raw.shape[1]} but the fisheye camera "
                    f"({self.fisheye['src']}) is {fh}x{fw}"
                )
            depth = undistort_depth(raw, self._index)
        else:
            if raw.shape != self._hw:
                raise ValueError(
                    f"undistorted depth {depth_f} is {raw.shape[0]}x{raw.shape[1]} but the undistorted camera is "
                    f"{self._hw[0]}x{self._hw[1]}"
                )
            depth = raw
        return {"rgb": rgb, "depth": depth[None], "pose": self._poses[raw_index], "intrinsics": self._K}
