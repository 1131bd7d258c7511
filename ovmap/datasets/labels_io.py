"""Shipped label sets and ground-truth file readers shared by the benchmark dataset loaders.

Label sets (package data under ``ovmap/datasets/labels/``, one class name per line, line i = id i + 1, names
verbatim from the datasets, eval3d_protocol.md §11):

    * ``replica101``: Replica's 101 classes (ids 1..101, ``habitat/info_semantic.json`` "classes");
    * ``nyu40``: ScanNet's NYU40 classes as spelled in ``scannetv2-labels.combined.tsv`` (ids 1..40, "refridgerator"
      kept; 38 otherstructure, 39 otherfurniture, 40 otherprop);
    * ``scannetpp_top100``: ScanNet++ ``metadata/semantic_benchmark/top100.txt`` (ids 1..100).

External GT files (``external_semseg_gt.pt``, as distributed for RayFronts): a torch-saved dict with ``semseg_gt_xyz``
(N, 3) and ``semseg_gt_label`` (N,) dataset class ids (possibly stored as floats), read with
``torch.load(weights_only=True)``. The ScanNet++ toolkit's own output (``vtx_coords`` / ``vtx_labels`` with labels
0..99 and -100 = ignore) is accepted too and shifted by +1 as RayFronts does.

Typical usage example:

    >>> from ovmap.datasets.labels_io import load_label_set
    >>> names = load_label_set("nyu40")
    >>> names[0], names[23], len(names)
    ('wall', 'refridgerator', 40)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ovmap.datasets.validation import LAST_ROW_TOL, MAX_PLAUSIBLE_DEPTH_M
from ovmap.fileio import read_checkpoint, read_text

logger = logging.getLogger(__name__)

LABELS_DIR = Path(__file__).resolve().parent / "labels"
LABEL_SETS = {"replica101": 101, "nyu40": 40, "scannetpp_top100": 100}


def load_label_set(name: str) -> list[str]:
    """Class names of a shipped label set; element i is the name of class id i + 1 (no ignore entry)."""
    if name not in LABEL_SETS:
        raise KeyError(f"unknown label set '{name}'; available: {', '.join(sorted(LABEL_SETS))}")
    names = [line.strip() for line in (LABELS_DIR / f"{name}.txt").read_text().splitlines() if line.strip()]
    if len(names) != LABEL_SETS[name]:  # pragma: no cover - guards the package data
        raise RuntimeError(f"label set {name} has {len(names)} names, expected {LABEL_SETS[name]}")
    return names


def class_names_from_set(name: str) -> list[str]:
    """``["ignore", <id 1>, <id 2>, ...]``: the ``class_names`` attribute of a dataset using a shipped set."""
    return ["ignore"] + load_label_set(name)


def class_names_from_id_map(id_to_name: dict[int, str]) -> list[str]:
    """``class_names`` (index = id, 0 = "ignore") from an {id: name} map; gaps are named ``class_<id>``."""
    n = max((i for i in id_to_name if i >= 1), default=0)
    return ["ignore"] + [id_to_name.get(i, f"class_{i}") for i in range(1, n + 1)]


def list_scenes(root: Path, is_scene) -> list[str]:
    """Sorted names of the sub-folders of ``root`` for which ``is_scene(folder)`` holds."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_scene(p))


def missing_scene_error(kind: str, root: Path, scene: str, found: list[str], hint: str = "") -> FileNotFoundError:
    """The error for a scene that is not in the dataset root: lists the scenes that are there."""
    if not root.is_dir():
        return FileNotFoundError(f"{kind} root {root} does not exist or is not a directory")
    there = ", ".join(found) if found else "none"
    return FileNotFoundError(f"scene '{scene}' not found in {kind} root {root}; scenes there: {there}{hint}")


def check_depth_scale(depth_m: np.ndarray, path: Path, scale_hint: str) -> None:
    """Raises ValueError when every valid depth of a frame exceeds 100 m (wrong depth scale)."""
    valid = depth_m[np.isfinite(depth_m) & (depth_m > 0)]
    if valid.size and valid.min() > MAX_PLAUSIBLE_DEPTH_M:
        raise ValueError(
            f"all valid depths of {path} exceed {MAX_PLAUSIBLE_DEPTH_M:.0f} m (min {valid.min():.1f} m) with "
            f"{scale_hint}; wrong depth scale or not a depth image?"
        )


def parse_matrix_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Reads a whitespace-separated matrix of ``shape`` (non-finite values such as -inf are kept)."""
    text = read_text(path, "matrix file")
    try:
        vals = np.array([float(x) for x in text.split()], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix of numbers") from None
    if vals.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: expected {shape[0] * shape[1]} numbers ({shape[0]}x{shape[1]}), got {vals.size}")
    return vals.reshape(shape)


def check_pose(pose: np.ndarray, where: str) -> bool:
    """True for a finite pose; False for a non-finite one; ValueError if a finite pose has a bad last row."""
    if not np.isfinite(pose).all():
        return False
    if np.abs(pose[3] - (0.0, 0.0, 0.0, 1.0)).max() > LAST_ROW_TOL:
        raise ValueError(f"{where}: last row of the pose must be [0 0 0 1], got {pose[3].tolist()}")
    return True


def split_trailing_number(scene: str) -> str:
    """``office0`` -> ``office_0`` (NICE-SLAM scene name -> Semantic-NeRF / Replica folder name)."""
    m = re.fullmatch(r"(.*?)_?(\d+)", scene)
    return f"{m.group(1)}_{m.group(2)}" if m else scene


def _safe_numpy_globals() -> list[Any]:
    import numpy.dtypes as nd

    core = getattr(np, "_core", None) or np.core  # numpy 2 / 1
    return [core.multiarray._reconstruct, np.ndarray, np.dtype] + [
        getattr(nd, n) for n in dir(nd) if n.endswith("DType")
    ]


def _as_numpy(x: Any) -> np.ndarray:
    import torch

    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def read_external_gt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads an ``external_semseg_gt.pt`` file: ((M, 3) float64 xyz, (M,) int64 dataset class ids).

    xyz stays float64 because the protocol computes GT voxel keys from the float64 coordinates (spec §7.1).

    Accepted contents (a dict, loaded with ``torch.load(weights_only=True)``; numpy arrays allowed):
        * ``semseg_gt_xyz`` (N, 3) and ``semseg_gt_label`` (N,) (RayFronts / HOV-SG patch; ids as they are);
        * ``vtx_coords`` (N, 3) and ``vtx_labels`` (N,) (ScanNet++ toolkit, 0..99, -100 = ignore): ids = label + 1.

    Float labels are cast to int64 only when every value is integral (else ValueError); labels < 0 become 0.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, missing keys, bad shapes, non-finite xyz or non-integral labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"external GT file {path} does not exist")
    data = read_checkpoint(
        path, "external GT file", "a torch-saved dict with semseg_gt_xyz (N, 3) and semseg_gt_label (N,)",
        safe_globals=_safe_numpy_globals(),
    )
    if not isinstance(data, dict):
        raise ValueError(f"external GT file {path} must hold a dict, got {type(data).__name__}")
    if "semseg_gt_xyz" in data and "semseg_gt_label" in data:
        xyz, label, shift = _as_numpy(data["semseg_gt_xyz"]), _as_numpy(data["semseg_gt_label"]), 0
    elif "vtx_coords" in data and "vtx_labels" in data:
        xyz, label, shift = _as_numpy(data["vtx_coords"]), _as_numpy(data["vtx_labels"]), 1
    else:
        raise ValueError(
            f"external GT file {path} must hold 'semseg_gt_xyz' and 'semseg_gt_label' (or the ScanNet++ toolkit's "
            f"'vtx_coords' and 'vtx_labels'), found keys {sorted(map(str, data))}"
        )
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.issubdtype(xyz.dtype, np.number):
        raise ValueError(f"{path}: GT xyz must be a numeric (N, 3) array, got {xyz.dtype} {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: GT xyz holds {int((~np.isfinite(xyz)).any(axis=1).sum())} non-finite points")
    label = label.reshape(-1) if label.ndim == 2 and label.shape[1] == 1 else label
    if label.shape != (len(xyz),):
        raise ValueError(f"{path}: GT labels have shape {label.shape}, expected ({len(xyz)},) to match xyz")
    if np.issubdtype(label.dtype, np.floating):
        bad = ~np.isfinite(label) | (label != np.round(label))
        if bad.any():
            raise ValueError(
                f"{path}: GT labels are {label.dtype} with {int(bad.sum())} non-integral values "
                f"(e.g. {label[bad][:3].tolist()}); class ids must be integers"
            )
    elif not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{path}: GT labels must be integer class ids, got dtype {label.dtype}")
    label = label.astype(np.int64) + shift
    label[label < 0] = 0
    return xyz.astype(np.float64), label
