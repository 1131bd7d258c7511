"""RADSeg+ (RADIO-SAM refinement) against the official outputs (``ref_samrefine_*``) and its pure helpers.

Tolerances from the golden README: ``sam_input_hw``, ``sam_call_sizes`` exact; prompts match in float32; features
≤ 1e-3·max|ref| (SAM embedding, like the other features); scores / probabilities atol 2e-3; ``seg_pred`` ≤ 0.5 %.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers.golden import golden_root, load_rgb, require_golden
from ovmap.encoders.radseg import (
    RADSegPlusEncoder,
    connected_regions,
    longest_side_hw,
    region_prompts,
    sam_input_hw,
    sam_refinement,
)

GOLDEN = golden_root() / "radseg"
CKPT = GOLDEN / "model" / "tiny_c-radio_v3.safetensors"
SAM = GOLDEN / "model" / "tiny_sam.safetensors"
needs_golden = pytest.mark.usefixtures("radseg_golden")  # skips loudly / fails in CI when absent
CASES = ["ref_samrefine_A_c336_s224_img1_200x300.npz", "ref_samrefine_A_c336_s224_img2_240x352.npz"]


def test_sizes() -> None:
    assert sam_input_hw(200, 300) == (672, 1024)
    assert sam_input_hw(240, 352) == (688, 1024)
    assert sam_input_hw(300, 200) == (1024, 672)
    assert longest_side_hw(100, 150, 1024) == (683, 1024)  # the prompt frame (quirk: image frame is 672)
    assert longest_side_hw(200, 300, 256) == (171, 256)


def test_connected_regions_8_connectivity_and_order() -> None:
    m = torch.zeros(5, 6, dtype=torch.bool)
    m[0, 4] = m[1, 5] = True  # diagonal neighbours: one region
    m[3, 0] = m[4, 1] = True
    m[2, 2] = True
    regions = connected_regions(m)
    assert [int(r.sum()) for r in regions] == [2, 1, 2]
    assert regions[0][0, 4] and regions[1][2, 2] and regions[2][4, 1]


def test_region_prompts_first_max_and_inclusive_box() -> None:
    region = torch.zeros(4, 5, dtype=torch.bool)
    region[1:3, 1:4] = True
    prob = torch.zeros(4, 5)
    prob[1, 3] = prob[2, 1] = 1.0  # tie: the row-major first maximum wins
    point, box = region_prompts(region, prob)
    assert point == (3, 1) and box == (1, 1, 3, 2)


def _image(rel: str) -> torch.Tensor:
    return load_rgb(GOLDEN / rel)


@pytest.fixture(scope="module")
def encoder() -> RADSegPlusEncoder:
    require_golden("radseg")
    return RADSegPlusEncoder(sam_checkpoint=str(SAM), checkpoint=str(CKPT), slide_crop=336, slide_stride=224)


def _check_sam_calls(dbg: dict, z) -> None:
    assert list(dbg["sam_call_sizes"]) == z["sam_call_sizes"].tolist()
    assert np.abs(dbg["sam_call_point_coords"].numpy() - z["sam_call_point_coords"]).max() <= 1e-3
    assert np.abs(dbg["sam_call_boxes"].numpy() - z["sam_call_boxes"]).max() <= 1e-3
    assert np.abs(dbg["sam_call_iou_scores"].numpy() - z["sam_call_iou_scores"]).max() <= 2e-3
    assert np.allclose(dbg["sam_call_mask_input_sum"], z["sam_call_mask_input_sum"], rtol=1e-4)


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_radseg_plus_golden(case: str, encoder: RADSegPlusEncoder) -> None:
    cfg = json.loads((GOLDEN / "cases.json").read_text())[case]
    assert cfg["coarse_thresh"] == encoder.coarse_thresh and cfg["minimal_area"] == encoder.minimal_area
    assert cfg["sam_mask_coff"] == encoder.sam_mask_coff and cfg["sam_iou_thresh"] == encoder.sam_iou_thresh
    z = np.load(GOLDEN / case)
    text = torch.from_numpy(np.load(GOLDEN / "text_embeds.npz")["class_embeds"])
    dbg: dict = {}
    probs, labels = encoder.predict_single(_image(cfg["image"]), text, dbg)

    for key in ("merged_feats", "scga_feats", "lang_feats"):
        ref = z[key]
        assert float((dbg[key] - torch.from_numpy(ref)).abs().max()) <= 2e-3 * np.abs(ref).max(), key
    assert float((dbg["probs_lowres"] - torch.from_numpy(z["probs_lowres"])).abs().max()) <= 2e-3
    assert tuple(dbg["sam_input_hw"]) == tuple(z["sam_input_hw"])
    assert tuple(dbg["sam_adaptor_feats_shape"]) == tuple(z["sam_adaptor_feats_shape"])
    neck = dbg["sam_neck_feats"]
    ref = z["sam_neck_feats"] if "sam_neck_feats" in z.files else z["sam_neck_feats_row0"]
    got = neck if "sam_neck_feats" in z.files else neck[0, :, 0]
    assert float((got - torch.from_numpy(ref)).abs().max()) <= 1e-3 * np.abs(ref).max()
    _check_sam_calls(dbg, z)

    yx = z["seg_probs_samples_yx"]
    assert np.abs(probs[0][:, yx[:, 0], yx[:, 1]].T.numpy() - z["seg_probs_samples"]).max() <= 2e-3
    frac = float((labels[0].numpy() != z["seg_pred"][0, 0]).mean())
    assert frac <= 5e-3, frac
    assert probs.shape == (1, 6, *z["seg_pred"].shape[-2:])


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_sam_stage_alone_on_stored_intermediates(case: str, encoder: RADSegPlusEncoder) -> None:
    """Refinement fed with the stored probs_lowres and SAM embedding (README: how to localise a mismatch)."""
    z = np.load(GOLDEN / case)
    a = np.load(GOLDEN / case.replace("ref_samrefine_", "ref_"))
    height, width = z["input_hw"].tolist()
    probs = F.interpolate(torch.from_numpy(z["probs_lowres"]), size=(height, width), mode="bilinear",
                          align_corners=False)
    keep = torch.from_numpy(z["class_kept_after_denoising"]).bool()
    probs = probs * keep.view(1, -1, 1, 1)
    labels0 = torch.from_numpy(a["seg_pred"][0, 0]).long() - 1
    assert torch.equal(labels0, probs.argmax(1)[0])
    emb = torch.from_numpy(z["sam_neck_feats"]) if "sam_neck_feats" in z.files else encoder.sam_features(
        _image(json.loads((GOLDEN / "cases.json").read_text())[case]["image"]))[0]
    dbg: dict = {}
    new_labels, logits = sam_refinement(labels0, probs[0], encoder.sam, emb, tuple(z["sam_input_hw"].tolist()),
                                        debug=dbg)
    _check_sam_calls(dbg, z)
    yx = z["seg_probs_samples_yx"]
    assert np.abs(logits[:, yx[:, 0], yx[:, 1]].T.numpy() - z["seg_probs_samples"][:, 1:]).max() <= 2e-3
    frac = float(((new_labels + 1).numpy() != z["seg_pred"][0, 0]).mean())
    assert frac <= 5e-3, frac


@needs_golden
def test_radseg_plus_errors() -> None:
    with pytest.raises(ValueError, match="sam_checkpoint"):
        RADSegPlusEncoder(checkpoint=str(CKPT))
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth"):
        RADSegPlusEncoder(checkpoint=str(CKPT), sam_checkpoint="/nonexistent/sam.pth")


def test_hydra_config_matches_constructor() -> None:
    import inspect

    import yaml

    from ovmap.encoders.radseg import RADSegEncoder

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "ovmap/configs/encoder/radseg_plus.yaml").read_text())
    assert cfg.pop("name") == "radseg_plus"
    params = {**inspect.signature(RADSegEncoder.__init__).parameters,
              **inspect.signature(RADSegPlusEncoder.__init__).parameters}
    for key, value in cfg.items():
        assert key in params and params[key].default == value, key
