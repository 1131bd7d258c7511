"""CLIP (vision + text, OpenAI key layout), the CLIP BPE tokenizer and DINO: loading, maths, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovmap.encoders.clip import (
    CLIP,
    CLIP_CONFIGS,
    CLIPConfig,
    CLIPTextEncoder,
    load_clip,
    resize_clip_pos_embed,
)
from ovmap.encoders.dino import DinoViT, load_dino
from ovmap.encoders.tokenizer_clip import CLIPTokenizer, default_tokenizer

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4,
                  context_length=77, vocab_size=49408, text_width=32, text_layers=2, text_heads=4)


def expected_clip_keys(layers: int, text_layers: int) -> set[str]:
    """Hand-written key list of the OpenAI CLIP layout (spec §7)."""
    blk = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
           "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
           "mlp.c_proj.bias"]
    keys = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
            "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias", "visual.proj",
            "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
            "logit_scale"}
    keys |= {f"visual.transformer.resblocks.{i}.{b}" for i in range(layers) for b in blk}
    keys |= {f"transformer.resblocks.{i}.{b}" for i in range(text_layers) for b in blk}
    return keys


def _script_archive(sd: dict[str, torch.Tensor], path) -> None:
    """Write a TorchScript archive holding ``sd`` under its dotted names (like OpenAI's ``.pt`` files)."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, val in sd.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, Holder())
            mod = getattr(mod, name)
        mod.register_parameter(leaf, nn.Parameter(val.clone(), requires_grad=False))
    for name, val in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(name, torch.tensor(val))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    torch.manual_seed(0)
    model = CLIP(TINY).eval()
    sd = {k: v.half() for k, v in model.state_dict().items()}  # OpenAI files hold fp16 tensors
    assert set(sd) == expected_clip_keys(2, 2)
    path = tmp_path_factory.mktemp("clip") / "ViT-T-8.pt"
    _script_archive(sd, path)
    return path, model


# --- tokenizer ----------------------------------------------------------------------------------------------
def test_tokenizer_known_answer() -> None:
    tok = default_tokenizer()
    assert tok.vocab_size == 49408 and tok.sot_id == 49406 and tok.eot_id == 49407
    ids = tok(["a photo of a chair."])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 4269, 269, 49407]
    assert int(ids[0, 8:].abs().sum()) == 0
    # cleaning: case, whitespace, html entities
    assert tok(["A   Photo of a CHAIR."]).tolist() == ids.tolist()
    assert tok.encode("&amp;") == tok.encode("&")


def test_tokenizer_too_long() -> None:
    long = "chair " * 100
    with pytest.raises(ValueError, match="context length"):
        default_tokenizer()([long])
    ids = CLIPTokenizer(truncate=True)([long])
    assert ids.shape == (1, 77) and int(ids[0, -1]) == 49407


def test_tokenizer_missing_vocab(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        CLIPTokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")


# --- CLIP ---------------------------------------------------------------------------------------------------
def test_torchscript_archive_loads_strictly(tiny_clip_file) -> None:
    path, model = tiny_clip_file
    loaded = load_clip(path, vision_heads=4, text_heads=4)
    assert loaded.cfg.patch_size == 8 and loaded.cfg.image_size == 32 and loaded.cfg.embed_dim == 16
    ref = {k: v.half().float() for k, v in model.state_dict().items()}
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    vis = load_clip(path, vision_heads=4, vision_only=True)
    assert not hasattr(vis, "token_embedding")
    sd = dict(model.state_dict())
    sd["visual.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_clip(sd, vision_heads=4, text_heads=4)
    with pytest.raises(FileNotFoundError, match="ViT-B-16.pt"):
        load_clip(path.parent / "nope.pt")


def test_blocks_match_torch_multihead_attention() -> None:
    torch.manual_seed(1)
    model = CLIP(TINY).eval()
    block = model.visual.transformer.resblocks[0]
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict(block.attn.state_dict())
    x = torch.randn(2, 5, 32)
    u = block.ln_1(x)
    with torch.no_grad():
        ref = x + mha(u, u, u, need_weights=False)[0]
        ref = ref + block.mlp.c_proj(block.mlp.c_fc(block.ln_2(ref)) * torch.sigmoid(1.702 * block.mlp.c_fc(
            block.ln_2(ref))))
        assert torch.allclose(block(x), ref, atol=1e-5)
        # value() is the value third of in_proj
        v = block.attn.value(u)
        assert torch.allclose(v, u @ block.attn.in_proj_weight[64:].T + block.attn.in_proj_bias[64:], atol=1e-6)


def test_positional_resize() -> None:
    torch.manual_seed(2)
    pos = torch.randn(1 + 16, 8)  # M = 4
    assert resize_clip_pos_embed(pos, 4, 4) is pos
    out = resize_clip_pos_embed(pos, 6, 5)
    assert out.shape == (1 + 30, 8) and torch.equal(out[0], pos[0])
    grid = pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False)
    by_size = by_size.permute(0, 2, 3, 1).reshape(30, 8)
    assert not torch.allclose(out[1:], by_size, atol=1e-4)  # the scale-factor call differs (dino #8)
    by_scale = F.interpolate(grid, scale_factor=(6.1 / 4, 5.1 / 4), mode="bicubic", align_corners=False)
    assert torch.allclose(out[1:], by_scale.permute(0, 2, 3, 1).reshape(30, 8))


def test_vision_and_text_forward(tiny_clip_file) -> None:
    path, _ = tiny_clip_file
    model = load_clip(path, vision_heads=4, text_heads=4)
    x = torch.randn(2, 3, 48, 40)
    tokens, hw = model.visual.tokens_before_last(x)
    assert hw == (6, 5) and tokens.shape == (2, 31, 32)
    assert model.visual(x).shape == (2, 16)
    enc = CLIPTextEncoder(model)
    ids = enc.tokenizer(["a photo of a chair.", "a chair"])
    out = model.encode_text(ids)
    ids2 = ids.clone()
    ids2[0, 20] = 500  # after EOT: invisible to the EOT token under the causal mask
    assert torch.allclose(model.encode_text(ids2)[0], out[0], atol=1e-5)
    emb = enc.labels(["chair", "sofa"], templates=["a photo of a {}.", "art of the {}."])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    manual = F.normalize(F.normalize(enc.prompts(["a photo of a chair.", "art of the chair."]), dim=-1).mean(0), dim=0)
    assert torch.allclose(emb[0], manual, atol=1e-6)


# --- DINO ---------------------------------------------------------------------------------------------------
def test_dino_loads_strictly_and_runs(tmp_path) -> None:
    torch.manual_seed(3)
    model = DinoViT(embed_dim=32, depth=2, num_heads=4, patch_size=8, image_size=32)
    sd = model.state_dict()
    blk = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
           "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"} | {f"blocks.{i}.{b}" for i in range(2) for b in blk}
    assert set(sd) == expected
    torch.save(sd, tmp_path / "dino.pth")
    loaded = load_dino(tmp_path / "dino.pth", num_heads=4)
    x = torch.randn(1, 3, 48, 48)
    tok, hw = loaded.patch_tokens(x)
    assert hw == (6, 6) and tok.shape == (1, 36, 32)
    assert torch.allclose(tok, model.patch_tokens(x)[0])
    with pytest.raises(ValueError, match="missing keys"):
        load_dino({k: v for k, v in sd.items() if k != "norm.bias"}, num_heads=4)


# --- parameter counts at real sizes (spec §8) ---------------------------------------------------------------
def _count(m: nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_parameter_counts_real_sizes() -> None:
    expected = {"ViT-B/16": (149.62, 86.19), "ViT-L/14": (427.62, 303.97), "ViT-L/14@336px": (427.94, 304.29),
                "ViT-H-14": (986.11, 632.08)}
    with torch.device("meta"):
        for name, (total, vision) in expected.items():
            model = CLIP(CLIP_CONFIGS[name])
            assert math.isclose(_count(model), total, abs_tol=0.01), name
            assert math.isclose(_count(model.visual), vision, abs_tol=0.01), name
        assert math.isclose(_count(DinoViT(patch_size=16)), 85.80, abs_tol=0.01)
        assert math.isclose(_count(DinoViT(patch_size=8)), 85.81, abs_tol=0.01)
