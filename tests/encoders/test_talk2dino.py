"""Talk2DINO: golden parity with the official code (text stages, window inputs, DINOv2 features, CLS attention,
masks, logits, probabilities, labels, encode_image) at the README tolerances, the pure pieces against naive
computations, loaders, the end-to-end `ovmap eval`, and the parameter count at real size."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from _helpers.cli_eval import synthetic_eval
from _helpers.golden import load_rgb, require_golden
from ovmap.encoders import ENCODERS, available_encoders, build_encoder
from ovmap.encoders.backbones.dinov2 import DinoV2, load_dinov2
from ovmap.encoders.talk2dino import (
    SUB_IMAGENET_TEMPLATES,
    ProjectionLayer,
    background_clean,
    feature_canvas_side,
    load_projection,
)

CASES = ["ref_img0_480x704_L1", "ref_img0_480x704_L2_bgclean", "ref_img0_480x704_L2", "ref_img1_250x330_L1_pamr",
         "ref_img2_300x530_L2_bgclean_pamr"]


def _files(root: Path) -> dict:
    return dict(dinov2_checkpoint=str(root / "model/tiny_dinov2_vitb14_reg4_pretrain.pth"),
                clip_checkpoint=str(root / "model/tiny_ViT-B-16.pt"),
                projection_checkpoint=str(root / "model/tiny_proj_mlp_infonce.pth"))


@pytest.fixture(scope="module")
def golden():
    root = require_golden("talk2dino")
    cases = json.loads((root / "cases.json").read_text())
    model = next(iter(cases.values()))["model"]
    enc = build_encoder("talk2dino", **_files(root), dino_heads=model["dinov2_heads"],
                        clip_text_heads=model["clip_text_heads"])
    return root, enc, cases, np.load(root / "text_embeds.npz")


def _configure(enc, case: dict) -> None:
    enc.bg_thresh = case["bg_thresh"]
    enc.with_bg_clean = case["with_bg_clean"]
    enc.lambda_bg = case["lambda_bg"]
    enc.pamr_steps = case["pamr_steps"]
    if case["pamr_dilations"]:
        assert tuple(case["pamr_dilations"]) == enc.pamr_dilations  # the config default is the reference's
    assert (enc.slide_crop, enc.slide_stride) == (case["slide_crop"], case["slide_stride"])


@pytest.mark.parametrize("lst", ["L1", "L2"])
def test_text_stages(golden, lst) -> None:
    root, enc, cases, text = golden
    classes = cases[f"ref_img0_480x704_{lst}.npz"]["classes"]
    ids = enc.text.tokenizer([t.format(c) for c in classes for t in SUB_IMAGENET_TEMPLATES])
    np.testing.assert_array_equal(ids.numpy().reshape(text[f"{lst}_tokens"].shape), text[f"{lst}_tokens"])
    stages = enc.text_stages(classes)
    for key in ("clip_per_template", "clip_mean"):
        ref = text[f"{lst}_{key}"]
        assert np.abs(stages[key].numpy() - ref).max() <= 1e-4 * np.abs(ref).max(), key
    np.testing.assert_allclose(stages["proj_raw"].numpy(), text[f"{lst}_proj_raw"], atol=1e-4)
    np.testing.assert_allclose(enc.encode_text(classes).numpy(), text[f"{lst}_text_embeds"], atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_golden_case_stages(golden, name) -> None:
    root, enc, cases, text = golden
    case, ref = cases[name + ".npz"], np.load(root / f"{name}.npz")
    _configure(enc, case)
    rgb = load_rgb(root / case["image"])
    np.testing.assert_array_equal(ref["input_hw"], rgb.shape[-2:])
    t = torch.from_numpy(text[case["text"].split(":")[1]])
    debug: dict = {}
    masks = enc.slide_masks(rgb, t, debug)
    np.testing.assert_array_equal(np.array(debug["window_boxes"]), ref["window_boxes"])
    w0 = debug["windows"][0]
    if "win0_input_samples" in ref:
        y1, x1, y2, x2 = debug["window_boxes"][0]
        x = enc.window_input(rgb[:, :, y1:y2, x1:x2])[0]
        yx = ref["win0_input_yx"]
        np.testing.assert_allclose(x[:, yx[:, 0], yx[:, 1]].T.numpy(), ref["win0_input_samples"], atol=1e-4)
    if "win0_feats" in ref:
        np.testing.assert_allclose(F.normalize(w0["feats"], dim=0).numpy(),
                                   ref["win0_feats"] / np.linalg.norm(ref["win0_feats"], axis=0), atol=1e-4)
        assert np.abs(w0["feats"].numpy() - ref["win0_feats"]).max() <= 1e-4 * np.abs(ref["win0_feats"]).max()
    if "win0_cls_attn" in ref:
        np.testing.assert_allclose(w0["cls_attn"].numpy(), ref["win0_cls_attn"], atol=1e-3)
    if "win0_masks_noclean" in ref:
        np.testing.assert_allclose(w0["masks_noclean"].numpy(), ref["win0_masks_noclean"], atol=1e-4)
    if "win_masks_lowres" in ref:
        np.testing.assert_allclose(np.stack([w["masks_lowres"].numpy() for w in debug["windows"]]),
                                   ref["win_masks_lowres"], atol=1e-4)
    yx = ref["samples_yx"]
    np.testing.assert_allclose(masks[:, yx[:, 0], yx[:, 1]].T.numpy(), ref["logits_samples"], atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_golden_interface(golden, name) -> None:
    """predict / encode_image / align_to_language as the README maps them onto the ovmap API."""
    root, enc, cases, text = golden
    case, ref = cases[name + ".npz"], np.load(root / f"{name}.npz")
    _configure(enc, case)
    rgb = load_rgb(root / case["image"])
    t = enc.encode_text(case["classes"])
    probs, labels = enc.predict(rgb, t)
    k = len(case["classes"])
    assert probs.shape == (1, k + 1, *rgb.shape[-2:]) and labels.shape == (1, *rgb.shape[-2:])
    yx = ref["samples_yx"]
    if case["with_bg"]:
        ours, ref_labels = probs[0][:, yx[:, 0], yx[:, 1]].T, ref["labels"].astype(np.int64)
    else:
        assert bool((probs[0, 0] == 0).all())
        ours, ref_labels = probs[0, 1:][:, yx[:, 0], yx[:, 1]].T, ref["labels"].astype(np.int64) + 1
    np.testing.assert_allclose(ours.numpy(), ref["probs_samples"], atol=1e-5)
    assert (labels[0].numpy() != ref_labels).mean() <= 1e-3
    if case["encode_image"]:
        feats = enc.encode_image(rgb)
        assert feats.shape == (1, *ref["win0_feats"].shape)
        np.testing.assert_allclose(F.normalize(feats[0], dim=0).numpy(),
                                   ref["win0_feats"] / np.linalg.norm(ref["win0_feats"], axis=0), atol=1e-4)
        lang = enc.align_to_language(feats)
        assert torch.allclose(lang, feats, rtol=1e-6, atol=0)


def test_encode_image_canvas(golden) -> None:
    """300×530: windows x = 0–448 and 82–530 (stretched 300→448 rows) on a 32 × 38 canvas, overlap averaged."""
    root, enc, _, _ = golden
    rgb = load_rgb(root / "images/img2_300x530.png")
    feats = enc.encode_image(rgb)[0]
    assert feats.shape == (48, 32, 38)
    a = enc.window_forward(rgb[:, :, :, 0:448])[0].T.reshape(48, 32, 32)
    b = enc.window_forward(rgb[:, :, :, 82:530])[0].T.reshape(48, 32, 32)
    ref = torch.zeros(48, 32, 38)
    cnt = torch.zeros(1, 32, 38)
    ref[:, :, 0:32] += a
    ref[:, :, 6:38] += b
    cnt[:, :, 0:32] += 1
    cnt[:, :, 6:38] += 1
    torch.testing.assert_close(feats, ref / cnt)
    assert [feature_canvas_side(s, 448, 32, 14) for s in (100, 448, 480, 704)] == [32, 32, 34, 50]


def test_cosine_prob_space(golden) -> None:
    root, enc, _, text = golden
    rgb = load_rgb(root / "images/img1_250x330.png")
    t = torch.from_numpy(text["L1_text_embeds"])
    enc.prob_space, enc.bg_thresh, enc.pamr_steps = "cosine", None, 0
    try:
        probs, labels = enc.predict(rgb, t)
    finally:
        enc.prob_space = "official"
    feats = enc.encode_image(rgb)
    cos = torch.einsum("chw,kc->khw", F.normalize(feats[0], dim=0), t)
    ref = torch.softmax(100 * F.interpolate(cos[None], size=(250, 330), mode="bilinear", align_corners=False), 1)
    torch.testing.assert_close(probs[:, 1:], ref)
    assert torch.equal(labels, ref.argmax(1) + 1)


# --- pure pieces ------------------------------------------------------------------------------------------------
def test_background_clean_naive() -> None:
    torch.manual_seed(0)
    k, m, n, c, lam = 3, 2, 6, 5, 0.2
    mask = torch.rand(k, n)
    feats = torch.randn(n, c)
    attn = torch.randn(m, n) * 3
    text = F.normalize(torch.randn(k, c), dim=-1)
    out = background_clean(mask, feats, attn, text, lam)
    emb = []
    for h in range(m):
        e = sum(attn[h, p] * feats[p] for p in range(n)) / n
        emb.append(e / e.norm())
    prior = torch.zeros(k, n)
    for ci in range(k):
        dots = torch.tensor([float(text[ci] @ emb[h]) for h in range(m)])
        s = dots.exp() / dots.exp().sum()
        logit = torch.stack([sum(s[h] * attn[h, p] for h in range(m)) / s.sum() for p in range(n)])
        prior[ci] = logit.exp() / logit.exp().sum()
    lo, hi = float(prior.min()), float(prior.max())
    scaled = (prior - lo) / max(hi, hi - lo) * (float(mask.max()) - float(mask.min())) + float(mask.min())
    torch.testing.assert_close(out, (mask + lam * scaled) / (1 + lam))


def test_projection_layer_and_loader(tmp_path) -> None:
    torch.manual_seed(0)
    head = ProjectionLayer(6, 4, hidden_layers=1, act="tanh")
    x = torch.randn(3, 6)
    ref = head.hidden_layers[0](torch.tanh(head.linear_layer(x)))
    torch.testing.assert_close(head(x), ref)
    torch.save(head.state_dict(), tmp_path / "p.pth")
    (tmp_path / "p.yaml").write_text("model:\n  act: relu\n  hidden_layer: True\n")
    loaded = load_projection(tmp_path / "p.pth")  # yaml beside the file: relu
    torch.testing.assert_close(loaded(x), head.hidden_layers[0](torch.relu(head.linear_layer(x))))
    (tmp_path / "p.yaml").unlink()
    torch.testing.assert_close(load_projection(tmp_path / "p.pth")(x), ref)  # no yaml: tanh
    with pytest.raises(FileNotFoundError, match="Talk2DINO-ViTB"):
        load_projection(tmp_path / "missing.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a Talk2DINO projection"):
        load_projection(tmp_path / "bad.pth")


def test_dinov2_loader_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="dinov2_vitb14_reg4_pretrain.pth"):
        load_dinov2(tmp_path / "missing.pth")
    torch.manual_seed(0)
    sd = DinoV2(24, 2, 2, 14, 4, 56).state_dict()
    with pytest.raises(ValueError, match="register_tokens"):
        load_dinov2({k: v for k, v in sd.items() if k != "register_tokens"})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_dinov2({**sd, "extra": torch.zeros(1)}, num_heads=2)


def test_registered_config_and_errors(golden) -> None:
    root, enc, _, _ = golden
    assert "talk2dino" in available_encoders()
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "ovmap/configs/encoder/talk2dino.yaml").read_text())
    params = inspect.signature(ENCODERS.get("talk2dino").__init__).parameters
    assert cfg.pop("name") == "talk2dino"
    assert set(cfg) == set(params) - {"self", "dinov2_heads", "text_heads"}  # the last two: accepted aliases
    for key, val in cfg.items():
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == val, key
    with pytest.raises(ValueError, match="projection_checkpoint"):
        build_encoder("talk2dino", dinov2_checkpoint="a", clip_checkpoint="b")
    alias = build_encoder("talk2dino", **_files(root), dinov2_heads=4, text_heads=2)
    assert alias.dino.num_heads == 4 and alias.clip.cfg.text_heads == 2
    assert alias.weight_files()[-1] == root / "model/tiny_proj_mlp_infonce.yaml"  # the yaml beside the .pth counts
    with pytest.raises(ValueError, match="prob_space"):
        build_encoder("talk2dino", **_files(root), prob_space="other")


@pytest.mark.parametrize("mode", ["feature", "probability"])
def test_ovmap_eval_end_to_end(tmp_path, mode) -> None:
    """`ovmap eval dataset=synthetic encoder=talk2dino` with the tiny golden models (numbers meaningless)."""
    root = require_golden("talk2dino")
    args = [f"encoder.{k}={v}" for k, v in _files(root).items()]
    doc = synthetic_eval(tmp_path, "talk2dino", *args, "encoder.dino_heads=4", "encoder.clip_text_heads=2",
                         "encoder.pamr_steps=1", "encoder.with_bg_clean=true", f"mapping.mode={mode}", num_frames=2)
    assert doc["scenes"]["synthetic_seed0"]["num_map_voxels"] > 0


def test_parameter_count_real_size() -> None:
    """DINOv2 ViT-B/14-reg4 86.58M (+ 0.98M projection = 87.6M); RADSeg Table A.3: 86M."""
    with torch.device("meta"):
        dino = sum(p.numel() for p in DinoV2().parameters()) / 1e6
        proj = sum(p.numel() for p in ProjectionLayer(512, 768).parameters()) / 1e6
    assert math.isclose(dino, 86.58, abs_tol=0.01)
    assert math.isclose(proj, 0.98, abs_tol=0.01)
