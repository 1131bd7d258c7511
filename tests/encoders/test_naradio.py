"""NARADIO: golden parity with RayFronts' ``NARadioEncoder`` (``shared/golden/radseg/ref_naradio_*``) and the maths.

Golden tolerances (README of the golden set, never loosened): features max|a−b| ≤ 1e-3·max|ref|; lang features
≤ 2e-3·max|ref|; cos_sim atol 1e-3; probabilities atol 2e-3. The Gaussian bias is compared exactly (atol 1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers.cli_eval import synthetic_eval
from _helpers.tiny_siglip2 import write_tiny_siglip2
from _helpers.golden import golden_root
from ovmap.encoders.naradio import (
    NARadioEncoder,
    gauss_grid_shape,
    gaussian_bias,
    kk_gauss_attention,
)
from ovmap.encoders.radseg import seg_logits

GOLDEN = golden_root() / "radseg"
CKPT = GOLDEN / "model" / "tiny_c-radio_v3.safetensors"
CASES = ["ref_naradio_img0_224x224.npz", "ref_naradio_img2_240x352.npz"]

needs_golden = pytest.mark.usefixtures("radseg_golden")  # skips loudly / fails in CI when absent


def _load_image(rel: str) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(GOLDEN / rel).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


def _rel(a: torch.Tensor, ref: np.ndarray) -> float:
    r = torch.from_numpy(np.asarray(ref)).float()
    assert tuple(a.shape) == tuple(r.shape), (tuple(a.shape), tuple(r.shape))
    return float((a.float() - r).abs().max() / r.abs().max())


def _abs(a: torch.Tensor, ref: np.ndarray) -> float:
    r = torch.from_numpy(np.asarray(ref)).float()
    assert tuple(a.shape) == tuple(r.shape), (tuple(a.shape), tuple(r.shape))
    return float((a.float() - r).abs().max())


# --- pure maths ---------------------------------------------------------------------------------------------
def test_gaussian_bias_values() -> None:
    sigma, p = 7.0, 3
    g = gaussian_bias(4, 5, sigma, p)
    assert g.shape == (p + 20, p + 20)
    assert torch.equal(g, g.T)
    assert torch.all(g[:p] == 0) and torch.all(g[:, :p] == 0)
    assert torch.allclose(torch.diagonal(g)[p:], torch.ones(20))
    # token (1, 2) -> index 1*5+2 = 7; its right neighbour (1, 3) = 8; below (2, 2) = 12; diagonal (2, 3) = 13
    nb = np.exp(-1 / (2 * sigma**2))
    assert abs(float(g[p + 7, p + 8]) - nb) < 1e-7 and abs(float(g[p + 7, p + 12]) - nb) < 1e-7
    assert abs(float(g[p + 7, p + 13]) - np.exp(-2 / (2 * sigma**2))) < 1e-7
    # (0, 4) and (1, 0) are adjacent in memory but far apart on the grid
    assert abs(float(g[p + 4, p + 5]) - np.exp(-(1 + 16) / (2 * sigma**2))) < 1e-7


def test_grid_orientation() -> None:
    assert gauss_grid_shape(240, 352, 16, "row_major") == (15, 22)
    assert gauss_grid_shape(240, 352, 16, "rayfronts") == (22, 15)
    with pytest.raises(ValueError):
        gauss_grid_shape(240, 352, 16, "columns")


def test_kk_attention_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    b, n, c, h = 2, 7, 12, 3
    d = c // h
    u = torch.randn(b, n, c)
    wq, bq = torch.randn(3 * c, c), torch.randn(3 * c)
    wp, bp = torch.randn(c, c), torch.randn(c)
    bias = torch.rand(n, n)
    out = kk_gauss_attention(u, wq, bq, wp, bp, h, bias)
    ref = torch.zeros(b, n, c)
    for bi in range(b):
        qkv = u[bi] @ wq.T + bq
        k, v = qkv[:, c:2 * c], qkv[:, 2 * c:]
        heads = []
        for hi in range(h):
            kh, vh = k[:, hi * d:(hi + 1) * d], v[:, hi * d:(hi + 1) * d]
            logits = kh @ kh.T / np.sqrt(d) + bias
            heads.append(torch.softmax(logits, -1) @ vh)
        ref[bi] = torch.cat(heads, -1) @ wp.T + bp
    assert torch.allclose(out, ref, atol=1e-4)
    # the query third is unused
    wq2 = wq.clone()
    wq2[:c] = 0
    assert torch.allclose(kk_gauss_attention(u, wq2, bq, wp, bp, h, bias), out)


# --- golden -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoders() -> dict[str, NARadioEncoder]:
    return {g: NARadioEncoder(checkpoint=str(CKPT), gauss_grid=g) for g in ("rayfronts", "row_major")}


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_golden_naradio(case: str, encoders: dict[str, NARadioEncoder]) -> None:
    cfg = json.loads((GOLDEN / "cases.json").read_text())[case]
    z = np.load(GOLDEN / case)
    enc = encoders["rayfronts"]
    assert enc.gauss_std == cfg["gauss_std"]
    x = _load_image(cfg["image"])
    h, w = x.shape[-2:]
    assert _abs(enc.attention_bias(h, w), z["gauss_attn_addition"]) <= 1e-6
    feats = enc.encode_image(x)
    assert _rel(feats, z["feat_map"]) <= 1e-3
    lang = enc.align_to_language(feats)
    assert _rel(lang, z["lang_feats"]) <= 2e-3
    gvec = enc.encode_global(x)
    assert _rel(gvec, z["global_vec"]) <= 1e-3
    assert _rel(enc.align_to_language(gvec), z["global_lang"]) <= 2e-3
    cos, probs = seg_logits(lang, torch.from_numpy(z["class_embeds"]))
    assert _abs(cos, z["cos_sim"]) <= 1e-3
    assert _abs(probs, z["probs_lowres"]) <= 2e-3
    # predict: the generic path gives the same argmax at feature resolution
    p, labels = enc.predict(x, torch.from_numpy(z["class_embeds"]))
    assert p.shape == (1, 6, h, w) and labels.shape == (1, h, w)


@needs_golden
def test_row_major_grid_differs_only_on_non_square(encoders: dict[str, NARadioEncoder]) -> None:
    sq = _load_image("images/img0_224x224.png")
    assert torch.equal(encoders["row_major"].encode_image(sq), encoders["rayfronts"].encode_image(sq))
    ns = _load_image("images/img2_240x352.png")
    g = encoders["row_major"].attention_bias(240, 352)
    assert torch.equal(g, gaussian_bias(15, 22, 7.0, 8))
    assert not torch.allclose(encoders["row_major"].encode_image(ns), encoders["rayfronts"].encode_image(ns))


@needs_golden
def test_input_normalization_switch_and_errors() -> None:
    enc = NARadioEncoder(checkpoint=str(CKPT), input_normalization="none")
    x = _load_image("images/img0_224x224.png")
    ref = NARadioEncoder(checkpoint=str(CKPT))
    assert not torch.allclose(enc.encode_image(x), ref.encode_image(x))
    # "none" feeds x to the ViT unnormalised: the same as the conditioned model fed x·σ + μ
    mean = ref.radio.input_conditioner.norm_mean
    std = ref.radio.input_conditioner.norm_std
    assert torch.allclose(enc.forward_tokens(x), ref.forward_tokens(x * std + mean), atol=1e-4)
    # sizes that are not multiples of 16 are resized to the nearest multiples
    odd = torch.rand(1, 3, 30, 41)
    assert ref.output_size(30, 41) == (2, 3)
    resized = F.interpolate(odd, size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.equal(ref.encode_image(odd), ref.encode_image(resized))
    with pytest.raises(ValueError, match="gauss_grid"):
        NARadioEncoder(checkpoint=str(CKPT), gauss_grid="nope")
    with pytest.raises(KeyError, match="Available adaptors"):
        NARadioEncoder(checkpoint=str(CKPT), lang_adaptor="siglip")


@needs_golden
def test_siglip2_g_alias_and_text_average(encoders: dict[str, NARadioEncoder]) -> None:
    enc = NARadioEncoder(checkpoint=str(CKPT), lang_adaptor="siglip2-g")
    assert enc.lang_adaptor == "siglip2" and enc.language_dim == 32
    z = np.load(GOLDEN / "text_embeds.npz")
    raw = torch.from_numpy(z["prompt_embeds_raw"])  # (5, 80, 32)
    enc.text_tower = lambda prompts: raw.reshape(-1, raw.shape[-1])[: len(prompts)]
    out = enc.encode_labels_raw(["sky", "grass", "sheep", "mountain", "road"])
    assert _abs(out, z["class_embeds"]) <= 1e-6
    t = enc.encode_text(["sky", "grass", "sheep", "mountain", "road"])
    assert torch.allclose(t.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(t, F.normalize(out, dim=-1))


@needs_golden
def test_ovmap_eval_end_to_end(tmp_path: Path) -> None:
    """`ovmap eval dataset=synthetic encoder=naradio` with the tiny golden RADIO and a tiny random SigLIP2 tower."""
    pytest.importorskip("transformers")
    words = {w for t in ("a photo of a {}.", "a bad photo of the {}.") for w in t.split()} | {"chair", "wall"}
    write_tiny_siglip2(tmp_path / "siglip2", words)
    doc = synthetic_eval(tmp_path, "naradio", f"encoder.checkpoint={CKPT}",
                         f"encoder.text_model={tmp_path / 'siglip2'}", env={"HF_HUB_OFFLINE": "1"})
    assert doc["scenes"]["synthetic_seed0"]["num_map_voxels"] > 0
