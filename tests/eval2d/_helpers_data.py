"""Miniature copies of the five 2D benchmarks in their real on-disk layouts (written by the tests).

Each copy holds a few tiny validation images plus decoys the readers must skip (training images, images labelled
but not listed in the split file, the raw-id / colour label files beside the train-id ones). ``write_mini``
returns, per validation id in sorted order, the train-id label map (after reduce-zero-label; 255 = ignore) that
the reader must produce: it is computed here from the raw values written, independently of the reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = {"voc20": 20, "context59": 59, "cocostuff": 171, "ade20k": 150, "cityscapes": 19}
SIZES = [(24, 32), (32, 24), (20, 36)]  # (H, W): landscape, portrait, wide


def _raw_labels(rng: np.random.Generator, hw: tuple[int, int], num_raw: int, ignore: int | None) -> np.ndarray:
    """Blocky raw label map: four quadrants of random raw ids, a 2-pixel ``ignore`` border on one side."""
    h, w = hw
    arr = np.zeros(hw, dtype=np.uint8)
    ids = rng.choice(num_raw, size=4, replace=False)
    arr[: h // 2, : w // 2], arr[: h // 2, w // 2:] = ids[0], ids[1]
    arr[h // 2:, : w // 2], arr[h // 2:, w // 2:] = ids[2], ids[3]
    if ignore is not None:
        arr[:, :2] = ignore
    return arr


def _image(rng: np.random.Generator, raw: np.ndarray) -> np.ndarray:
    """An RGB image whose colour follows the label (plus noise), so that encoders see structure."""
    palette = rng.integers(0, 256, size=(256, 3))
    img = palette[raw].astype(np.float64) + rng.normal(0, 8, size=(*raw.shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="L")
    if palette:
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 151) % 256)])
    img.save(path)


def _save_rgb(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)


def _reduce(raw: np.ndarray) -> np.ndarray:
    out = raw.astype(np.int64) - 1
    out[raw == 0] = 255
    out[raw == 255] = 255
    return out


def write_mini(name: str, root: Path, num_images: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the miniature copy of benchmark ``name`` under ``root``; {val id: expected train-id labels}."""
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    expected: dict[str, np.ndarray] = {}
    root.mkdir(parents=True, exist_ok=True)
    if name in ("voc20", "context59"):
        k = NUM_CLASSES[name]
        ids = [f"2008_{i:06d}" for i in range(num_images)]
        split_dir = "ImageSets/Segmentation" if name == "voc20" else "ImageSets/SegmentationContext"
        label_dir = "SegmentationClass" if name == "voc20" else "SegmentationClassContext"
        (root / split_dir).mkdir(parents=True)
        (root / split_dir / "val.txt").write_text("".join(f"{i}\n" for i in ids))
        (root / split_dir / "train.txt").write_text("2007_999999\n")
        for n, ident in enumerate([*ids, "2007_999999"]):
            raw = _raw_labels(rng, SIZES[n % len(SIZES)], k + 1, 255 if name == "voc20" else None)
            _save_png(root / label_dir / f"{ident}.png", raw, palette=name == "voc20")
            _save_rgb(root / "JPEGImages" / f"{ident}.jpg", _image(rng, raw))
            if ident in ids:
                expected[ident] = _reduce(raw)
        if name == "context59":  # VOC2010's own (21-class) split must not be used
            (root / "ImageSets/Segmentation").mkdir(parents=True)
            (root / "ImageSets/Segmentation/val.txt").write_text("2007_999999\n")
    elif name == "cocostuff":
        ids = [f"{i:012d}" for i in range(139, 139 + num_images)]
        for n, ident in enumerate(ids):
            raw = _raw_labels(rng, SIZES[n % len(SIZES)], 171, 255)
            _save_png(root / "annotations/val2017" / f"{ident}_labelTrainIds.png", raw)
            _save_png(root / "annotations/val2017" / f"{ident}.png", np.full_like(raw, 181))  # stuffthingmaps decoy
            _save_rgb(root / "images/val2017" / f"{ident}.jpg", _image(rng, raw))
            expected[ident] = raw.astype(np.int64)
        decoy = _raw_labels(rng, SIZES[0], 171, 255)
        _save_png(root / "annotations/train2017/000000000009_labelTrainIds.png", decoy)
        _save_rgb(root / "images/train2017/000000000009.jpg", _image(rng, decoy))
    elif name == "ade20k":
        ids = [f"ADE_val_{i:08d}" for i in range(1, 1 + num_images)]
        for n, ident in enumerate(ids):
            raw = _raw_labels(rng, SIZES[n % len(SIZES)], 151, None)
            _save_png(root / "annotations/validation" / f"{ident}.png", raw)
            _save_rgb(root / "images/validation" / f"{ident}.jpg", _image(rng, raw))
            expected[ident] = _reduce(raw)
        decoy = _raw_labels(rng, SIZES[0], 151, None)
        _save_png(root / "annotations/training/ADE_train_00000001.png", decoy)
        _save_rgb(root / "images/training/ADE_train_00000001.jpg", _image(rng, decoy))
    elif name == "cityscapes":
        cities = ["frankfurt", "lindau", "munster"]
        ids = [f"{cities[i % 3]}_000000_{i:06d}" for i in range(num_images)]
        for n, ident in enumerate(ids):
            city = ident.split("_")[0]
            raw = _raw_labels(rng, SIZES[n % len(SIZES)], 19, 255)
            _save_png(root / "gtFine/val" / city / f"{ident}_gtFine_labelTrainIds.png", raw)
            _save_png(root / "gtFine/val" / city / f"{ident}_gtFine_labelIds.png", np.full_like(raw, 33))
            _save_rgb(root / "gtFine/val" / city / f"{ident}_gtFine_color.png", np.zeros((*raw.shape, 3), np.uint8))
            _save_rgb(root / "leftImg8bit/val" / city / f"{ident}_leftImg8bit.png", _image(rng, raw))
            expected[ident] = raw.astype(np.int64)
        decoy = _raw_labels(rng, SIZES[0], 19, 255)
        _save_png(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", decoy)
        _save_rgb(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", _image(rng, decoy))
    else:
        raise KeyError(name)
    return dict(sorted(expected.items()))
