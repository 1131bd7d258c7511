"""TextRegion against the official code: every stage ovmap exposes, on every golden case, at the README tolerances.

Golden data: ``<golden>/textregion/`` (official TextRegion e392cd2 with its SAM 2 package on CPU, float32, tiny random
OpenAI-layout CLIP and SAM 2.1). ``ref_rawpool_*`` run with the default ``value_pooling="raw"``, ``ref_fp32_*`` with
``value_pooling="normalized"`` (README R1), as ``cases.json``'s ``encoder_kwargs`` say.

Checked tolerances (README "Tolerances"): ``encode_text`` atol 1e-4; probabilities at the samples |Δ| ≤ 2e-3 at
≥ 99.8 % of them; labels ≤ 0.05 % of pixels; dense features at the dense samples |Δ| ≤ 1e-3 at ≥ 99.6 %.
Debugging tolerances, also checked: region features / logits and fallback logits atol 1e-4, masks ±2/255 except at
a handful of pixels (≤ 0.1 % here), ``sam_iou_pred`` atol 1e-5, ``sam_mask_size`` ±3 for the candidates that reach
the size filter, filter fates, NMS order, ranking and fusion groups exact (no candidate lies within noise of a
threshold in these cases), at most 17 candidates (README: thread noise) beyond ±3 px of mask size. Without a README
tolerance: stability atol 1e-2 (measured ≤ 7.9e-3, on masks down to 489 px; the fates are exact), scores
|Δ| ≤ 4e-4 at ≥ 99.8 % of the samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovmap.encoders import build_encoder

from _helpers.golden import load_rgb, require_golden

CASES = ["ref_rawpool_c336_img1_200x300", "ref_rawpool_c336_img2_240x352", "ref_rawpool_c160_img2_240x352",
         "ref_rawpool_c112_img1_200x300", "ref_fp32_c336_img1_200x300", "ref_fp32_c160_img2_240x352"]


@pytest.fixture(scope="module")
def golden() -> dict:
    root = require_golden("textregion")
    return dict(root=root, cases=json.loads((root / "cases.json").read_text()), text=np.load(root / "text_embeds.npz"))


def build(golden: dict, case: dict, **extra):
    root = golden["root"]
    return build_encoder("textregion", clip_checkpoint=str(root / case["clip_checkpoint"]), mask_model="sam2",
                         sam2_checkpoint=str(root / case["sam2_checkpoint"]),
                         **{**case["encoder_kwargs"], **extra})


@pytest.fixture(scope="module")
def runs(golden) -> dict:
    out = {}
    for name in CASES:
        case = golden["cases"][name + ".npz"]
        enc = build(golden, case)
        assert enc.value_pooling == case["value_pooling"]
        rgb = load_rgb(golden["root"] / case["image"])
        text = torch.from_numpy(golden["text"][case["label_set"]])
        st = enc.predict_stages(rgb, text)
        feats = enc.align_to_language(enc.densify(st, tuple(rgb.shape[-2:]))[None])[0]  # (D, H/4, W/4)
        ref = dict(np.load(golden["root"] / (name + ".npz")))
        out[name] = (st, feats, ref)
    return out


def test_text_embeddings(golden) -> None:
    case = golden["cases"][CASES[0] + ".npz"]
    enc = build(golden, case)
    for c in golden["cases"].values():
        np.testing.assert_allclose(enc.encode_text(c["labels"]).numpy(), golden["text"][c["label_set"]], atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_views_and_values(runs, name) -> None:
    st, _, ref = runs[name]
    assert tuple(st["tile_grid"]) == tuple(ref["tile_grid"])
    assert tuple(st["values_multires"].shape[1:]) == tuple(ref["patch_grid"])
    v, c, y, x = ref["views_samples_idx"].T
    np.testing.assert_allclose(st["views"][v, c, y, x].numpy(), ref["views_samples"], atol=1e-4)
    if "values_multires" in ref:
        np.testing.assert_allclose(st["values_multires"].numpy(), ref["values_multires"], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(st["fallback_logits"].numpy(), ref["fallback_logits"], atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_sam2_masks_and_filters(runs, name) -> None:
    st, _, ref = runs[name]
    np.testing.assert_allclose(st["points"].numpy(), ref["sam_points"] / ref["input_hw"][::-1] * 1024, atol=1e-3)
    np.testing.assert_allclose(st["iou"].numpy(), ref["sam_iou_pred"], atol=1e-5)
    size_diff = np.abs(st["mask_size"].numpy() - ref["sam_mask_size"])
    used = ref["sam_stage"] >= 3  # candidates that reach the size filter
    assert size_diff[used].max(initial=0) <= 3
    # candidates dropped earlier by IoU or stability: float noise on logits near 0 moves up to 22 px (measured);
    # the README's thread-noise bound is ±3 px for at most 17 candidates
    assert int((size_diff > 3).sum()) <= 17
    nan = np.isnan(ref["sam_stability"])
    assert np.all(st["stability"].numpy()[nan] == 0)  # 0/0 in the reference: fails the filter in both
    np.testing.assert_allclose(st["stability"].numpy()[~nan], ref["sam_stability"][~nan], atol=1e-2)
    assert np.array_equal(st["stage"].numpy(), ref["sam_stage"])
    as_pairs = lambda ids: np.stack([ids.numpy() // 3, ids.numpy() % 3], 1)  # noqa: E731
    assert np.array_equal(as_pairs(st["nms_order"]), ref["nms_order"])
    bins = np.unpackbits(ref["nms_masks_bin"], axis=-1).astype(bool)
    assert np.mean(st["nms_masks"].numpy() != bins) <= 1e-4
    boxes = st["boxes"].numpy()
    kept = ref["sam_stage"] >= 2  # boxes matter from NMS on
    assert np.array_equal(boxes[kept], ref["sam_box"][kept])
    assert np.array_equal(as_pairs(st["ranked"]), ref["ranked"])
    assert np.array_equal(st["fused_group"].numpy(), ref["fused_group"])


@pytest.mark.parametrize("name", CASES)
def test_global_patch_filter_and_regions(runs, name) -> None:
    st, _, ref = runs[name]
    np.testing.assert_allclose(st["masks_pre_gpr"].numpy(), ref["feature_masks_pre_gpr"], atol=2e-3)
    np.testing.assert_allclose(st["gpr_difference"].numpy(), ref["gpr_difference"], atol=1e-4)
    assert np.array_equal(st["gpr_keep"].numpy(), ref["gpr_keep"].astype(bool))
    u8 = torch.round(st["masks"] * 255).numpy().astype(np.int64)
    assert u8.shape == ref["region_masks_u8"].shape
    assert np.mean(np.abs(u8 - ref["region_masks_u8"]) > 2) <= 1e-3
    pooled, ref_pooled = st["region_pooled"].numpy(), ref["region_pooled"]
    np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-4, atol=1e-4 * np.abs(ref_pooled).max())
    np.testing.assert_allclose(st["tokens"].numpy(), ref["region_feats"], atol=1e-4)
    np.testing.assert_allclose(st["region_logits"].numpy(), ref["region_logits"], atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_scores_probabilities_labels(runs, name) -> None:
    st, _, ref = runs[name]
    h, w = ref["input_hw"]
    covered = np.unpackbits(ref["covered"])[: h * w].reshape(h, w).astype(bool)
    assert np.mean(st["covered"].numpy() != covered) <= 1e-3
    y, x = ref["samples_yx"].T
    score = st["score"][:, y, x].T.numpy()
    assert np.mean(np.abs(score - ref["scores_samples"]).max(1) > 4e-4) <= 2e-3
    probs = st["probs"][0, 1:, y, x].T.numpy()
    assert np.mean(np.abs(probs - ref["probs_samples"]).max(1) > 2e-3) <= 2e-3
    assert np.mean(st["labels"][0].numpy() != ref["seg_pred"].astype(np.int64) + 1) <= 5e-4


@pytest.mark.parametrize("name", CASES)
def test_dense_features(runs, name) -> None:
    """``align_to_language(encode_image(x))`` at the dense samples (encode_image = densify(encode_parts(x)), checked
    once below; the other cases densify the parts of their predict_stages run to save a second SAM pass)."""
    _, feats, ref = runs[name]
    y, x = ref["dense_samples_yx"].T
    ours = feats[:, y, x].T.numpy()
    assert np.mean(np.abs(ours - ref["dense_feats_samples"]).max(1) > 1e-3) <= 4e-3


def test_pooling_switch_separates_the_families(golden, runs) -> None:
    """The default (raw) pooling misses the fp32 reference: README measured 10.3 % of the sample pixels beyond the
    probability tolerance on c336 img1. Raw and normalised pooling share every stage before pooling."""
    name = "ref_fp32_c336_img1_200x300"
    case = golden["cases"][name + ".npz"]
    st_raw = build(golden, case, value_pooling="raw").predict_stages(
        load_rgb(golden["root"] / case["image"]), torch.from_numpy(golden["text"][case["label_set"]]))
    st_norm, _, ref = runs[name]
    assert torch.equal(st_raw["masks"], st_norm["masks"])
    y, x = ref["samples_yx"].T
    bad = np.mean(np.abs(st_raw["probs"][0, 1:, y, x].T.numpy() - ref["probs_samples"]).max(1) > 2e-3)
    assert 0.05 < bad < 0.15
    # and the raw run equals the rawpool reference of the same image and labels
    raw_ref = np.load(golden["root"] / "ref_rawpool_c336_img1_200x300.npz")
    np.testing.assert_allclose(st_raw["tokens"].numpy(), raw_ref["region_feats"], atol=1e-4)


def test_other_size_and_class_list(golden) -> None:
    """Golden-independent checks on a size and class list no golden case has (img2 cropped to 200x280, label set B
    reversed plus one class of A): with ``normalized`` pooling each region token equals a per-region loop over
    unit-norm value vectors weighted by the region's patch-grid mask; permuting the classes permutes the scores."""
    case = golden["cases"]["ref_fp32_c160_img2_240x352.npz"]
    enc = build(golden, case)
    rgb = load_rgb(golden["root"] / case["image"])[:, :, 20:220, 40:320]
    text = torch.cat([torch.from_numpy(golden["text"]["B"]).flip(0), torch.from_numpy(golden["text"]["A"][:1])])
    st = enc.predict_stages(rgb, text)
    assert len(st["tokens"]) > 0 and tuple(st["masks"].shape[1:]) == (200, 280)
    v = st["values_multires"].flatten(1).T.double()  # (N, C)
    block, visual = enc.clip.visual.last_block, enc.clip.visual
    for r, weights in enumerate(st["pool_weights"].double()):
        acc = torch.zeros(v.shape[1], dtype=torch.float64)
        for wp, vp in zip(weights, v):
            acc += wp * vp / vp.norm()
        u = block.attn.out_proj(acc.float())
        ref = F.normalize(visual.ln_post(u) @ visual.proj, dim=-1)
        torch.testing.assert_close(st["tokens"][r], ref, atol=1e-5, rtol=0)
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    st_p = enc.predict_stages(rgb, text[perm])
    torch.testing.assert_close(st_p["score"], st["score"][perm], atol=1e-6, rtol=0)
    assert torch.equal(perm[st_p["labels"] - 1] + 1, st["labels"])


def test_encode_image_is_densify_of_the_parts(golden, runs) -> None:
    name = "ref_rawpool_c112_img1_200x300"
    case = golden["cases"][name + ".npz"]
    rgb = load_rgb(golden["root"] / case["image"])
    feats = build(golden, case).encode_image(rgb)
    assert feats.shape == (1, 32, 50, 75)
    assert torch.equal(feats[0], runs[name][1])
