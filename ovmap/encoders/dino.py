"""Pure-torch DINO v1 ViT (``facebookresearch/dino`` hub layout), written from ``baselines.md`` §2.5 and §7.

Keys: ``cls_token`` (1, 1, C), ``pos_embed`` (1, 1 + M², C), ``patch_embed.proj.{weight,bias}`` (conv p x p, with
bias), ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``. Exact GELU, LN eps 1e-6,
MLP 4C. The blocks are the timm-style pre-LN blocks shared with the RADIO backbone (:mod:`ovmap.encoders.radio.vit`).
Positional resize: bicubic with the +0.1 scale factor, as CLIP (:func:`ovmap.encoders.clip.resize_clip_pos_embed`).

``patch_tokens`` = DINO's ``get_intermediate_layers(x, n=1)[0]`` without the CLS token: the last block's output after
the final norm, (B, N, C) on the (H/p, W/p) grid. Inputs are ImageNet-normalised.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ovmap.encoders.clip import resize_clip_pos_embed
from ovmap.encoders.radio.vit import Block, RadioArch
from ovmap.fileio import key_mismatch_error, read_state_dict, require_keys

#: The layout :func:`load_dino` expects, for error messages.
DINO_LAYOUT = "a DINO ViT hub state dict with patch_embed.proj.weight, pos_embed, cls_token, blocks.<i>.*, norm.*"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DINO_RESOURCES = {
    "dino_vitb16": ("dino_vitbase16_pretrain.pth",
                    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dino_vitb8": ("dino_vitbase8_pretrain.pth",
                   "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class DinoViT(nn.Module):
    """DINO v1 ViT (B/16: C 768, 12 layers, 12 heads; native 224)."""

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 16,
                 image_size: int = 224) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        arch = RadioArch(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch_size) ** 2, embed_dim) * 0.02)
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList([Block(arch) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def patch_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Final-norm patch tokens (B, N, C) of ImageNet-normalised images (B, 3, H, W) and the grid (h, w)."""
        x = self.patch_embed.proj(x.to(self.cls_token.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_clip_pos_embed(self.pos_embed[0], h, w)[None]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:], (h, w)


def load_dino(source: str | os.PathLike | dict[str, Tensor], num_heads: int = 0,
              dtype: torch.dtype = torch.float32) -> DinoViT:
    """Build a :class:`DinoViT` from a hub state dict (file or dict) and load it strictly.

    The architecture is read from the shapes; ``num_heads`` = 0 means C // 64.

    Raises:
        FileNotFoundError: missing file (names the official files).
        ValueError: one line naming the file and the expected layout: unreadable / wrong-format file, or
            missing / unexpected keys (the first five of each).
    """
    path = None
    if isinstance(source, dict):
        sd = dict(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"DINO checkpoint not found: {path}. Official files: "
                + "; ".join(f"{k}: {f} ({u})" for k, (f, u) in DINO_RESOURCES.items()))
        sd = read_state_dict(path, "DINO checkpoint", DINO_LAYOUT, nested=("state_dict", "model", "teacher"))
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    require_keys(sd, ("patch_embed.proj.weight", "pos_embed"), "DINO checkpoint", path, DINO_LAYOUT)
    proj = sd["patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    model = DinoViT(dim, depth, num_heads or max(1, dim // 64), patch, grid * patch)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise key_mismatch_error("DINO checkpoint", path, DINO_LAYOUT, missing, unexpected)
    return model.to(dtype).eval()
