"""Pure-torch DINOv2 ViT with registers (``facebookresearch/dinov2`` b8931f7, hub ``dinov2_vitb14_reg``), written from
``baselines.md`` §2.5 and §7 and ``shared/golden/talk2dino/README.md``.

Keys (hub state dict ``dinov2_vitb14_reg4_pretrain.pth``): ``cls_token`` (1, 1, C), ``pos_embed`` (1, 1 + M², C),
``register_tokens`` (1, R, C), ``mask_token`` (1, C) (unused at inference), ``patch_embed.proj.{weight,bias}``
(conv p × p with bias), ``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
``norm``. Pre-LN blocks with LayerScale, exact GELU, LN eps 1e-6, MLP 4C (the timm-style blocks of
:mod:`ovmap.encoders.radio.vit`).

Forward: conv patches (row-major) → prepend CLS → add the positional table (resized, see
:func:`resize_dinov2_pos_embed`) → insert the R registers after CLS (registers carry no position) → blocks → ``norm``.
``x_norm_patchtokens`` = normed tokens after the 1 + R prefix. Inputs are ImageNet-normalised.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovmap.encoders.radio.vit import Block, RadioArch

DINOV2_RESOURCES = {
    "dinov2_vitb14_reg": ("dinov2_vitb14_reg4_pretrain.pth",
                          "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"),
}


def resize_dinov2_pos_embed(pos: Tensor, h0: int, w0: int, antialias: bool = True) -> Tensor:
    """Positional table (1 + M², C) for an h0 × w0 grid: the ``_reg`` hub models' bicubic resize to an explicit size
    (``interpolate_offset`` 0) with ``antialias=True``; returned unchanged when (h0, w0) = (M, M)."""
    n, c = pos.shape
    m = int(round(math.sqrt(n - 1)))
    if (h0, w0) == (m, m):
        return pos
    patch = pos[1:].float().reshape(1, m, m, c).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(h0, w0), mode="bicubic", antialias=antialias)
    patch = patch.permute(0, 2, 3, 1).reshape(h0 * w0, c).to(pos.dtype)
    return torch.cat([pos[:1], patch])


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class DinoV2(nn.Module):
    """DINOv2 ViT with registers (B/14-reg4: C 768, 12 layers, 12 heads, 4 registers, native 518)."""

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 14,
                 num_registers: int = 4, image_size: int = 518) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        arch = RadioArch(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                         layer_scale=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image_size // patch_size) ** 2, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList([Block(arch) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    @property
    def num_prefix(self) -> int:
        """CLS + registers."""
        return 1 + self.register_tokens.shape[1]

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Run ImageNet-normalised images (B, 3, H, W).

        Returns:
            normed tokens (B, 1 + R + N, C) (CLS, registers, patches), the input of the last block's ``attn``
            (``norm1`` of its input, (B, 1 + R + N, C)), and the patch grid (h, w) = (⌊H/p⌋, ⌊W/p⌋).
        """
        x = self.patch_embed.proj(x.to(self.cls_token.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_dinov2_pos_embed(self.pos_embed[0], h, w)[None]
        x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        u = last.norm1(x)
        x = x + last.ls1(last.attn(u))
        x = x + last.ls2(last.mlp(last.norm2(x)))
        return self.norm(x), u, (h, w)

    def patch_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``x_norm_patchtokens`` (B, N, C) and the grid (h, w)."""
        tokens, _, hw = self.forward_tokens(x)
        return tokens[:, self.num_prefix:], hw


def cls_attention_logits(block_attn: nn.Module, u: Tensor, num_prefix: int, scale: float = 0.125) -> Tensor:
    """CLS→patch attention logits (B, heads, N) of a timm-style attention on its input ``u`` (B, 1 + R + N, C):
    (q·scale)·kᵀ, row 0, the columns after the ``num_prefix`` prefix tokens, no softmax (Talk2DINO's hook; its
    constant scale 0.125 equals d^−1/2 only for head dim 64, Q2)."""
    q, k, _ = block_attn.split_qkv(u)
    return (q[:, :, :1] * scale @ k[:, :, num_prefix:].transpose(-1, -2))[:, :, 0]


def read_dinov2_state_dict(source: str | os.PathLike) -> dict[str, Tensor]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"DINOv2 checkpoint not found: {path}. Official file: "
            + "; ".join(f"{k}: {f} ({u})" for k, (f, u) in DINOV2_RESOURCES.items()))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a DINOv2 state dict (got {type(obj).__name__})")
    return dict(obj)


def load_dinov2(source: str | os.PathLike | dict[str, Tensor], num_heads: int = 0,
                dtype: torch.dtype = torch.float32) -> DinoV2:
    """Build a :class:`DinoV2` from a hub state dict (file or dict) and load it strictly.

    The architecture is read from the shapes; ``num_heads`` = 0 means C // 64 (12 for B/14).

    Raises:
        FileNotFoundError: missing file (names the official file). ValueError: not DINOv2 / key mismatch (listed).
    """
    sd = dict(source) if isinstance(source, dict) else read_dinov2_state_dict(source)
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    for key in ("patch_embed.proj.weight", "pos_embed", "register_tokens"):
        if key not in sd:
            raise ValueError(f"not a DINOv2-with-registers checkpoint: key {key!r} missing")
    proj = sd["patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    heads = num_heads or max(1, dim // 64)
    if dim % heads:
        raise ValueError(f"DINOv2 width {dim} is not divisible by {heads} heads")
    model = DinoV2(dim, depth, heads, patch, sd["register_tokens"].shape[1], grid * patch)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"DINOv2 checkpoint does not match: missing keys {missing}, unexpected keys {unexpected}")
    return model.to(dtype).eval()


__all__ = ["DINOV2_RESOURCES", "DinoV2", "cls_attention_logits", "load_dinov2", "resize_dinov2_pos_embed"]
