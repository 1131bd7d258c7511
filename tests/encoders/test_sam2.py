"""SAM 2.1 image path (ovmap/encoders/backbones/sam2.py): parameter counts against baselines.md §8, strict loading of
a tiny random model saved in the official layout, building blocks against independent computations, TextRegion with
a tiny SAM 2.1 end to end. Optional parity with the reference ``sam2`` package (OVMAP_SAM2_SRC=<sam2 sdist dir>)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovmap.encoders.backbones.sam2 import (
    Sam2Config,
    build_sam2,
    hiera_pos_embed,
    load_sam2,
    parameter_counts,
    q_pool,
    select_masks,
)
from ovmap.encoders.backbones.sam_vit import window_partition, window_unpartition

from _helpers.golden import require_golden

# ------------------------------------------------------------------------------------------------------------
# Parameter counts (spec §8: totals 38.96 / 46.06 / 80.85 / 224.45M, image encoders 27.22 / 34.32 / 69.11 /
# 212.70M, mask decoder 4.22M, memory modules 7.31M)
# ------------------------------------------------------------------------------------------------------------
SPEC = {"t": (38.96, 27.22), "s": (46.06, 34.32), "b+": (80.85, 69.11), "l": (224.45, 212.70)}


@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
def test_parameter_counts_match_spec(size: str) -> None:
    """Image encoder, mask decoder and whole checkpoint (image path + the video-only modules the official files
    carry) against the spec's §8 figures, measured there with the reference ``sam2`` package."""
    total, encoder = SPEC[size]
    c = parameter_counts(size)
    assert round(c["image_encoder"] / 1e6, 2) == pytest.approx(encoder, abs=1e-9)
    assert round(c["mask_decoder"] / 1e6, 2) == pytest.approx(4.22, abs=1e-9)
    # prompt encoder: 4 point embeddings + not-a-point + no-mask (256 each) + mask downscaling (1->4->16->256)
    pe = 6 * 256 + (4 * 4 + 4) + 2 * 4 + (16 * 4 * 4 + 16) + 2 * 16 + (256 * 16 + 256)
    assert c["prompt_encoder"] == pe
    assert round(c["official_total"] / 1e6, 2) == pytest.approx(total, abs=1e-9)


def test_parameter_counts_match_an_official_checkpoint() -> None:
    """The counts against the tensors of a checkpoint written by the official ``sam2`` code (the TextRegion golden
    tiny SAM 2.1, which holds every official key, video-only modules included)."""
    folder = require_golden("textregion") / "model"
    sd = torch.load(folder / "tiny_sam21_hiera.pt", map_location="cpu", weights_only=True)["model"]
    cfg = json.loads((folder / "tiny_sam21_hiera.config.json").read_text())
    c = parameter_counts(cfg)
    buffers = {"sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"}  # a buffer, not a parameter
    count = lambda *prefixes: sum(v.numel() for k, v in sd.items()  # noqa: E731
                                  if k.startswith(prefixes) and k not in buffers)
    assert c["image_encoder"] == count("image_encoder.")
    assert c["mask_decoder"] == count("sam_mask_decoder.")
    assert c["prompt_encoder"] == count("sam_prompt_encoder.")
    assert c["image_path"] == count("image_encoder.", "sam_mask_decoder.", "sam_prompt_encoder.", "no_mem_embed")
    assert count("memory_attention.", "memory_encoder.") > 0  # the video-only part the image path leaves out


# ------------------------------------------------------------------------------------------------------------
# Tiny random SAM 2.1 in the official layout
# ------------------------------------------------------------------------------------------------------------
TINY = {"embed_dim": 8, "num_heads": 1, "stages": [1, 2, 2, 1], "global_att_blocks": [4], "window_spec": [4, 2, 2, 2],
        "window_pos_embed_bkg_spatial_size": [3, 3], "d_model": 32, "image_size": 64, "mask_in_chans": 8,
        "decoder_heads": 2, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 16}

VIDEO_KEYS = {  # a few entries of each video-only group of the official files (shapes irrelevant: ignored)
    "memory_attention.layers.0.self_attn.q_proj.weight": (4, 4), "memory_attention.norm.weight": (4,),
    "memory_encoder.fuser.layers.0.dwconv.weight": (4, 1, 7, 7), "memory_encoder.out_proj.bias": (2,),
    "maskmem_tpos_enc": (7, 1, 1, 2), "no_mem_pos_enc": (1, 1, 32), "no_obj_ptr": (1, 32),
    "no_obj_embed_spatial": (1, 2), "obj_ptr_proj.layers.0.weight": (32, 32), "obj_ptr_tpos_proj.bias": (2,),
    "mask_downsample.weight": (1, 1, 4, 4),
}


def expected_image_keys(stages: list[int], mask_tokens: int = 4, depth: int = 2, iou_layers: int = 3) -> set[str]:
    """Official SAM 2.1 image-path key names, written out from the checkpoint layout (not from the module)."""
    keys = {"no_mem_embed"}
    t = "image_encoder.trunk."
    keys |= {t + "patch_embed.proj.weight", t + "patch_embed.proj.bias", t + "pos_embed", t + "pos_embed_window"}
    firsts = {sum(stages[:i]) for i in range(1, len(stages))}
    for i in range(sum(stages)):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.layers.0", "mlp.layers.1") + (
                ("proj",) if i in firsts else ()):
            keys |= {f"{t}blocks.{i}.{name}.weight", f"{t}blocks.{i}.{name}.bias"}
    keys |= {f"image_encoder.neck.convs.{i}.conv.{p}" for i in range(len(stages)) for p in ("weight", "bias")}
    p = "sam_prompt_encoder."
    keys |= {p + "pe_layer.positional_encoding_gaussian_matrix", p + "not_a_point_embed.weight",
             p + "no_mask_embed.weight"} | {f"{p}point_embeddings.{i}.weight" for i in range(4)}
    keys |= {f"{p}mask_downscaling.{i}.{w}" for i in (0, 1, 3, 4, 6) for w in ("weight", "bias")}
    d = "sam_mask_decoder."
    keys |= {d + "iou_token.weight", d + "mask_tokens.weight", d + "obj_score_token.weight"}
    lin = lambda name: {f"{name}.weight", f"{name}.bias"}
    for name in ["output_upscaling.0", "output_upscaling.1", "output_upscaling.3", "conv_s0", "conv_s1",
                 *[f"iou_prediction_head.layers.{i}" for i in range(iou_layers)],
                 *[f"pred_obj_score_head.layers.{i}" for i in range(3)],
                 *[f"output_hypernetworks_mlps.{m}.layers.{i}" for m in range(mask_tokens) for i in range(3)]]:
        keys |= lin(d + name)
    tr = d + "transformer."
    attn = ("q_proj", "k_proj", "v_proj", "out_proj")
    for li in range(depth):
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            for proj in attn:
                keys |= lin(f"{tr}layers.{li}.{a}.{proj}")
        for name in ("norm1", "norm2", "norm3", "norm4", "mlp.layers.0", "mlp.layers.1"):
            keys |= lin(f"{tr}layers.{li}.{name}")
    for proj in attn:
        keys |= lin(f"{tr}final_attn_token_to_image.{proj}")
    keys |= lin(tr + "norm_final_attn")
    return keys


def random_tiny(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_sam2(config)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn_like(prm) * 0.2)
    return model.eval()


def save_official(model, path: Path, config: dict | None = None) -> dict:
    sd = dict(model.state_dict())
    torch.manual_seed(1)
    sd.update({k: torch.randn(s) for k, s in VIDEO_KEYS.items()})
    torch.save({"model": sd}, path)
    if config is not None:
        path.with_name(path.name.split(".")[0] + ".config.json").write_text(json.dumps(config))
    return sd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2")
    model = random_tiny(TINY)
    save_official(model, folder / "sam2.1_hiera_tiny_test.pt", TINY)
    return model, folder / "sam2.1_hiera_tiny_test.pt"


def test_tiny_key_layout_and_strict_load(tiny, tmp_path) -> None:
    model, path = tiny
    assert set(model.state_dict()) == expected_image_keys(TINY["stages"])
    loaded = load_sam2(path)
    assert loaded.ignored_keys == sorted(VIDEO_KEYS)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fa, fb = model.image_features(x), loaded.image_features(x)
        assert fa["image_embed"].shape == (2, 32, 4, 4)
        assert [f.shape for f in fa["high_res_feats"]] == [(2, 4, 16, 16), (2, 8, 8, 8)]
        assert torch.equal(fa["image_embed"], fb["image_embed"])
    # config passed explicitly instead of the sibling json
    (path.with_name("other.pt")).write_bytes(path.read_bytes())
    assert load_sam2(path.with_name("other.pt"), config=TINY).cfg.embed_dim == 8
    with pytest.raises(ValueError, match="matches no published size"):
        load_sam2(path.with_name("other.pt"))


def test_loader_errors(tiny, tmp_path) -> None:
    _, path = tiny
    sd = torch.load(path, weights_only=True)["model"]
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_sam2(tmp_path / "missing.pt")
    cfg = tmp_path / "x.config.json"
    cfg.write_text(json.dumps(TINY))
    bad = dict(sd)
    del bad["sam_mask_decoder.conv_s0.weight"]
    torch.save({"model": bad}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt.*missing keys \['sam_mask_decoder\.conv_s0\.weight'\]"):
        load_sam2(tmp_path / "x.pt")
    bad = dict(sd)
    bad["sam_mask_decoder.extra.weight"] = torch.zeros(1)
    bad["something_else"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"unknown keys \['something_else'\]"):
        load_sam2(tmp_path / "x.pt")
    del bad["something_else"]
    torch.save({"model": bad}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \['sam_mask_decoder\.extra\.weight'\]"):
        load_sam2(tmp_path / "x.pt")


def test_published_size_inferred_from_shapes(tmp_path) -> None:
    # hiera-t trunk width/depth on the meta device -> a tiny-sized fake state dict with the t trunk's key shapes
    with torch.device("meta"):
        t = build_sam2("t")
    sd = {k: torch.zeros(v.shape) if k.startswith("image_encoder.trunk.patch_embed") else None
          for k, v in t.state_dict().items()}
    from ovmap.encoders.backbones.sam2 import infer_sam2_config

    assert infer_sam2_config(sd).global_att_blocks == (5, 7, 9)


# ------------------------------------------------------------------------------------------------------------
# Building blocks against independent computations
# ------------------------------------------------------------------------------------------------------------
def test_window_partition_round_trip_vs_loop() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 7, 10, 3)
    ws = 4
    win, (hp, wp) = window_partition(x, ws)
    assert (hp, wp) == (8, 12) and win.shape == (2 * 2 * 3, 4, 4, 3)
    padded = torch.zeros(2, 8, 12, 3)
    padded[:, :7, :10] = x
    k = 0
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert torch.equal(win[k], padded[b, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws])
                k += 1
    assert torch.equal(window_unpartition(win, ws, (hp, wp), (7, 10)), x)


def test_q_pool_vs_explicit_max() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 3)  # odd width: the last column is dropped (floor)
    out = q_pool(x, (2, 2))
    assert out.shape == (2, 3, 2, 3)
    for i in range(3):
        for j in range(2):
            ref = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax(dim=(1, 2))
            assert torch.equal(out[:, i, j], ref)


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> torch.Tensor:
    """Bicubic (Keys, a = −0.75) resampling matrix, half-pixel centres, clamped borders."""
    def w(t: float) -> list[float]:
        c1 = lambda s: ((a + 2) * s - (a + 3)) * s * s + 1
        c2 = lambda s: ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
        return [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(src)
        for k, wk in zip(range(x0 - 1, x0 + 3), w(src - x0)):
            m[i, min(max(k, 0), n_in - 1)] += wk
    return m


def test_window_pos_embed_vs_hand_computation() -> None:
    torch.manual_seed(0)
    bkg, win = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4, 4)
    out = hiera_pos_embed(bkg, win, (8, 12))
    assert out.shape == (1, 8, 12, 2)
    mh, mw = _cubic_matrix(3, 8), _cubic_matrix(3, 12)
    for c in range(2):
        interp = mh @ bkg[0, c].double() @ mw.T
        for y in range(8):
            for x in range(12):
                ref = interp[y, x] + win[0, c, y % 4, x % 4].double()
                assert abs(float(out[0, y, x, c]) - float(ref)) < 1e-5
    # same size: bicubic is the identity, only the tiled window table is added
    same = hiera_pos_embed(bkg, win[..., :3, :3], (3, 3))
    assert torch.allclose(same[0].permute(2, 0, 1), bkg[0] + win[0, :, :3, :3], atol=1e-6)


def test_hiera_q_pool_block_vs_explicit() -> None:
    """A global stage-transition block: pooled queries, doubled width/heads, pooled proj shortcut."""
    from ovmap.encoders.backbones.sam2 import HieraBlock

    torch.manual_seed(0)
    blk = HieraBlock(4, 8, 2, 4.0, (2, 2), window_size=0).eval()
    x = torch.randn(1, 4, 6, 4)
    with torch.no_grad():
        out = blk(x)
        z = F.layer_norm(x, (4,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        qkv = z @ blk.attn.qkv.weight.T + blk.attn.qkv.bias  # (1, 4, 6, 24)
        q, k, v = qkv[..., :8], qkv[..., 8:16], qkv[..., 16:]
        qp = torch.stack([torch.stack([q[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(4, 8).amax(0)
                                       for j in range(3)]) for i in range(2)])  # (2, 3, 8)
        heads = []
        for h in range(2):
            qh, kh, vh = qp[..., 4 * h:4 * h + 4].reshape(6, 4), k[0, ..., 4 * h:4 * h + 4].reshape(24, 4), \
                v[0, ..., 4 * h:4 * h + 4].reshape(24, 4)
            heads.append(torch.softmax(qh @ kh.T / 2.0, -1) @ vh)
        att = torch.cat(heads, -1) @ blk.attn.proj.weight.T + blk.attn.proj.bias  # (6, 8)
        sc = (z @ blk.proj.weight.T + blk.proj.bias)[0]
        sc = torch.stack([torch.stack([sc[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(4, 8).amax(0)
                                       for j in range(3)]) for i in range(2)]).reshape(6, 8)
        y = sc + att
        y2 = F.layer_norm(y, (8,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        mlp = F.gelu(y2 @ blk.mlp.layers[0].weight.T + blk.mlp.layers[0].bias) @ blk.mlp.layers[1].weight.T \
            + blk.mlp.layers[1].bias
        assert torch.allclose(out[0].reshape(6, 8), y + mlp, atol=1e-5)


def test_windowed_block_equals_per_window_global_block() -> None:
    """Window attention = the same block run globally on each (zero-padded) window, then cropped."""
    from ovmap.encoders.backbones.sam2 import HieraBlock

    torch.manual_seed(0)
    blk = HieraBlock(8, 8, 2, 4.0, None, window_size=4).eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        out = blk(x)
        glob = HieraBlock(8, 8, 2, 4.0, None, window_size=0).eval()
        glob.load_state_dict(blk.state_dict())
        for i in range(2):
            for j in range(2):
                ref = glob(x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4])
                assert torch.allclose(out[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4], ref, atol=1e-5)


def test_hiera_stage_layout() -> None:
    """Window sizes (the transition block keeps the previous stage's), global blocks, widths, heads, strides."""
    from ovmap.encoders.backbones.sam2 import Hiera

    with torch.device("meta"):
        trunk = Hiera(Sam2Config(**{**Sam2Config().__dict__, "stages": (1, 2, 7, 2), "global_att_blocks": (5, 7, 9)}))
    ws = [b.window_size for b in trunk.blocks]
    assert ws == [8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7]
    assert [b.dim_out for b in trunk.blocks] == [96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 768, 768]
    assert [b.attn.num_heads for b in trunk.blocks] == [1, 2, 2] + [4] * 7 + [8, 8]
    assert [i for i, b in enumerate(trunk.blocks) if b.q_stride] == [1, 3, 10]
    assert Sam2Config().embedding_size == 64 and Sam2Config().backbone_channel_list == [768, 384, 192, 96]


def test_fpn_neck_vs_explicit() -> None:
    from ovmap.encoders.backbones.sam2 import FpnNeck

    torch.manual_seed(0)
    cfg = Sam2Config(**{**TINY, "stages": (1, 1, 1, 1)})
    neck = FpnNeck(cfg).eval()
    chans = [8, 16, 32, 64]
    xs = [torch.randn(1, c, 16 >> i, 16 >> i) for i, c in enumerate(chans)]
    with torch.no_grad():
        out = neck(xs)
        lat = [torch.einsum("oc,bchw->bohw", neck.convs[3 - i].conv.weight[:, :, 0, 0], xs[i])
               + neck.convs[3 - i].conv.bias[:, None, None] for i in range(4)]
        up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)
        ref3 = lat[3]
        ref2 = lat[2] + up(ref3)  # level 2 is top-down
        ref1, ref0 = lat[1], lat[0]  # levels 1, 0: lateral only
    for o, r in zip(out, [ref0, ref1, ref2, ref3]):
        assert torch.allclose(o, r, atol=1e-5)


def test_select_masks_rule_vs_explicit() -> None:
    torch.manual_seed(0)
    masks = torch.randn(3, 4, 8, 8)
    masks[0, 0] = torch.where(masks[0, 0] > 0, 5.0, -5.0)  # stable single mask
    masks[1, 0] = torch.linspace(-0.1, 0.1, 64).reshape(8, 8)  # unstable: 31/38 inside (-0.05, 0.05]
    iou = torch.rand(3, 4)
    m, i = select_masks(masks, iou, multimask=True)
    assert torch.equal(m, masks[:, 1:]) and torch.equal(i, iou[:, 1:])
    m, i = select_masks(masks, iou, multimask=False, dynamic=False)
    assert torch.equal(m, masks[:, :1])
    m, i = select_masks(masks, iou, multimask=False)
    for b in range(3):
        flat = masks[b, 0].flatten()
        stab = float((flat > 0.05).sum()) / max(float((flat > -0.05).sum()), 1.0)
        k = 0 if stab >= 0.98 else 1 + int(iou[b, 1:].argmax())
        assert torch.equal(m[b, 0], masks[b, k]) and float(i[b, 0]) == float(iou[b, k])
    assert float(m[0, 0, 0, 0]) in (5.0, -5.0) and not torch.equal(m[1, 0], masks[1, 0])


def test_mask_decoder_outputs(tiny) -> None:
    model, _ = tiny
    torch.manual_seed(2)
    with torch.no_grad():
        feats = model.image_features(torch.randn(1, 3, 64, 64))
        pts, lab = torch.rand(5, 1, 2) * 64, torch.ones(5, 1)
        m3, i3, o3 = model.predict(feats, pts, lab, multimask=True)
        m1, i1, _ = model.predict(feats, pts, lab, multimask=False)
        all_m, _, o = model.sam_mask_decoder.predict_all(
            feats["image_embed"], model.sam_prompt_encoder.dense_pe(),
            *model.sam_prompt_encoder((pts, lab), None, None), feats["high_res_feats"])
    assert m3.shape == (5, 3, 16, 16) and i3.shape == (5, 3) and o3.shape == (5, 1)
    assert m1.shape == (5, 1, 16, 16) and i1.shape == (5, 1)
    assert ((i3 > 0) & (i3 < 1)).all()  # sigmoid IoU head
    assert torch.allclose(m3, all_m[:, 1:], atol=1e-5) and torch.allclose(o, o3)
    for b in range(5):  # the single output is output 0 or the best-IoU multimask output
        assert any(torch.allclose(m1[b, 0], all_m[b, k], atol=1e-5) for k in range(4))
    # per-prompt decoding equals batched decoding
    with torch.no_grad():
        single = model.predict(feats, pts[2:3], lab[2:3], multimask=True)[0]
    assert torch.allclose(single[0], m3[2], atol=1e-4)


def test_point_predictor_chunks(tiny) -> None:
    model, _ = tiny
    rgb = torch.rand(1, 3, 30, 50)
    pts = torch.rand(7, 2) * 64
    a = model.point_predictor(rgb, points_per_batch=3)(pts)
    b = model.point_predictor(rgb, points_per_batch=64)(pts)
    assert a[0].shape == (7, 3, 16, 16) and torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1])


# ------------------------------------------------------------------------------------------------------------
# TextRegion with a tiny SAM 2.1
# ------------------------------------------------------------------------------------------------------------
def test_textregion_with_tiny_sam2(tmp_path) -> None:
    from _helpers_tiny import TINY_CLIP

    from ovmap.encoders.clip import CLIP
    from ovmap.encoders.textregion import TextRegionEncoder

    torch.manual_seed(0)
    torch.save(CLIP(TINY_CLIP).state_dict(), tmp_path / "clip.pt")
    cfg = {**TINY, "image_size": 128}
    save_official(random_tiny(cfg, seed=5), tmp_path / "sam2.1_tiny.pt", cfg)
    enc = TextRegionEncoder(clip_checkpoint=str(tmp_path / "clip.pt"), mask_model="sam2",
                            sam2_checkpoint=str(tmp_path / "sam2.1_tiny.pt"), clip_heads=4, clip_text_heads=4,
                            crop_size=32, points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.0,
                            min_size=0, sam2_points_per_batch=5)
    assert enc.mask_kwargs["input_size"] == 128
    torch.manual_seed(1)
    rgb = torch.rand(1, 3, 40, 72)
    masks = enc.region_masks(rgb)
    assert masks.ndim == 3 and masks.shape[1:] == (40, 72) and len(masks) > 0
    assert float(masks.min()) >= 0 and float(masks.max()) <= 3
    parts = enc.encode_parts(rgb)
    assert parts["tokens"].shape[0] == parts["masks"].shape[0]
    feats = enc.encode_image(rgb)
    assert feats.shape == (1, 16, 10, 18) and torch.isfinite(feats).all()
    text = enc.encode_text(["chair", "table"])
    for space in ("cosine", "textregion"):
        enc.prob_space = space
        probs, _ = enc.predict(rgb, text)
        assert probs.shape == (1, 3, 40, 72) and torch.allclose(probs[:, 1:].sum(1), torch.ones(1, 40, 72), atol=1e-5)
    with pytest.raises(ValueError, match="sam2_checkpoint"):
        TextRegionEncoder(clip_checkpoint=str(tmp_path / "clip.pt"), mask_model="sam2", clip_heads=4,
                          clip_text_heads=4)


# ------------------------------------------------------------------------------------------------------------
# Optional parity with the reference package (source tree of the sam2 sdist; needs hydra-core + omegaconf)
# ------------------------------------------------------------------------------------------------------------
PARITY = textwrap.dedent("""
    import sys, types, torch
    iop = types.ModuleType("iopath"); cm = types.ModuleType("iopath.common"); fio = types.ModuleType("iopath.common.file_io")
    fio.g_pathmgr = None; sys.modules.update({"iopath": iop, "iopath.common": cm, "iopath.common.file_io": fio})
    sys.path.insert(0, sys.argv[1])
    from sam2.build_sam import build_sam2 as ref_build
    from ovmap.encoders.backbones.sam2 import load_sam2
    torch.manual_seed(0)
    ref = ref_build("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", mode="eval")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save({"model": ref.state_dict()}, sys.argv[2])
    mine = load_sam2(sys.argv[2])
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        bo = ref.forward_image(x)
        _, vf, _, sizes = ref._prepare_backbone_features(bo)
        vf[-1] = vf[-1] + ref.no_mem_embed
        rf = [f.permute(1, 2, 0).reshape(1, -1, *s) for f, s in zip(vf, sizes)]
        mf = mine.image_features(x)
        assert torch.allclose(rf[-1], mf["image_embed"], atol=1e-4)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(rf[:-1], mf["high_res_feats"]))
        emb = torch.randn(1, 256, 64, 64); hr = [torch.randn(1, 32, 256, 256), torch.randn(1, 64, 128, 128)]
        pts, lab = torch.rand(4, 1, 2) * 1024, torch.ones(4, 1)
        sp, de = ref.sam_prompt_encoder(points=(pts, lab), boxes=None, masks=None)
        for mm in (True, False):
            rm, ri, _, ro = ref.sam_mask_decoder(emb, ref.sam_prompt_encoder.get_dense_pe(), sp, de, mm, True, hr)
            m, i, o = mine.predict({"image_embed": emb, "high_res_feats": hr}, pts, lab, multimask=mm)
            assert torch.allclose(rm, m, atol=1e-4) and torch.allclose(ri, i, atol=1e-5) and torch.allclose(ro, o, atol=1e-5)
    print("PARITY OK")
""")


@pytest.mark.skipif(not os.environ.get("OVMAP_SAM2_SRC"), reason="set OVMAP_SAM2_SRC=<sam2 sdist source dir>")
def test_parity_with_reference_sam2(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", PARITY, os.environ["OVMAP_SAM2_SRC"], str(tmp_path / "t.pt")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert "PARITY OK" in proc.stdout, proc.stderr[-3000:]
