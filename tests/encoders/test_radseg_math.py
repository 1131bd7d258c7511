"""RADSeg pure functions against explicit formulas, text path, and the encoder's public API / errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers.golden import golden_root, require_golden
from ovmap.encoders import radseg  # noqa: F401  (registers "radseg")
from ovmap.encoders.base import ENCODERS, build_encoder
from ovmap.encoders.radseg import (
    RADSegEncoder,
    average_prompt_embeddings,
    canonicalize_prompt,
    merge_windows,
    probs_to_prediction,
    scga,
    scra_attention,
    seg_logits,
    sliding_resize_hw,
    window_boxes,
)
from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES, fill_templates

GOLDEN = golden_root() / "radseg"
CKPT = GOLDEN / "model" / "tiny_c-radio_v3.safetensors"
needs_golden = pytest.mark.usefixtures("radseg_golden")  # skips loudly / fails in CI when absent


# --- SCRA -------------------------------------------------------------------------------------------------------
def _softmax_masked(s: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(s)
    for i in range(s.shape[0]):
        row = s[i]
        keep = row >= 0
        e = torch.exp(row[keep] - row[keep].max())
        out[i, keep] = e / e.sum()
    return out


def test_scra_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    n, c, h = 7, 8, 2
    d = c // h
    u = torch.randn(2, n, c, dtype=torch.float64)
    wqkv, bqkv = 2 * torch.randn(3 * c, c, dtype=torch.float64), torch.randn(3 * c, dtype=torch.float64)
    wp, bp = torch.randn(c, c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    tau = 10.0
    out = scra_attention(u, wqkv, bqkv, wp, bp, h, tau)
    masked = 0
    for b in range(2):
        qkv = u[b] @ wqkv.T + bqkv
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        heads = []
        for hh in range(h):
            sl = slice(hh * d, (hh + 1) * d)
            a = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1)
            heads.append(a @ v[:, sl])
        o = torch.cat(heads, 1) @ wp.T + bp
        heads2 = []
        for hh in range(h):
            sl = slice(hh * d, (hh + 1) * d)
            on = o[:, sl] / o[:, sl].norm(dim=1, keepdim=True).clamp_min(1e-12)
            s = tau * on @ on.T
            masked += int((s < 0).sum())
            heads2.append(_softmax_masked(s) @ v[:, sl])
        ref = torch.cat(heads2, 1) @ wp.T + bp
        assert torch.allclose(out[b], ref, atol=1e-10)
    assert masked > 0  # the mask was exercised


# --- sliding windows --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hw, crop, stride, expect",
    [((200, 300), 336, 224, (448, 448)), ((200, 300), 336, 112, (336, 336)), ((200, 300), 224, 112, (224, 336)),
     ((240, 352), 336, 224, (448, 448)), ((240, 352), 336, 112, (336, 448)), ((480, 640), 336, 224, (672, 672)),
     ((224, 224), 336, 224, (224, 224)), ((224, 224), 336, 112, (224, 224)), ((224, 224), 224, 112, (224, 224))],
)
def test_sliding_resize_table(hw, crop, stride, expect) -> None:
    assert sliding_resize_hw(*hw, crop, stride) == expect


@pytest.mark.parametrize(
    "hw, crop, stride, n, grid",
    [((224, 224), 336, 224, 1, (1, 1)), ((448, 448), 336, 224, 4, (2, 2)), ((336, 336), 336, 112, 1, (1, 1)),
     ((336, 448), 336, 112, 2, (1, 2)), ((224, 336), 224, 112, 2, (1, 2)), ((336, 448), 224, 112, 6, (2, 3))],
)
def test_window_grid_table(hw, crop, stride, n, grid) -> None:
    boxes, g = window_boxes(*hw, crop, stride)
    assert len(boxes) == n and g == grid
    for y1, x1, y2, x2 in boxes:
        assert 0 <= y1 < y2 <= hw[0] and 0 <= x1 < x2 <= hw[1]
        assert y2 - y1 == min(crop, hw[0]) and x2 - x1 == min(crop, hw[1])


def test_window_boxes_last_window_shifted_back() -> None:
    boxes, _ = window_boxes(448, 448, 336, 224)
    assert boxes == [(0, 0, 336, 336), (0, 112, 336, 448), (112, 0, 448, 336), (112, 112, 448, 448)]


def test_merge_windows_is_unweighted_average() -> None:
    f = torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])  # 2 windows of 2x2 patches
    out = merge_windows(f, [(0, 0, 32, 32), (0, 16, 32, 48)], (32, 48), patch=16)
    assert out.shape == (1, 2, 2, 3)
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))


# --- SCGA -------------------------------------------------------------------------------------------------------
def test_scga_matches_explicit_formula() -> None:
    torch.manual_seed(1)
    feats = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    out = scga(feats, 10.0)
    f = feats[0].reshape(5, -1).T  # (N, C)
    fn = f / f.norm(dim=1, keepdim=True)
    s = fn @ fn.T
    s = 10.0 * (s - s.sum() / s.numel())
    ref = (_softmax_masked(s) @ f).T.reshape(1, 5, 3, 4)
    assert torch.allclose(out, ref, atol=1e-10)
    assert (s < 0).any()


def test_scga_mean_is_over_whole_input_batch() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3) + 2
    both = scga(torch.cat([a, b]), 10.0)
    assert not torch.allclose(both[:1], scga(a, 10.0))


# --- prediction -------------------------------------------------------------------------------------------------
def test_seg_logits_and_prediction_path() -> None:
    lang = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 3)
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    cos, probs = seg_logits(lang, text)
    assert torch.allclose(cos[0, :, 0, 2], torch.tensor([1, 1, -1]) / math.sqrt(2))
    assert torch.allclose(probs.sum(1), torch.ones(1, 1, 3))
    full, labels, cmax = probs_to_prediction(probs, (2, 6), denoise_thresh=0.5)
    assert full.shape == (1, 4, 2, 6) and labels.shape == (1, 2, 6) and labels.dtype == torch.int64
    assert torch.equal(full[:, 0], torch.zeros(1, 2, 6))
    assert torch.equal(full[:, 3], torch.zeros(1, 2, 6))  # class 3 never >= 0.5: denoised
    assert cmax[2] < 0.5 and labels.min() >= 1
    ref = F.interpolate(probs, size=(2, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(full[:, 1:3], ref[:, :2])


def test_all_classes_denoised_gives_label_one_and_prediction_thresh() -> None:
    probs = torch.full((1, 3, 2, 2), 1 / 3)
    full, labels, _ = probs_to_prediction(probs, (4, 4), 0.5)
    assert torch.equal(labels, torch.ones(1, 4, 4, dtype=torch.int64)) and full.abs().sum() == 0
    _, labels, _ = probs_to_prediction(probs, (4, 4), 0.0, prediction_thresh=0.5)
    assert labels.eq(0).all()


# --- text -------------------------------------------------------------------------------------------------------
def _golden_text() -> dict:
    path = GOLDEN / "text_prompts.json"
    require_golden("radseg")
    return json.loads(path.read_text())


def test_templates_and_canonicalisation_match_golden() -> None:
    g = _golden_text()
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t.replace("{c}", "{}") for t in g["templates"]] == list(OPENAI_IMAGENET_TEMPLATES)
    for label, prompts, canon in zip(g["labels"], g["prompts"], g["canonicalized_prompts"]):
        assert fill_templates(label) == prompts
        assert [canonicalize_prompt(p) for p in prompts] == canon
    assert canonicalize_prompt("  Coffee_TABLE,  (wooden)! ") == "coffee table wooden"
    assert radseg.SIGLIP2_TOKENIZER_KWARGS == g["tokenizer_kwargs"]


class LookupTower:
    """Stands in for the SigLIP2 text tower: canonicalised prompt -> golden ``prompt_embeds_raw`` row."""

    def __init__(self) -> None:
        g = _golden_text()
        raw = np.load(GOLDEN / "text_embeds.npz")["prompt_embeds_raw"]
        self.table = {p: torch.from_numpy(raw[i, t]) for i, ps in enumerate(g["canonicalized_prompts"])
                      for t, p in enumerate(ps)}
        self.calls: list[str] = []

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.calls.extend(prompts)
        return torch.stack([self.table[p] for p in prompts])


@pytest.fixture(scope="module")
def encoder() -> RADSegEncoder:
    require_golden("radseg")
    return build_encoder("radseg", checkpoint=str(CKPT), slide_crop=336, slide_stride=112, scra=True, scga=True,
                         scra_tau=10.0, scga_tau=10.0, device="cpu")


@needs_golden
def test_encode_text_after_tower_matches_class_embeds(encoder: RADSegEncoder) -> None:
    g = _golden_text()
    z = np.load(GOLDEN / "text_embeds.npz")
    tower = LookupTower()
    encoder.text_tower = tower
    raw = encoder.encode_labels_raw(g["labels"])
    assert float((raw - torch.from_numpy(z["class_embeds"])).abs().max()) <= 1e-6
    text = encoder.encode_text(g["labels"])
    assert text.shape == (5, encoder.language_dim)
    assert torch.allclose(text, F.normalize(torch.from_numpy(z["class_embeds"]), dim=-1), atol=1e-6)
    assert tower.calls[:80] == g["canonicalized_prompts"][0]
    p = encoder.encode_prompts(["A photo of the SKY."])
    assert torch.allclose(p[0], F.normalize(tower.table["a photo of the sky"], dim=0))


# --- encoder API ------------------------------------------------------------------------------------------------
@needs_golden
def test_registry_and_dims(encoder: RADSegEncoder) -> None:
    assert ENCODERS.get("radseg") is RADSegEncoder
    assert isinstance(encoder, RADSegEncoder) and encoder.name == "radseg"
    assert (encoder.feature_dim, encoder.language_dim) == (64, 32)
    assert encoder.build_config["slide_stride"] == 112


@needs_golden
def test_encode_align_predict_shapes(encoder: RADSegEncoder) -> None:
    x = torch.rand(2, 3, 200, 300, generator=torch.Generator().manual_seed(0))
    feats = encoder.encode_image(x)
    assert feats.shape == (2, 64, 21, 21)  # 336x336 after resize, one window
    assert torch.allclose(feats[1:], encoder.encode_image(x[1:]))  # per-image, batch-independent
    lang = encoder.align_to_language(feats)
    assert lang.shape == (2, 32, 21, 21)
    per_voxel = encoder.align_to_language(feats.permute(0, 2, 3, 1).reshape(-1, 64))
    assert per_voxel.shape == (2 * 21 * 21, 32)
    assert torch.allclose(per_voxel, lang.permute(0, 2, 3, 1).reshape(-1, 32), atol=1e-6)
    text = torch.randn(4, 32)
    probs, labels = encoder.predict(x, text)
    assert probs.shape == (2, 5, 200, 300) and labels.shape == (2, 200, 300)
    assert labels.dtype == torch.int64 and labels.min() >= 1 and labels.max() <= 4
    assert probs[:, 0].abs().max() == 0
    with pytest.raises(ValueError, match=r"\(B, 64, h, w\) or \(\.\.\., 64\)"):
        encoder.align_to_language(torch.randn(3, 10))


@needs_golden
def test_bad_inputs(encoder: RADSegEncoder) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.encode_image(torch.full((1, 3, 64, 64), 255.0))
    with pytest.raises(ValueError, match="got 4 channels"):
        encoder.encode_image(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="must have shape"):
        encoder.encode_image(torch.rand(3, 64, 64))
    single = RADSegEncoder(checkpoint=str(CKPT), slide_crop=0)
    with pytest.raises(ValueError, match="slide_crop=0.*multiples of 16.*200x300"):
        single.encode_image(torch.rand(1, 3, 200, 300))
    assert single.encode_image(torch.rand(1, 3, 64, 96)).shape == (1, 64, 4, 6)
    with pytest.raises(ValueError, match="slide_crop"):
        RADSegEncoder(checkpoint=str(CKPT), slide_crop=100)
    with pytest.raises(ValueError, match="slide_stride"):
        RADSegEncoder(checkpoint=str(CKPT), slide_crop=336, slide_stride=0)
    with pytest.raises(KeyError, match="Available adaptors"):
        RADSegEncoder(checkpoint=str(CKPT), lang_adaptor="clip_l")
    with pytest.raises(ValueError, match="scga_mode"):
        RADSegEncoder(checkpoint=str(CKPT), scga_mode="sometimes")


@needs_golden
def test_scga_mode_multi_window(encoder: RADSegEncoder) -> None:
    """RayFronts' condition: SCGA only with more than one window."""
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    rf = RADSegEncoder(checkpoint=str(CKPT), slide_crop=0, scga_mode="multi_window")
    off = RADSegEncoder(checkpoint=str(CKPT), slide_crop=0, scga=False)
    on = RADSegEncoder(checkpoint=str(CKPT), slide_crop=0)
    assert torch.equal(rf.encode_image(x), off.encode_image(x))
    assert not torch.allclose(on.encode_image(x), off.encode_image(x))
    x2 = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(4))
    rf2 = RADSegEncoder(checkpoint=str(CKPT), slide_crop=224, slide_stride=112, scga_mode="multi_window")
    on2 = RADSegEncoder(checkpoint=str(CKPT), slide_crop=224, slide_stride=112)
    assert torch.equal(rf2.encode_image(x2), on2.encode_image(x2))


def test_average_prompt_embeddings_formula() -> None:
    raw = torch.randn(2, 3, 4)
    ref = torch.stack([torch.stack([r / r.norm() for r in raw[k]]).mean(0) for k in range(2)])
    assert torch.allclose(average_prompt_embeddings(raw), ref, atol=1e-6)


def test_hydra_config_matches_constructor() -> None:
    import inspect

    import yaml

    path = Path(__file__).resolve().parents[2] / "ovmap/configs/encoder/radseg.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == "radseg"
    params = inspect.signature(RADSegEncoder.__init__).parameters
    assert set(cfg) <= set(params)
    assert (cfg["version"], cfg["lang_adaptor"], cfg["slide_crop"], cfg["slide_stride"]) == (
        "c-radio_v3-b", "siglip2", 336, 112)
    assert cfg["scra"] and cfg["scga"] and cfg["scra_tau"] == cfg["scga_tau"] == 10.0
    for key, value in cfg.items():
        assert params[key].default == value, key


@needs_golden
def test_checkpoint_as_loaded_dict(encoder: RADSegEncoder) -> None:
    from ovmap.encoders.radio import load_raw_checkpoint

    sd, args = load_raw_checkpoint(CKPT)
    enc = RADSegEncoder(checkpoint={"state_dict": sd, "args": args}, slide_crop=336, slide_stride=112)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    assert torch.equal(enc.encode_image(x), encoder.encode_image(x))
