"""2D benchmark readers on miniature copies in the real layouts: ids, train-id labels, decoys, class names, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval2d._helpers_data import NUM_CLASSES, write_mini
from ovmap.eval2d.datasets import SPECS, SegDataset2D, build_dataset2d, check_dataset2d, official_class_names, \
    prompt_names, reduce_zero_label

DATASETS = list(NUM_CLASSES)


@pytest.mark.parametrize("name", DATASETS)
def test_reader_yields_val_ids_and_train_id_labels(name: str, tmp_path: Path) -> None:
    expected = write_mini(name, tmp_path / name, num_images=3)
    ds = build_dataset2d(name, path=str(tmp_path / name))
    assert [item[0] for item in ds.items] == list(expected)  # decoys (train split, unlisted ids) are not read
    for i, (ident, labels) in enumerate(expected.items()):
        sample = ds[i]
        assert sample["id"] == ident
        assert np.array_equal(sample["labels"].numpy(), labels)
        assert sample["rgb"].shape == (3, *labels.shape) and 0 <= float(sample["rgb"].min()) <= 1
    assert len(ds.class_names) == NUM_CLASSES[name] == len(ds.prompts)
    assert len(build_dataset2d(name, path=str(tmp_path / name), max_images=1)) == 1
    assert check_dataset2d(name, str(tmp_path / name)) == ([], 3)


def test_reduce_zero_label_known_values() -> None:
    raw = np.array([[0, 1, 2], [150, 254, 255]], dtype=np.uint8)
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [149, 253, 255]]


def test_voc_palette_png_gives_indices_not_colours(tmp_path: Path) -> None:
    expected = write_mini("voc20", tmp_path / "voc")
    first = next(iter(expected))
    with Image.open(tmp_path / "voc/SegmentationClass" / f"{first}.png") as img:
        assert img.mode == "P"
    assert np.array_equal(SegDataset2D("voc20", str(tmp_path / "voc"))[0]["labels"].numpy(), expected[first])


def test_class_names_official_and_reference() -> None:
    ade = official_class_names("ade20k")
    assert ade[7] == "bed" and ade[44] == "chest of drawers" and ade[-1] == "flag"  # MMSeg's "bed " stripped
    assert official_class_names("voc20")[3] == "boat" and official_class_names("cityscapes")[6] == "traffic light"
    voc = prompt_names("voc20")
    assert voc[3] == ["ship"] and voc[10] == ["table"] and voc[14][0] == "person" and len(voc[14]) == 7
    assert voc[19][:2] == ["television monitor", "tv monitor"]
    assert prompt_names("ade20k")[44] == ["chestofdrawers"]
    assert prompt_names("cocostuff", "official")[9] == ["traffic light"]
    for name, spec in SPECS.items():
        assert len(official_class_names(name)) == spec.num_classes == len(prompt_names(name))


def test_custom_class_file_must_have_one_line_per_class(tmp_path: Path) -> None:
    f = tmp_path / "names.txt"
    f.write_text("road, street\nsidewalk\n")
    with pytest.raises(ValueError, match="2 classes, but cityscapes has 19"):
        prompt_names("cityscapes", str(f))


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegDataset2D("ade20k", str(tmp_path / "nope"))
    write_mini("ade20k", tmp_path / "ade")
    img = sorted((tmp_path / "ade/images/validation").glob("*.jpg"))[0]
    img.unlink()
    with pytest.raises(FileNotFoundError, match=img.name):
        SegDataset2D("ade20k", str(tmp_path / "ade"))
    problems, complete = check_dataset2d("ade20k", str(tmp_path / "ade"))
    assert complete == 1 and len(problems) == 1 and img.name in problems[0]
    # a colour (RGB) label file is refused, ids beyond the class table are refused
    write_mini("cityscapes", tmp_path / "city")
    lab = sorted((tmp_path / "city/gtFine/val").rglob("*_labelTrainIds.png"))[0]
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(lab)
    with pytest.raises(ValueError, match="mode RGB"):
        SegDataset2D("cityscapes", str(tmp_path / "city"))[0]
    Image.fromarray(np.full((24, 32), 33, np.uint8)).save(lab)  # raw label ids instead of train ids
    with pytest.raises(ValueError, match="outside 0..18"):
        SegDataset2D("cityscapes", str(tmp_path / "city"))[0]
    assert "outside 0..18 and 255 (e.g. raw value 33)" in check_dataset2d("cityscapes", str(tmp_path / "city"))[0][0]


def test_check_data_cli_2d(tmp_path: Path) -> None:
    write_mini("context59", tmp_path / "ctx")
    run = [sys.executable, "-m", "ovmap", "check-data", "dataset2d=context59"]
    ok = subprocess.run([*run, f"dataset2d.path={tmp_path / 'ctx'}"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "2 complete" in ok.stdout, ok.stderr
    bad = subprocess.run([*run, f"dataset2d.path={tmp_path / 'missing'}"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "missing folder" in bad.stdout and "ovmap: error: check-data found" in bad.stderr
