"""ScanNet loader (``scannet``): a scan exported by ScanNet's SensReader, with NYU40 labels from label-filt.

Layout::

    <root>/scannetv2-labels.combined.tsv                 raw ScanNet label id -> nyu40id (columns id, nyu40id, nyu40class)
    <root>/<scene>/color/<i>.jpg                          RGB (968x1296)
    <root>/<scene>/depth/<i>.png                          16-bit depth in mm (480x640); 0 = missing
    <root>/<scene>/pose/<i>.txt                           4x4 camera-to-world (OpenCV axes); some hold -inf
    <root>/<scene>/intrinsic/intrinsic_depth.txt          4x4, top-left 3x3 = K of the depth camera
    <root>/<scene>/<scene>_2d-label-filt/label-filt/<i>.png   16-bit raw ScanNet ids (optional; also <scene>/label-filt/)

Frames are the numeric file stems of ``color/`` in ascending order (SensReader writes 0..n-1); depth, pose and labels
are paired by that stem. Frames whose pose holds NaN / +-inf are skipped and counted (:meth:`num_invalid_poses`).
The colour and depth cameras are treated as registered after resizing (the protocol's approximation, spec §3.1).

Labels: raw id -> nyu40id through the tsv; ids missing from the tsv -> 0. With ``ignore_other_classes`` (default,
the protocol) NYU40 38 otherstructure, 39 otherfurniture and 40 otherprop become 0 and ``class_names`` holds the 37
prompted classes (ids 1..37, which are already contiguous); otherwise all 40. Ground truth for eval3d is lifted
from these labels (``gt_source = "lifted"``).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset
from ovmap.datasets.folder import read_rgb, read_uint16
from ovmap.datasets.labels_io import (
    check_depth_scale,
    check_pose,
    list_scenes,
    load_label_set,
    missing_scene_error,
    parse_matrix_file,
)
from ovmap.datasets.validation import check_intrinsics, check_intrinsics_matrix, depth_from_uint16

logger = logging.getLogger(__name__)

TSV_NAME = "scannetv2-labels.combined.tsv"
OTHER_CLASSES = ("otherstructure", "otherfurniture", "otherprop")
STEP_SENS = (
    "download the scan's .sens (download-scannet.py --id <scene> --type .sens) and export it with SensReader "
    "(python reader.py --filename <scene>.sens --output_path <root>/<scene> --export_color_images "
    "--export_depth_images --export_poses --export_intrinsics)"
)
STEP_LABELS = (
    "download <scene>_2d-label-filt.zip (download-scannet.py --id <scene> --type _2d-label-filt.zip) and unzip it "
    "into <root>/<scene>/<scene>_2d-label-filt/ so that label-filt/<i>.png exists"
)
STEP_TSV = "download scannetv2-labels.combined.tsv (download-scannet.py --label_map) and put it in the dataset root"


def read_label_map(path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """Parses ``scannetv2-labels.combined.tsv``: (LUT raw id -> nyu40id as int64 array, {nyu40id: nyu40class})."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (ScanNet label map); {STEP_TSV}")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not rows or not {"id", "nyu40id"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a tab-separated file with columns 'id' and 'nyu40id'")
    pairs, names = [], {}
    for n, r in enumerate(rows, start=2):
        try:
            rid, nid = int(r["id"]), int(r["nyu40id"] or 0)
        except (TypeError, ValueError):
            raise ValueError(f"{path} line {n}: id / nyu40id must be integers, got {r['id']!r} / {r['nyu40id']!r}") from None
        if rid < 0 or not 0 <= nid <= 40:
            raise ValueError(f"{path} line {n}: id must be >= 0 and nyu40id in 0..40, got {rid} / {nid}")
        pairs.append((rid, nid))
        if nid and r.get("nyu40class"):
            names.setdefault(nid, r["nyu40class"])
    lut = np.zeros(max(r for r, _ in pairs) + 1, dtype=np.int64)
    for rid, nid in pairs:
        lut[rid] = nid
    return lut, names


def _is_scannet_scene(p: Path) -> bool:
    return (p / "color").is_dir() or (p / "pose").is_dir()


def label_dir_of(scene_dir: Path) -> Path | None:
    """The label-filt folder of a scan, or None (``<scene>_2d-label-filt/label-filt`` or ``label-filt``)."""
    for cand in (scene_dir / f"{scene_dir.name}_2d-label-filt" / "label-filt", scene_dir / "label-filt"):
        if cand.is_dir():
            return cand
    return None


def numeric_stems(folder: Path, ext: str) -> dict[int, Path]:
    """{int(stem): path} for files ``<int>.<ext>`` in ``folder`` (other files ignored)."""
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() == ext and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


@DATASETS.register("scannet")
class ScanNetDataset(PosedRGBDDataset):
    """One ScanNet scan (SensReader export; layout in the module docstring).

    Args:
        path: the dataset root (holds the scan folders and scannetv2-labels.combined.tsv).
        scene: scan name, e.g. ``scene0011_00``.
        frame_skip: keep raw frames with index % (frame_skip + 1) == 0 (index = position in the sorted colour files).
        rgb_resolution: output RGB (and label) [H, W] or None (native 968x1296).
        depth_resolution: output depth [H, W] or None (native 480x640); intrinsics are scaled to it.
        labels: "auto" (labels when label-filt exists), True (required) or False (never read).
        label_map_file: path of scannetv2-labels.combined.tsv (default ``<path>/scannetv2-labels.combined.tsv``).
        ignore_other_classes: map NYU40 other* (38..40) to 0 and keep 37 classes (the protocol).
        depth_scale: depth PNG units per metre (1000).
        scenes: the protocol's scene list (ignored here).
        sens: read this raw ``.sens`` file instead of the export (:mod:`ovmap.datasets.scannet_sens`; also used when
            ``<path>/<scene>/<scene>.sens`` exists and ``color/`` does not). The instance is then a
            :class:`~ovmap.datasets.scannet_sens.ScanNetSensDataset` (no labels).

    Raises:
        FileNotFoundError: missing root, scene (lists the scans found), folder, intrinsics, tsv, or a frame's
            depth / pose / label file (named).
        ValueError: malformed pose / intrinsics / tsv, or a first depth image with all valid depths > 100 m.
    """

    gt_source = "lifted"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # dataset.sens=<file>, or <path>/<scene>/<scene>.sens without an exported color/ folder: read the raw file.
        sens = kwargs.get("sens")
        path = args[0] if args else kwargs.get("path")
        if sens is None and path is not None:
            sdir = Path(path).expanduser() / str(args[1] if len(args) > 1 else kwargs.get("scene", "scene0011_00"))
            cand = sdir / f"{sdir.name}.sens"
            sens = cand if cand.is_file() and not (sdir / "color").is_dir() else None
        if sens is None:
            return super().__new__(cls)
        from ovmap.datasets.scannet_sens import ScanNetSensDataset

        keep = ("scene", "frame_skip", "rgb_resolution", "depth_resolution")
        return ScanNetSensDataset(sens, **{k: v for k, v in kwargs.items() if k in keep})

    def __init__(
        self,
        path: str | os.PathLike,
        scene: str = "scene0011_00",
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
        labels: bool | str = "auto",
        label_map_file: str | os.PathLike | None = None,
        ignore_other_classes: bool = True,
        depth_scale: float = 1000.0,
        scenes: Any = None,
        sens: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        if path is None:
            raise ValueError("dataset=scannet needs dataset.path=<root> (SensReader export) or dataset.sens=<file.sens>")
        self.path = Path(path).expanduser()
        self.scene = self.scene_name = str(scene)
        self.depth_scale = float(depth_scale)
        self.ignore_other_classes = bool(ignore_other_classes)
        self.label_map_file = str(label_map_file) if label_map_file is not None else None
        if labels not in ("auto", True, False):
            raise ValueError(f"labels must be 'auto', true or false, got {labels!r}")
        self.labels_mode = labels
        root, sdir = self.path, self.path / self.scene
        if not root.is_dir() or not sdir.is_dir():
            raise missing_scene_error("ScanNet", root, self.scene, list_scenes(root, _is_scannet_scene))
        for sub in ("color", "depth", "pose"):
            if not (sdir / sub).is_dir():
                raise FileNotFoundError(f"missing folder {sdir / sub} of scan '{self.scene}'; {STEP_SENS}")
        kfile = sdir / "intrinsic" / "intrinsic_depth.txt"
        if not kfile.is_file():
            raise FileNotFoundError(f"missing {kfile}; {STEP_SENS}")
        K4 = parse_matrix_file(kfile, (4, 4))
        self._K = check_intrinsics_matrix(K4[:3, :3].copy(), str(kfile))
        self._kfile = kfile

        colors = numeric_stems(sdir / "color", ".jpg")
        if not colors:
            raise FileNotFoundError(f"{sdir / 'color'} holds no <i>.jpg images; {STEP_SENS}")
        self.frame_ids = sorted(colors)
        if self.frame_ids != list(range(len(self.frame_ids))):
            logger.warning(
                "%s: colour frame ids are not 0..%d (first %s, last %s); raw index = position in sorted order",
                sdir / "color", len(self.frame_ids) - 1, self.frame_ids[0], self.frame_ids[-1],
            )
        depths = numeric_stems(sdir / "depth", ".png")
        pose_files = numeric_stems(sdir / "pose", ".txt")
        self._files: list[tuple[Path, Path, Path]] = []
        for fid in self.frame_ids:
            if fid not in depths:
                raise FileNotFoundError(f"missing {sdir / 'depth' / f'{fid}.png'} for {colors[fid]}; {STEP_SENS}")
            if fid not in pose_files:
                raise FileNotFoundError(f"missing {sdir / 'pose' / f'{fid}.txt'} for {colors[fid]}; {STEP_SENS}")
            self._files.append((colors[fid], depths[fid], pose_files[fid]))
        poses = np.stack([parse_matrix_file(f[2], (4, 4)) for f in self._files])
        for f, pose in zip(self._files, poses):
            check_pose(pose, str(f[2]))
        self._poses = poses
        self._set_invalid(poses, f"{sdir / 'pose'}")

        # Labels.
        self._label_dir = label_dir_of(sdir) if labels is not False else None
        if labels is True and self._label_dir is None:
            raise FileNotFoundError(f"missing {sdir / f'{self.scene}_2d-label-filt' / 'label-filt'}; {STEP_LABELS}")
        self._label_files: list[Path] | None = None
        nyu = load_label_set("nyu40")
        self.class_names = ["ignore"] + (nyu[:37] if self.ignore_other_classes else nyu)
        if self._label_dir is not None:
            lab = numeric_stems(self._label_dir, ".png")
            missing = [fid for fid in self.frame_ids if fid not in lab]
            if missing:
                raise FileNotFoundError(
                    f"missing {self._label_dir / f'{missing[0]}.png'} ({len(missing)} label image(s) missing in "
                    f"{self._label_dir}); {STEP_LABELS}"
                )
            self._label_files = [lab[fid] for fid in self.frame_ids]
            tsv = Path(self.label_map_file).expanduser() if self.label_map_file else root / TSV_NAME
            lut, names = read_label_map(tsv)
            if self.ignore_other_classes:
                lut = np.where(lut > 37, 0, lut)
            self._lut = lut
            odd = {i: n for i, n in names.items() if 1 <= i <= 40 and n != nyu[i - 1]}
            if odd:
                logger.warning("%s: nyu40class names differ from the shipped NYU40 list: %s", tsv, odd)
        self._warned_label_resize = False

        d = depth_from_uint16(read_uint16(self._files[0][1], "depth"), self.depth_scale)
        check_depth_scale(d, self._files[0][1], f"depth_scale {self.depth_scale}")
        check_intrinsics(self._K, d.shape, str(kfile))

    @property
    def has_labels(self) -> bool:
        return self._label_files is not None

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames (non-finite ones included)."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "scene": self.scene, "labels": self.labels_mode,
            "label_map_file": self.label_map_file, "ignore_other_classes": self.ignore_other_classes,
            "depth_scale": self.depth_scale,
        }

    def _num_raw_frames(self) -> int:
        return len(self._files)

    def _frame_source(self, raw_index: int) -> str:
        names = list(map(str, self._files[raw_index]))
        if self._label_files is not None:
            names.append(str(self._label_files[raw_index]))
        return f"frame {raw_index} ({', '.join(names)})"

    def _intrinsics_source(self, raw_index: int) -> str:
        return str(self._kfile)

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        rgb_f, depth_f, _ = self._files[raw_index]
        rgb = read_rgb(rgb_f)
        depth = depth_from_uint16(read_uint16(depth_f, "depth"), self.depth_scale)
        frame = {"rgb": rgb, "depth": depth[None], "pose": self._poses[raw_index], "intrinsics": self._K}
        if self._label_files is not None:
            lab_f = self._label_files[raw_index]
            raw = read_uint16(lab_f, "label", allow_uint8=True).astype(np.int64)
            lab = self._lut[np.minimum(raw, len(self._lut) - 1)]
            lab[raw >= len(self._lut)] = 0
            if lab.shape != rgb.shape[1:]:
                import torch
                import torch.nn.functional as F

                if not self._warned_label_resize:
                    logger.warning(
                        "label image %s is %dx%d but colour image %s is %dx%d; labels are resized (nearest-exact)",
                        lab_f, *lab.shape, rgb_f, *rgb.shape[1:],
                    )
                    self._warned_label_resize = True
                t = torch.from_numpy(lab.astype(np.float64))[None, None]
                lab = F.interpolate(t, size=tuple(rgb.shape[1:]), mode="nearest-exact")[0, 0].numpy().astype(np.int64)
            frame["labels"] = lab[None]
        return frame
