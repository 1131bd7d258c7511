"""RADIO backbone, checkpoint loading, adaptor heads and version resolution (``ovmap.encoders.radio``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers.golden import golden_root, require_golden
from ovmap.encoders.radio import (
    MLP2,
    RadioArch,
    RadioModel,
    build_radio,
    cpe_position_embedding,
    load_adaptor_mlp,
    load_raw_checkpoint,
    patchify,
    resolve_checkpoint,
)

GOLDEN = golden_root() / "radseg"
CKPT = GOLDEN / "model" / "tiny_c-radio_v3.safetensors"
needs_golden = pytest.mark.usefixtures("radseg_golden")  # skips loudly / fails in CI when absent


# --- pure pieces ------------------------------------------------------------------------------------------------
def test_patchify_channel_y_x_order() -> None:
    img = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = patchify(img, 2)  # (2, 2*3, 12)
    assert out.shape == (2, 6, 12)
    # patch (row 1, col 2) of image 1: channel-major, then y, then x
    expect = img[1, :, 2:4, 4:6].reshape(-1)
    assert torch.equal(out[1, 1 * 3 + 2], expect)


def test_cpe_identity_at_full_grid_and_top_left_crop() -> None:
    g, c = 8, 5
    pe = torch.randn(1, g * g, c)
    assert torch.equal(cpe_position_embedding(pe, g, g, g), pe)
    out = cpe_position_embedding(pe, g, 3, 5)
    grid = pe.reshape(1, g, g, c).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(5, 5), mode="bilinear", align_corners=False)[:, :, :3, :5]
    assert torch.allclose(out, ref.flatten(2).transpose(1, 2))
    assert out.shape == (1, 15, c)


def test_mlp2_matches_formula() -> None:
    torch.manual_seed(0)
    mlp = MLP2(6, 10, 4, num_inner=2)
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 6)

    def ln_gelu_lin(mod, h):
        ln, lin = getattr(mod, "0"), getattr(mod, "2")
        return F.linear(F.gelu(F.layer_norm(h, (h.shape[-1],), ln.weight, ln.bias, 1e-5)), lin.weight, lin.bias)

    h = F.linear(x, mlp.fc1.weight, mlp.fc1.bias)
    for blk in mlp.blocks:
        h = h + ln_gelu_lin(blk, h)
    ref = ln_gelu_lin(mlp.final, h)
    assert torch.allclose(mlp(x), ref, atol=1e-6)


# --- checkpoint loading -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> tuple[dict, dict]:
    require_golden("radseg")
    return load_raw_checkpoint(CKPT)


def _image(h: int = 64, w: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, h, w, generator=g)


@needs_golden
def test_arch_read_from_checkpoint(raw) -> None:
    model = build_radio(*raw)
    a = model.arch
    assert (a.embed_dim, a.depth, a.num_heads, a.patch_size) == (64, 3, 4, 16)
    assert (a.num_prefix, a.num_cls, a.pos_grid) == (8, 4, 128)
    assert not a.layer_scale and not a.final_norm and not a.embedder_bias
    assert model.teacher_names == ["clip", "siglip2", "dino_v2", "sam"]
    assert model.feature_normalizer is None


@needs_golden
def test_backbone_tokens_match_golden(raw) -> None:
    """Plain RADIO (no SCRA) on the golden A-img0 window: CPE tokens, last-block input, raw features."""
    from PIL import Image

    z = np.load(GOLDEN / "ref_A_c336_s224_img0_224x224.npz")
    x = torch.from_numpy(np.asarray(Image.open(GOLDEN / "images/img0_224x224.png").convert("RGB")).copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    model = build_radio(*raw)
    hooks: dict = {}
    with torch.no_grad():
        tokens = model.forward_tokens(x, hooks)
        summary, feats = model.split_tokens(tokens, 224, 224)
    for key, ref in (("tokens_embed", z["window0_tokens_embed"]), ("lastblock_in", z["window0_tokens_lastblock_in"])):
        err = float((hooks[key][0] - torch.from_numpy(ref)).abs().max() / np.abs(ref).max())
        assert err <= 1e-3, (key, err)
    ref = z["window0_feats_noscra"]
    assert float((feats - torch.from_numpy(ref)).abs().max() / np.abs(ref).max()) <= 1e-3
    assert summary.shape == (1, 3 * 64)  # clip, siglip2, dino_v2 use_summary


def _save_pth(path: Path, sd: dict, args: dict, key: str = "state_dict") -> Path:
    args = dict(args)
    args["dtype"] = torch.float32
    torch.save({key: sd, "args": argparse.Namespace(**args)}, path)
    return path


@needs_golden
@pytest.mark.parametrize("key", ["state_dict", "state_dict_ema"])
def test_pth_tar_matches_safetensors(raw, tmp_path: Path, key: str) -> None:
    sd, args = raw
    path = _save_pth(tmp_path / "tiny.pth.tar", sd, args, key)
    sd2, args2 = load_raw_checkpoint(path)
    assert set(sd2) == set(sd) and args2["teachers"] == args["teachers"]
    x = _image()
    with torch.no_grad():
        a = build_radio(sd, args)(x)[1]
        b = build_radio(sd2, args2)(x)[1]
    assert torch.equal(a, b)


@needs_golden
def test_adaptor_by_name_or_index(raw) -> None:
    sd, args = raw
    head = load_adaptor_mlp(sd, args, "siglip2", "summary")
    assert (head.in_dim, head.hidden, head.out_dim, len(head.blocks)) == (64, 96, 32, 1)
    assert load_adaptor_mlp(sd, args, "sam", "feature").out_dim == 48
    by_index = {k.replace("_heads.siglip2.", "_heads.1."): v for k, v in sd.items()}
    head_idx = load_adaptor_mlp(by_index, args, "siglip2", "summary")
    x = torch.randn(5, 64)
    assert torch.equal(head(x), head_idx(x))


@needs_golden
def test_unknown_adaptor_lists_available(raw) -> None:
    sd, args = raw
    with pytest.raises(KeyError, match=r"no adaptor 'siglip'.*clip.*siglip2.*dino_v2.*sam"):
        load_adaptor_mlp(sd, args, "siglip", "summary")


@needs_golden
def test_missing_and_unexpected_keys_are_listed(raw) -> None:
    sd, args = raw
    broken = {k: v for k, v in sd.items() if k != "base_model.blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['base_model.blocks.1.mlp.fc2.bias'\]"):
        build_radio(broken, args)
    extra = dict(sd)
    extra["base_model.blocks.0.attn.rel_pos_h"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \['base_model.blocks.0.attn.rel_pos_h'\]"):
        build_radio(extra, args)
    no_cpe = {k: v for k, v in sd.items() if "pos_embed" not in k}
    with pytest.raises(ValueError, match="CPE"):
        build_radio(no_cpe, args)


@needs_golden
def test_layerscale_and_feature_normalizer_are_used(raw) -> None:
    sd, args = raw
    x = _image()
    with torch.no_grad():
        base = build_radio(sd, args)(x)[1]
        ls = dict(sd)
        for i in range(3):
            ls[f"base_model.blocks.{i}.ls1.gamma"] = torch.ones(64)
            ls[f"base_model.blocks.{i}.ls2.gamma"] = torch.ones(64)
        m = build_radio(ls, args)
        assert m.arch.layer_scale
        assert torch.allclose(m(x)[1], base, atol=1e-6)
        ls["base_model.blocks.2.ls2.gamma"] = torch.full((64,), 0.5)
        assert not torch.allclose(build_radio(ls, args)(x)[1], base, atol=1e-3)
        fn = dict(sd)
        mean, tx = torch.randn(64), torch.randn(64, 64)
        fn["_feature_normalizer.mean"], fn["_feature_normalizer.tx"] = mean, tx
        out = build_radio(fn, args)(x)[1]
        ref = torch.einsum("bchw,dc->bdhw", base - mean.view(1, -1, 1, 1), tx)
        assert torch.allclose(out, ref, atol=1e-4)


@needs_golden
def test_bad_sizes_raise(raw) -> None:
    model = build_radio(*raw)
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        model(torch.rand(1, 3, 50, 64))


def test_safetensors_without_args_json(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"base_model.a": torch.zeros(1)}, str(path))
    with pytest.raises(FileNotFoundError, match=r"x.args.json"):
        load_raw_checkpoint(path)


def test_not_a_radio_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "y.pth"
    torch.save({"weights": {}}, path)
    with pytest.raises(ValueError, match="not an official RADIO checkpoint"):
        load_raw_checkpoint(path)


# --- version resolution -----------------------------------------------------------------------------------------
def test_version_offline_names_file_and_location(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("OVMAP_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint(version="c-radio_v3-b")
    msg = str(err.value)
    assert "c-radio_v3-b_half.pth.tar" in msg and "checkpoint=<path" in msg and str(tmp_path) in msg
    assert "huggingface.co/nvidia/C-RADIOv3-B" in msg


def test_version_uses_cache_and_download_failure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("OVMAP_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def fail(url, dst, progress=True):
        Path(dst).write_bytes(b"partial")
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(FileNotFoundError, match="download failed: no network"):
        resolve_checkpoint(version="c-radio_v3-b")
    cached = tmp_path / "hub" / "checkpoints"
    assert not list(cached.glob("*.part"))
    (cached / "c-radio_v3-b_half.pth.tar").write_bytes(b"x")
    assert resolve_checkpoint(version="c-radio_v3-b") == cached / "c-radio_v3-b_half.pth.tar"
    with pytest.raises(KeyError, match="Known versions"):
        resolve_checkpoint(version="radio_v3-b")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(checkpoint=tmp_path / "nope.pth.tar")


def test_random_arch_forward_shapes() -> None:
    arch = RadioArch(embed_dim=32, depth=2, num_heads=2, num_prefix=3, num_cls=2, pos_grid=8)
    model = RadioModel(arch).eval()
    with torch.no_grad():
        summary, feats = model(torch.rand(2, 3, 48, 80))
    assert feats.shape == (2, 32, 3, 5) and summary.shape == (2, 64)
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        both, one = model(x), model(x[1:])
    torch.testing.assert_close(both[1][1:], one[1], atol=1e-5, rtol=0)  # images do not mix within a batch
    torch.testing.assert_close(both[0][1:], one[0], atol=1e-5, rtol=0)
    assert RadioArch(**json.loads(json.dumps(dataclasses.asdict(arch)))) == arch  # plain, JSON round trip
