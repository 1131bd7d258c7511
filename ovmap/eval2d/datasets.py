"""Readers for the five 2D open-vocabulary segmentation benchmarks in the layouts users download.

Each reader takes the folder MMSegmentation configs call ``data_root`` and yields, per validation image, a dict

    ``rgb``    (3, H, W) float32 in [0, 1], RGB;
    ``labels`` (H, W) int64 train ids in 0..K-1, 255 = ignore (after reduce-zero-label where the format has one);
    ``id``     the image id (file stem), ``image_path`` and ``label_path``.

Label PNGs are read as stored (Pillow): palette PNGs give palette indices, not colours. reduce-zero-label maps
0 -> 255, 255 -> 255 and v -> v - 1 otherwise (MMSegmentation: 0 -> 255, minus 1, 254 -> 255).
docs/eval2d.md says how to get and lay out each dataset.

Layouts (root = the folder below; images; labels; reduce-zero-label):

- voc20: ``VOCdevkit/VOC2012``; ``JPEGImages/<id>.jpg``; ``SegmentationClass/<id>.png`` with the ids of
  ``ImageSets/Segmentation/val.txt``; yes.
- context59: ``VOCdevkit/VOC2010``; ``JPEGImages/<id>.jpg``; ``SegmentationClassContext/<id>.png`` with the ids of
  ``ImageSets/SegmentationContext/val.txt``; yes.
- cocostuff: ``coco_stuff164k``; ``images/val2017/<id>.jpg``; ``annotations/val2017/<id>_labelTrainIds.png``; no.
- ade20k: ``ADEChallengeData2016``; ``images/validation/<id>.jpg``; ``annotations/validation/<id>.png``; yes.
- cityscapes: ``cityscapes``; ``leftImg8bit/val/<city>/<stem>_leftImg8bit.png``;
  ``gtFine/val/<city>/<stem>_gtFine_labelTrainIds.png``; no.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ovmap.registry import Registry

IGNORE_INDEX = 255
CLASSES_DIR = Path(__file__).resolve().parent / "classes"


@dataclass(frozen=True)
class DatasetSpec:
    """Where one benchmark keeps its validation images and labels, relative to its root."""

    name: str
    title: str               # the column name of the paper's Table 1
    num_classes: int
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None   # ids listed in this file (None = every label file under label_dir, recursively)
    reduce_zero_label: bool
    root_hint: str           # the usual name of the root folder
    download: str            # one line: where to get it / how to prepare it (docs/eval2d.md has the details)


SPECS: dict[str, DatasetSpec] = {
    "voc20": DatasetSpec(
        "voc20", "VOC", 20, "JPEGImages", "SegmentationClass", ".jpg", ".png",
        "ImageSets/Segmentation/val.txt", True, "VOCdevkit/VOC2012",
        "download VOCtrainval_11-May-2012.tar from the PASCAL VOC 2012 site and extract it (docs/eval2d.md)"),
    "context59": DatasetSpec(
        "context59", "CTX", 59, "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
        "ImageSets/SegmentationContext/val.txt", True, "VOCdevkit/VOC2010",
        "VOC2010 trainval + trainval_merged.json converted with MMSegmentation's pascal_context.py (docs/eval2d.md)"),
    "cocostuff": DatasetSpec(
        "cocostuff", "Stuff", 171, "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png",
        None, False, "coco_stuff164k",
        "COCO val2017 images + stuffthingmaps_trainval2017.zip converted with MMSegmentation's coco_stuff164k.py "
        "(docs/eval2d.md)"),
    "ade20k": DatasetSpec(
        "ade20k", "ADE", 150, "images/validation", "annotations/validation", ".jpg", ".png",
        None, True, "ade/ADEChallengeData2016",
        "download ADEChallengeData2016.zip (MIT scene parsing benchmark) and extract it (docs/eval2d.md)"),
    "cityscapes": DatasetSpec(
        "cityscapes", "City", 19, "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png",
        None, False, "cityscapes",
        "leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip, labelTrainIds made by cityscapesScripts' "
        "createTrainIdLabelImgs (docs/eval2d.md)"),
}

DATASETS2D: Registry[Callable[..., "SegDataset2D"]] = Registry("dataset2d")


def read_class_file(path: str | Path) -> list[list[str]]:
    """One class per line, synonyms separated by commas -> [[synonym, ...], ...] (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file {path} does not exist")
    rows = []
    for line in path.read_text().splitlines():
        names = [n.strip() for n in line.split(",") if n.strip()]
        if names:
            rows.append(names)
    return rows


def official_class_names(name: str) -> list[str]:
    """The official class names of benchmark ``name`` in train-id order (MMSegmentation's ``METAINFO``)."""
    return [row[0] for row in read_class_file(CLASSES_DIR / f"{_spec(name).name}_official.txt")]


def prompt_names(name: str, class_names: str = "reference") -> list[list[str]]:
    """Per class, the texts that are encoded: ``reference`` (the OVSS repositories' class-name files, with their
    synonyms), ``official`` (the official names) or a path to a file in the same one-line-per-class format."""
    spec = _spec(name)
    if class_names in ("reference", "official"):
        rows = read_class_file(CLASSES_DIR / f"{spec.name}_{class_names}.txt")
    else:
        rows = read_class_file(class_names)
    if len(rows) != spec.num_classes:
        raise ValueError(f"class-name file {class_names}: {len(rows)} classes, but {spec.name} has "
                         f"{spec.num_classes}: one line per class, synonyms separated by commas")
    return rows


def _spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise KeyError(f"unknown 2D dataset '{name}': choose one of {', '.join(SPECS)}")
    return SPECS[name]


def read_label_png(path: str | Path) -> np.ndarray:
    """Label image as stored: (H, W) uint8 (palette PNGs give indices). Raises ValueError on RGB label files."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"label image {path} has mode {img.mode}: expected a single-channel or palette PNG "
                             "of class ids (not the colour visualisation)")
        arr = np.asarray(img)
    if arr.max(initial=0) > 255:
        raise ValueError(f"label image {path} holds ids above 255")
    return arr.astype(np.uint8)


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """MMSegmentation's reduce-zero-label: 0 -> 255, 255 stays 255, any other v -> v - 1 (int64 out)."""
    out = labels.astype(np.int64) - 1
    out[labels == 0] = IGNORE_INDEX
    out[out == IGNORE_INDEX - 1] = IGNORE_INDEX
    return out


def read_train_ids(spec: DatasetSpec, path: str | Path) -> np.ndarray:
    """(H, W) int64 train ids in 0..K-1 or 255 of a label file; ValueError (naming the file) on other values."""
    raw = read_label_png(path)
    labels = reduce_zero_label(raw) if spec.reduce_zero_label else raw.astype(np.int64)
    bad = (labels != IGNORE_INDEX) & (labels >= spec.num_classes)
    if bad.any():
        raise ValueError(f"{spec.name}: label image {path} holds ids outside 0..{spec.num_classes - 1} and "
                         f"{IGNORE_INDEX} (e.g. raw value {int(raw[bad][0])}): labels must be train ids; convert "
                         "them as docs/eval2d.md describes")
    return labels


def read_rgb01(path: str | Path) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1] of an image file."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def list_pairs(spec: DatasetSpec, root: Path) -> list[tuple[str, Path, Path]]:
    """(id, image path, label path) of the validation split, sorted by id; the files may not exist.

    Ids come from the split file when the format has one, else from the label files found (recursively) under
    the label folder. Raises FileNotFoundError when the split file / label folder itself is missing.
    """
    label_root = root / spec.label_dir
    if spec.split_file is not None:
        split = root / spec.split_file
        if not split.is_file():
            raise FileNotFoundError(f"{spec.name}: split file {split} does not exist ({spec.download})")
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        pairs = [(i, root / spec.image_dir / f"{i}{spec.image_suffix}", label_root / f"{i}{spec.label_suffix}")
                 for i in ids]
    else:
        if not label_root.is_dir():
            raise FileNotFoundError(f"{spec.name}: label folder {label_root} does not exist ({spec.download})")
        pairs = []
        for label in label_root.rglob(f"*{spec.label_suffix}"):
            rel = label.relative_to(label_root)
            stem = rel.name[: -len(spec.label_suffix)]
            pairs.append((stem, root / spec.image_dir / rel.parent / f"{stem}{spec.image_suffix}", label))
    return sorted(pairs, key=lambda p: p[0])


class SegDataset2D:
    """The validation split of one benchmark (see the module docstring for the layouts).

    Args:
        name: voc20 | context59 | cocostuff | ade20k | cityscapes.
        path: the dataset root (MMSegmentation's ``data_root``).
        class_names: ``reference`` (class-name files with synonyms), ``official`` or a path to such a file.
        max_images: evaluate only the first N images (in sorted id order); null = all.
        image_ids: evaluate only these ids (file stems without suffix); null = all.
    """

    def __init__(self, name: str, path: str, class_names: str = "reference", max_images: int | None = None,
                 image_ids: list[str] | None = None) -> None:
        self.spec = _spec(name)
        self.name = self.spec.name
        self.root = Path(str(path)).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset folder {self.root} does not exist (expected the "
                                    f"'{self.spec.root_hint}' folder; {self.spec.download})")
        self.class_names = official_class_names(self.name)
        self.prompts = prompt_names(self.name, class_names)
        pairs = self._find_pairs()
        if image_ids is not None:
            wanted = [str(i) for i in image_ids]
            known = {p[0] for p in pairs}
            missing = [i for i in wanted if i not in known]
            if missing:
                raise ValueError(f"{self.name}: image ids not in the validation split: {missing[:5]}")
            keep = set(wanted)
            pairs = [p for p in pairs if p[0] in keep]
        if max_images is not None:
            pairs = pairs[: int(max_images)]
        if not pairs:
            raise ValueError(f"{self.name}: no validation images found under {self.root}; run "
                             f"`ovmap check-data dataset2d={self.name} dataset2d.path={self.root}`")
        self.items = pairs

    def _find_pairs(self) -> list[tuple[str, Path, Path]]:
        """(id, image path, label path) of every validation image, sorted by id; missing files raise."""
        pairs = list_pairs(self.spec, self.root)
        for ident, image, label in pairs:
            for what, p in (("image", image), ("label", label)):
                if not p.is_file():
                    raise FileNotFoundError(f"{self.name}: {what} of '{ident}' missing: {p} ({self.spec.download})")
        return pairs

    # --- access ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def read_labels(self, index: int) -> np.ndarray:
        """(H, W) int64 train ids, 255 = ignore."""
        return read_train_ids(self.spec, self.items[index][2])

    def __getitem__(self, index: int) -> dict[str, Any]:
        ident, image_path, label_path = self.items[index]
        rgb = read_rgb01(image_path)
        labels = self.read_labels(index)
        if tuple(rgb.shape[1:]) != labels.shape:
            raise ValueError(f"{self.name}: image {image_path} is {rgb.shape[2]}x{rgb.shape[1]} but its label "
                             f"{label_path} is {labels.shape[1]}x{labels.shape[0]}")
        return {"rgb": rgb, "labels": torch.from_numpy(labels), "id": ident, "index": index,
                "image_path": str(image_path), "label_path": str(label_path)}


def _register(name: str) -> None:
    DATASETS2D.register(name)(lambda **kw: SegDataset2D(name, **kw))


for _name in SPECS:
    _register(_name)


def build_dataset2d(name: str, **kwargs: Any) -> SegDataset2D:
    """The 2D benchmark registered as ``name`` (``configs/dataset2d/<name>.yaml``) with keyword arguments."""
    return DATASETS2D.get(name)(**kwargs)


# --- check-data ------------------------------------------------------------------------------------------------
def check_dataset2d(name: str, path: str, max_report: int = 20) -> tuple[list[str], int]:
    """Problems of a 2D benchmark folder (one line each, with how to fix it) and the number of complete images.

    Checks the root, the split file, every image/label pair and the label values of the first ``max_report``
    labels (ids must be train ids, not colours or raw ids).
    """
    spec = _spec(name)
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        return [f"missing folder {root} (the '{spec.root_hint}' folder): {spec.download}"], 0
    problems: list[str] = []
    try:
        pairs = list_pairs(spec, root)
    except FileNotFoundError as err:
        return [str(err)], 0
    complete = 0
    for ident, image, label in pairs:
        missing = [str(p) for p in (image, label) if not p.is_file()]
        if missing:
            problems.append(f"{ident}: missing {', '.join(missing)}")
        else:
            complete += 1
    if not pairs:
        problems.append(f"no validation labels (*{spec.label_suffix}) under {root / spec.label_dir}: {spec.download}")
    checked = 0
    for ident, _, label in pairs:
        if checked >= max_report or not label.is_file():
            continue
        checked += 1
        try:
            read_train_ids(spec, label)
        except ValueError as err:
            problems.append(str(err))
    return problems, complete
