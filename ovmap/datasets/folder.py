"""The ovmap folder format: a reader (:class:`FolderDataset`, registered as ``folder``) and a writer
(:func:`write_folder`) for any :class:`~ovmap.datasets.base.PosedRGBDDataset`.

Layout (docs/folder_format.md)::

    <scene>/
      intrinsics.txt    3x3 K in pixels for the depth images (whitespace separated)
      poses.txt         one line per frame: 16 numbers, row-major 4x4 camera-to-world, OpenCV axes, metres
      rgb/000000.png    8-bit RGB (.jpg / .jpeg accepted); frame i uses line i of poses.txt
      depth/000000.png  16-bit; metres = value / depth_scale; 0 and 65535 = no depth
      labels/000000.png optional, 16-bit (or 8-bit) class ids; 0 = unlabelled
      meta.yaml         optional: depth_scale (default 1000.0), classes {id: name} (ids >= 1), scene_name
      gt_points.npz     optional: xyz (M, 3) float, label (M,) integer class ids

Frames are paired by file stem (frame i <-> ``{i:06d}``), never by position in sorted listings.

Typical usage example:

    >>> from ovmap.datasets import SyntheticScene, FolderDataset, write_folder
    >>> write_folder(SyntheticScene(preset="test"), "/tmp/scene")  # doctest: +SKIP
    >>> ds = FolderDataset("/tmp/scene")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.validation import (
    MAX_PLAUSIBLE_DEPTH_M,
    check_intrinsics,
    check_intrinsics_matrix,
    depth_from_uint16,
)
from ovmap.fileio import atomic_write_bytes, load_npz, read_text

logger = logging.getLogger(__name__)

RGB_EXTS = (".png", ".jpg", ".jpeg")
DEFAULT_DEPTH_SCALE = 1000.0


def _cv2():
    import cv2

    return cv2


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _decode_image(path: Path, what: str) -> np.ndarray:
    """Reads and decodes an image file; ONE-line ``ValueError`` naming the file when it is unreadable, empty,
    truncated (a PNG without its IEND chunk, a JPEG without its end marker) or not decodable."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if not data:
        raise ValueError(f"{what} file {path} is empty (0 bytes)")
    if data.startswith(_PNG_MAGIC) and _PNG_END not in data[-4096:]:
        raise ValueError(f"{what} file {path} is truncated (PNG without its end chunk)")
    if data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-4096:]:
        raise ValueError(f"{what} file {path} is truncated (JPEG without its end marker)")
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode {what} file {path}: corrupt or not an image")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """Reads an 8-bit (or 16-bit) colour image as (3, H, W) float32 RGB in [0, 1]."""
    cv2 = _cv2()
    img = _decode_image(path, "image")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"RGB image {path} has unsupported dtype {img.dtype} (expected 8-bit)")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"RGB image {path} has {img.shape[2]} channels (expected 3)")
    return np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32) / scale


def read_uint16(path: Path, what: str, allow_uint8: bool = False) -> np.ndarray:
    """Reads a single-channel 16-bit PNG (8-bit too when ``allow_uint8``) as an (H, W) array."""
    img = _decode_image(path, what)
    if img.ndim != 2:
        raise ValueError(f"{what} file {path} must be single-channel, got shape {img.shape}")
    ok = (np.uint16, np.uint8) if allow_uint8 else (np.uint16,)
    if img.dtype not in ok:
        raise ValueError(
            f"{what} file {path} must be a 16-bit PNG{' (or 8-bit)' if allow_uint8 else ''}, got {img.dtype}"
        )
    return img


def read_intrinsics(path: Path) -> np.ndarray:
    """Parses a 3x3 whitespace-separated K (checked: finite, last row 0 0 1, fx, fy > 0)."""
    text = read_text(path, "intrinsics file")
    try:
        rows = [line.split() for line in text.splitlines() if line.strip()]
        K = np.array([[float(x) for x in r] for r in rows], dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: intrinsics must be a 3x3 matrix of numbers ({e})") from None
    if K.shape != (3, 3):
        raise ValueError(f"{path}: intrinsics must be a 3x3 matrix (3 lines of 3 numbers), got shape {K.shape}")
    return check_intrinsics_matrix(K, str(path))


def read_poses(path: Path) -> np.ndarray:
    """Parses poses.txt into (N, 4, 4) float64; non-finite values are kept (and counted by the dataset)."""
    lines = read_text(path, "poses file").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    poses = np.zeros((len(lines), 4, 4))
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) != 16:
            raise ValueError(f"{path} line {n}: expected 16 numbers (row-major 4x4 pose), got {len(parts)}")
        try:
            vals = np.array([float(x) for x in parts])
        except ValueError:
            raise ValueError(f"{path} line {n}: not a number in {line.strip()!r}") from None
        pose = vals.reshape(4, 4)
        if np.isfinite(vals).all() and not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-6):
            raise ValueError(f"{path} line {n}: last row of the pose must be [0 0 0 1], got {pose[3].tolist()}")
        poses[n - 1] = pose
    if len(poses) == 0:
        raise ValueError(f"{path} holds no poses")
    return poses


def read_meta(path: Path) -> dict[str, Any]:
    """Parses meta.yaml (optional): depth_scale, classes {id: name}, scene_name."""
    if not path.exists():
        return {"depth_scale": DEFAULT_DEPTH_SCALE, "classes": {}}
    text = read_text(path, "meta file")
    try:
        meta = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a mapping with depth_scale / classes")
    scale = meta.get("depth_scale", DEFAULT_DEPTH_SCALE)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: depth_scale must be a number, got {scale!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{path}: depth_scale must be > 0, got {scale}")
    classes_raw = meta.get("classes") or {}
    if isinstance(classes_raw, list):
        raise ValueError(f"{path}: classes must be a mapping {{id: name}} with ids >= 1, got a list")
    if not isinstance(classes_raw, dict):
        raise ValueError(f"{path}: classes must be a mapping {{id: name}}, got {type(classes_raw).__name__}")
    classes: dict[int, str] = {}
    for k, v in classes_raw.items():
        try:
            cid = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: class id {k!r} is not an integer") from None
        if cid != k and str(cid) != str(k).strip():
            raise ValueError(f"{path}: class id {k!r} is not an integer")
        if cid < 1:
            raise ValueError(f"{path}: class ids must be >= 1 (0 is reserved for unlabelled), got {k!r}")
        classes[cid] = str(v)
    return {"depth_scale": scale, "classes": classes, "scene_name": meta.get("scene_name")}


def read_gt_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Loads gt_points.npz: ((M, 3) float32 xyz, (M,) int64 labels); negative labels become 0 (ignore)."""
    arrays = load_npz(path, what="GT points file", required=("xyz", "label"))
    xyz, label = arrays["xyz"], arrays["label"]
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.issubdtype(xyz.dtype, np.number):
        raise ValueError(f"{path}: xyz must be a numeric (M, 3) array, got {xyz.dtype} {xyz.shape}")
    if label.shape != (len(xyz),):
        raise ValueError(f"{path}: label must have shape ({len(xyz)},) to match xyz, got {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.bool_)):
        if not np.issubdtype(label.dtype, np.floating):
            raise ValueError(f"{path}: label must hold integer class ids, got dtype {label.dtype}")
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            raise ValueError(f"{path}: label has dtype {label.dtype} with non-integral values; class ids must be integers")
    label = label.astype(np.int64)
    if (label < 0).any():
        logger.warning("%s: %d negative labels mapped to 0 (ignore)", path, int((label < 0).sum()))
        label = np.maximum(label, 0)
    return xyz.astype(np.float32), label


@DATASETS.register("folder")
class FolderDataset(PosedRGBDDataset):
    """A scene stored in the ovmap folder format (see the module docstring and docs/folder_format.md).

    The layout is checked when the dataset is built: every frame's rgb/depth (and labels, when ``labels/`` exists)
    file must exist, no image may lack a pose line, intrinsics must be a valid 3x3 K fitting the depth images, pose
    lines must have 16 numbers with a finite pose's last row [0 0 0 1], and the first depth image must be 16-bit
    with plausible values for the depth scale. Frames with an invalid pose (non-finite, not a rigid rotation) are
    skipped and counted (:meth:`num_invalid_poses`); rules in docs/validation.md.

    Args:
        path: the scene folder.
        frame_skip: keep raw frames with index % (frame_skip + 1) == 0.
        rgb_resolution: output RGB [H, W] or None (native).
        depth_resolution: output depth [H, W] or None (native).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        self.path = Path(path).expanduser()
        root = self.path
        if not root.is_dir():
            raise FileNotFoundError(f"folder dataset path {root} does not exist or is not a directory")
        for name in ("intrinsics.txt", "poses.txt"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"missing {root / name} (required by the ovmap folder format)")
        for name in ("rgb", "depth"):
            if not (root / name).is_dir():
                raise FileNotFoundError(f"missing folder {root / name} (required by the ovmap folder format)")
        self._K = read_intrinsics(root / "intrinsics.txt")
        self._poses = read_poses(root / "poses.txt")
        meta = read_meta(root / "meta.yaml")
        self.depth_scale: float = meta["depth_scale"]
        classes: dict[int, str] = meta["classes"]
        n_cls = max(classes, default=0)
        self.class_names = ["ignore"] + [classes.get(i, f"class_{i}") for i in range(1, n_cls + 1)]
        self.scene_name = str(meta.get("scene_name") or root.resolve().name)
        self._has_labels = (root / "labels").is_dir()

        n = len(self._poses)
        self._rgb_files = self._pair_files("rgb", RGB_EXTS, n)
        self._depth_files = self._pair_files("depth", (".png",), n)
        self._label_files = self._pair_files("labels", (".png",), n) if self._has_labels else None

        gt = root / "gt_points.npz"
        self._gt = read_gt_points(gt) if gt.is_file() else None

        # Sanity check of the depth scale and of K against the depth size on the first frame.
        d = depth_from_uint16(read_uint16(self._depth_files[0], "depth"), self.depth_scale)
        valid = d[np.isfinite(d)]
        if valid.size and valid.min() > MAX_PLAUSIBLE_DEPTH_M:
            raise ValueError(
                f"all valid depths of {self._depth_files[0]} exceed {MAX_PLAUSIBLE_DEPTH_M:.0f} m with depth_scale "
                f"{self.depth_scale} (min {valid.min():.1f} m); is depth_scale in meta.yaml wrong?"
            )
        check_intrinsics(self._K, d.shape, str(root / "intrinsics.txt"))
        self._set_invalid(self._poses, str(root / "poses.txt"))

    def _pair_files(self, sub: str, exts: tuple[str, ...], n: int) -> list[Path]:
        folder = self.path / sub
        by_stem: dict[str, list[Path]] = {}
        for p in folder.iterdir():
            if p.name.startswith(".") or not p.is_file():
                continue
            by_stem.setdefault(p.stem, []).append(p)
        files, extra_paths = [], []
        for i in range(n):
            stem = f"{i:06d}"
            found = by_stem.pop(stem, [])
            cands = [p for p in found if p.suffix.lower() in exts]
            extra_paths += [p for p in found if p.suffix.lower() not in exts]
            if not cands:
                raise FileNotFoundError(
                    f"missing {folder / (stem + exts[0])} for frame {i} (line {i + 1} of poses.txt; "
                    f"accepted extensions: {', '.join(exts)})"
                )
            if len(cands) > 1:
                raise ValueError(f"frame {i} has several {sub} files: {', '.join(sorted(map(str, cands)))}")
            files.append(cands[0])
        extra = sorted(str(p) for p in extra_paths + [p for ps in by_stem.values() for p in ps])
        if extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise ValueError(
                f"{folder} holds {len(extra)} file(s) without a matching line in poses.txt ({n} frames, expected "
                f"names 000000..{n - 1:06d}): {shown}"
            )
        return files

    # ------------------------------------------------------------------------------------------------ info
    @property
    def has_labels(self) -> bool:
        return self._has_labels

    def gt_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._gt is None:
            return None
        return self._gt[0].copy(), self._gt[1].copy()

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    # ---------------------------------------------------------------------------------------------- raw access
    def _num_raw_frames(self) -> int:
        return len(self._poses)

    def _frame_source(self, raw_index: int) -> str:
        names = [str(self._rgb_files[raw_index]), str(self._depth_files[raw_index])]
        if self._label_files is not None:
            names.append(str(self._label_files[raw_index]))
        return f"frame {raw_index} ({', '.join(names)})"

    def _intrinsics_source(self, raw_index: int) -> str:
        return str(self.path / "intrinsics.txt")

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rgb = read_rgb(self._rgb_files[raw_index])
        depth = depth_from_uint16(read_uint16(self._depth_files[raw_index], "depth"), self.depth_scale)
        frame = {"rgb": rgb, "depth": depth[None], "pose": self._poses[raw_index], "intrinsics": self._K}
        if self._label_files is not None:
            lab_path = self._label_files[raw_index]
            labels = read_uint16(lab_path, "labels", allow_uint8=True).astype(np.int64)
            if labels.shape != rgb.shape[1:]:
                raise ValueError(
                    f"labels file {lab_path} is {labels.shape[0]}x{labels.shape[1]} but the RGB image "
                    f"{self._rgb_files[raw_index]} is {rgb.shape[1]}x{rgb.shape[2]}"
                )
            frame["labels"] = labels[None]
        return frame


# ----------------------------------------------------------------------------------------------------- writer


def _encode_png(img: np.ndarray, path: Path) -> bytes:
    ok, buf = _cv2().imencode(".png", img)
    if not ok:  # pragma: no cover
        raise OSError(f"could not encode {path}")
    return buf.tobytes()


def write_folder(
    dataset: PosedRGBDDataset, path: str | os.PathLike, depth_scale: float = DEFAULT_DEPTH_SCALE, overwrite: bool = False
) -> Path:
    """Writes the kept frames of any dataset in the ovmap folder format; returns the scene folder.

    Frames are renumbered 0..len(dataset)-1 in iteration order (the source raw indices go to meta.yaml as
    ``source_indices``). RGB is stored as 8-bit PNG, depth as 16-bit PNG (value = round(metres * depth_scale);
    NaN, +-Inf and non-positive depths become 0; 65535 is reserved for "no depth" too, so the largest storable
    depth is 65534 / depth_scale), labels (when the dataset has labels) as 16-bit PNG, and
    ``gt_points.npz`` when the dataset provides GT points. Each file is written atomically (temporary name, then
    rename).

    Args:
        dataset: any PosedRGBDDataset; its output resolutions are what gets written.
        path: target folder; created if missing. Must be empty unless ``overwrite``.
        depth_scale: stored depth units per metre (1000 = millimetres).
        overwrite: replace the format's files in an existing folder.

    Raises:
        ValueError: a depth exceeds the 16-bit range at ``depth_scale``, intrinsics change between frames, or
            labels are outside [0, 65535].
        FileExistsError: ``path`` is not empty and ``overwrite`` is False.
    """
    depth_scale = float(depth_scale)
    if not math.isfinite(depth_scale) or depth_scale <= 0:
        raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
    root = Path(path).expanduser()
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace its contents")
        for sub in ("rgb", "depth", "labels"):
            shutil.rmtree(root / sub, ignore_errors=True)
        for name in ("intrinsics.txt", "poses.txt", "meta.yaml", "gt_points.npz"):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "rgb").mkdir()
    (root / "depth").mkdir()
    if dataset.has_labels:
        (root / "labels").mkdir()

    cv2 = _cv2()
    K0 = None
    pose_lines, indices = [], []
    max_m = 65534.0 / depth_scale
    for i, frame in enumerate(dataset):
        stem = f"{i:06d}"
        K = np.asarray(frame["intrinsics"], dtype=np.float64)
        if K0 is None:
            K0 = K
        elif not np.allclose(K, K0, rtol=1e-6, atol=1e-6):
            raise ValueError(f"intrinsics of frame {frame['index']} differ from frame 0; the folder format has one K")
        depth = np.asarray(frame["depth"], dtype=np.float64)[0]
        valid = np.isfinite(depth) & (depth > 0)
        if valid.any() and depth[valid].max() * depth_scale >= 65534.5:
            raise ValueError(
                f"depth {depth[valid].max():.3f} m in frame {frame['index']} exceeds the 16-bit range at "
                f"depth_scale {depth_scale} (max {max_m:.3f} m); use a smaller depth_scale"
            )
        d16 = np.where(valid, np.round(np.where(valid, depth, 0) * depth_scale), 0).astype(np.uint16)
        rgb = np.asarray(frame["rgb"], dtype=np.float64).transpose(1, 2, 0)
        rgb8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        atomic_write_bytes(root / "rgb" / f"{stem}.png", _encode_png(cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR), root))
        atomic_write_bytes(root / "depth" / f"{stem}.png", _encode_png(d16, root))
        if dataset.has_labels:
            lab = np.asarray(frame["labels"])[0]
            if lab.min() < 0 or lab.max() > 65535:
                raise ValueError(f"labels of frame {frame['index']} are outside [0, 65535]")
            atomic_write_bytes(root / "labels" / f"{stem}.png", _encode_png(lab.astype(np.uint16), root))
        pose = np.asarray(frame["pose"], dtype=np.float64).reshape(-1)
        pose_lines.append(" ".join(repr(float(x)) for x in pose))
        indices.append(int(frame["index"]))
    if K0 is None:
        raise ValueError("dataset has no frames to write")
    atomic_write_bytes(root / "poses.txt", ("\n".join(pose_lines) + "\n").encode())
    atomic_write_bytes(
        root / "intrinsics.txt", ("\n".join(" ".join(repr(float(x)) for x in row) for row in K0) + "\n").encode()
    )
    meta = {
        "depth_scale": depth_scale,
        "classes": {i: str(n) for i, n in enumerate(dataset.class_names) if i >= 1},
        "scene_name": dataset.scene_name,
        "source_indices": indices,
    }
    atomic_write_bytes(root / "meta.yaml", yaml.safe_dump(meta, sort_keys=False).encode())
    gt = dataset.gt_points()
    if gt is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, xyz=np.asarray(gt[0], np.float32), label=np.asarray(gt[1], np.int64))
        atomic_write_bytes(root / "gt_points.npz", buf.getvalue())
    logger.info("wrote %d frames of %s to %s", len(indices), dataset.scene_name, root)
    return root
