"""The 2D protocol's pure parts against hand-computed answers, and the known-answer mIoU of a scripted encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovmap.encoders.base import ENCODERS
from ovmap.eval2d.datasets import SegDataset2D
from ovmap.eval2d.evaluate import encoder_kwargs_2d, evaluate_2d
from ovmap.eval2d.metrics import ConfusionMatrix
from ovmap.eval2d.protocol import Budget, merge_synonyms, predict_prompts, rescale_size, slide_windows, window_plan


def test_rescale_size_mmseg_keep_ratio() -> None:
    assert rescale_size(375, 500, 336) == (336, 448)     # VOC image, short side 336
    assert rescale_size(500, 375, 336) == (448, 336)     # portrait
    assert rescale_size(1024, 2048, 560) == (560, 1120)  # Cityscapes low
    assert rescale_size(1024, 2048, 1344) == (1024, 2048)  # high: the 2048 cap wins (scale 1)
    assert rescale_size(480, 640, 672, 800) == (600, 800)  # long-side cap below the short-side scale
    assert rescale_size(20, 36, 336) == (336, 605)       # 36 * 16.8 = 604.8 -> int(605.3)


def test_slide_windows_geometry() -> None:
    # counts from the spec (baselines.md §12): 640x853 at 336/224 -> 12; 640x1136 -> 15 at 224, 36 at 112
    assert len(slide_windows(640, 853, 336, 224)) == 12
    assert len(slide_windows(640, 1136, 336, 224)) == 15
    assert len(slide_windows(640, 1136, 336, 112)) == 36
    # 336x448 at 224/112: rows start 0, 112 (2); columns 0, 112, 224 (3); all 224 x 224
    assert slide_windows(336, 448, 224, 112) == [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
                                                  (112, 336, 0, 224), (112, 336, 112, 336), (112, 336, 224, 448)]
    # the last window is shifted back to end at the border: 300 wide at 224/112 -> starts 0 and 76
    assert slide_windows(224, 300, 224, 112) == [(0, 224, 0, 224), (0, 224, 76, 300)]
    assert slide_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller than the crop: one window


def test_window_plans_of_the_registered_encoders() -> None:
    expected = {"oracle": "oracle", "radseg": "internal", "radseg_plus": "internal", "trident": "internal",
                "textregion": "internal_crop", "naradio": "external"}
    for name, plan in expected.items():
        assert window_plan(ENCODERS.get(name)) == plan, name
    # textregion: only crop_size (stride = crop); radseg_plus takes slide_* through **kwargs of RADSeg
    kw, plan, applied = encoder_kwargs_2d(ENCODERS.get("textregion"), {"temperature": 50.0}, Budget(336, 224, 112),
                                          {"coarse_thresh": 0.2})
    assert plan == "internal_crop" and applied == {"crop_size": 224} and kw["temperature"] == 50.0
    kw, _, applied = encoder_kwargs_2d(ENCODERS.get("radseg_plus"), {}, Budget(576, 336, 224),
                                       {"coarse_thresh": 0.05, "refine_neg_cos": False}, explicit={"slide_stride"})
    assert applied == {"coarse_thresh": 0.05, "slide_crop": 336} and "refine_neg_cos" not in kw


class _Constant:
    """predict -> the same probability everywhere, a different value per call (window i gets i + 1)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, rgb: torch.Tensor, text: torch.Tensor):
        self.calls += 1
        probs = torch.full((1, 2, *rgb.shape[-2:]), float(self.calls))
        return probs, probs[:, 1:].argmax(1) + 1


def test_external_windows_average_per_pixel() -> None:
    enc = _Constant()
    out = predict_prompts(enc, torch.zeros(1, 3, 4, 6), torch.zeros(1, 2), "external", Budget(4, 4, 2))
    # windows x = 0..4 (value 1) and 2..6 (value 2): columns 0-1 -> 1, 2-3 -> 1.5, 4-5 -> 2
    assert enc.calls == 2 and out.shape == (1, 4, 6)
    assert out[0, 0].tolist() == [1.0, 1.0, 1.5, 1.5, 2.0, 2.0]


def test_merge_synonyms_is_the_max_per_class() -> None:
    probs = torch.tensor([[0.1, 0.7], [0.5, 0.2], [0.4, 0.1]]).view(3, 1, 2)
    out = merge_synonyms(probs, torch.tensor([0, 1, 0]), 2)
    assert out[:, 0].tolist() == [[pytest.approx(0.4), pytest.approx(0.7)], [0.5, pytest.approx(0.2)]]


# --- known answer --------------------------------------------------------------------------------------------------
# Two VOC images, train ids (255 = ignore). Image A (4x4) and B (2x4); the scripted encoder predicts PRED.
GT = {"2008_000000": [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [255, 255, 2, 2]],
      "2008_000001": [[2, 2, 2, 2], [3, 3, 3, 3]]}
PRED = {"2008_000000": [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [3, 3, 2, 2]],
        "2008_000001": [[2, 2, 3, 3], [3, 3, 3, 3]]}
# By hand, over the split (ignored pixels left out):
#   class 0: TP 4 (A row 0), FN 4 (A row 1), FP 0          -> IoU 4/8
#   class 1: TP 4 (A row 2), FP 4 (A row 1), FN 0          -> IoU 4/8
#   class 2: TP 2 (A) + 2 (B), FN 2 (B row 0), FP 0        -> IoU 4/6
#   class 3: TP 4 (B row 1), FP 2 (B row 0), FN 0          -> IoU 4/6
#   classes 4..19: absent everywhere -> undefined, left out; mIoU = (1/2 + 1/2 + 2/3 + 2/3) / 4 = 7/12
#   (accumulated over the split: the mean of per-image mIoUs would be (2/3 + 3/4) / 2 instead)


class _Scripted:
    """An oracle-style encoder (reads the frame, not pixels) that returns the scripted predictions."""

    name = "scripted"
    needs_labels = True

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def encode_text(self, labels):
        return torch.zeros(len(labels), 1)

    def predict_frame(self, frame, text):
        pred = torch.tensor(PRED[self.ids[frame["index"]]])
        return torch.cat([torch.zeros(1, *pred.shape), torch.nn.functional.one_hot(pred, 20).permute(2, 0, 1)])


def _write_voc(root: Path) -> None:
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in GT))
    for ident, labels in GT.items():
        raw = np.array(labels, dtype=np.int64) + 1
        raw[raw == 256] = 255
        (root / "SegmentationClass").mkdir(exist_ok=True)
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(raw.astype(np.uint8), mode="L").convert("P").save(root / "SegmentationClass" / f"{ident}.png")
        Image.fromarray(np.zeros((*raw.shape, 3), np.uint8)).save(root / "JPEGImages" / f"{ident}.jpg")


def test_known_answer_miou(tmp_path: Path) -> None:
    _write_voc(tmp_path / "voc")
    ds = SegDataset2D("voc20", str(tmp_path / "voc"))
    cm, files = evaluate_2d(ds, _Scripted([i[0] for i in ds.items]), "oracle", Budget(336, 224, 112),
                            tmp_path / "out", progress=False)
    assert cm.tp[:4].tolist() == [4, 4, 4, 4] and cm.fp[:4].tolist() == [0, 4, 0, 2]
    assert cm.fn[:4].tolist() == [4, 0, 2, 0] and cm.counts[4:].sum() == 0
    iou = cm.iou()
    assert iou[:4].tolist() == [4 / 8, 4 / 8, 4 / 6, 4 / 6] and np.isnan(iou[4:]).all()
    assert abs(cm.miou() - 7 / 12) < 1e-15
    doc = json.loads(files["metrics"].read_text())
    assert doc["miou"] == cm.miou() and doc["per_class_iou"]["aeroplane"] == 0.5
    assert doc["per_class_iou"]["boat"] == 4 / 6 and doc["per_class_iou"]["tvmonitor"] is None
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["name"] for r in rows[:4]] == ["aeroplane", "bicycle", "bird", "boat"]
    assert [r["tp"] for r in rows[:4]] == ["4", "4", "4", "4"] and rows[4]["iou"] == ""
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    qual = Image.open(files["qualitative_2008_000000"])
    assert qual.size == (3 * 4 + 2 * 4, 4)  # image | prediction | ground truth, 4-pixel gaps


def test_confusion_matrix_rejects_bad_ids() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="predicted ids"):
        cm.update(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match="ground-truth ids"):
        cm.update(np.array([[0]]), np.array([[7]]))
    cm.update(np.array([[1, 2]]), np.array([[255, 2]]))
    assert cm.counts.sum() == 1 and cm.miou() == 1.0
