"""SAM v1 ViT image encoder (``segment_anything`` layout, ``image_encoder.*``), pure torch, from ``baselines.md`` §2.6.

Keys (prefix ``image_encoder.``): ``patch_embed.proj.{weight,bias}`` (conv p x p), ``pos_embed`` (1, G, G, C)
(absolute, optional), ``blocks.{i}.{norm1, attn.qkv, attn.proj, attn.rel_pos_h, attn.rel_pos_w, norm2, mlp.lin1,
mlp.lin2}``, ``neck.{0,1,2,3}`` (the neck itself lives in :class:`ovmap.encoders.backbones.sam_decoder.SamDecoder`).
Blocks are pre-LN (eps 1e-6, GELU); blocks not listed as global use w x w window attention (zero padding to
multiples of w); attention logits get decomposed relative-position terms computed from the unscaled q.

:meth:`SamImageEncoder.forward` can return the last block's attention probabilities (B, n_h, L, L) and values
(B, n_h, G, G, d) as Trident needs them, from the pure forward instead of state stored on the module.

Image preprocessing (:func:`sam_preprocess`): uint8 RGB -> ResizeLongestSide (Pillow bilinear) -> (x − mean)/std in
0–255 units -> zero pad right/bottom to the square input size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovmap.fileio import key_mismatch_error, require_keys

#: The layout :func:`load_sam_image_encoder` expects, for error messages.
SAM_LAYOUT = (
    "an official SAM (v1) checkpoint: image_encoder.patch_embed.proj.weight, image_encoder.blocks.<i>.*, "
    "image_encoder.neck.*, prompt_encoder.*, mask_decoder.*"
)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class SamViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    image_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    out_chans: int = 256
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


#: Published SAM v1 image encoders (spec §2.6).
SAM_VIT_CONFIGS = {
    "vit_b": SamViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamViTConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def rel_pos_table(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings (q_size, k_size, d) for query/key extents along one axis.

    The learned table (2·max(q, k) − 1, d) is linearly resized when its length differs; entry (i, j) reads the
    table at (i·max(k/q, 1) − j·max(q/k, 1)) + (k − 1)·max(q/k, 1).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.T[None].float(), size=length, mode="linear")[0].T.to(rel_pos.dtype)
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    idx = (q - k) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[idx.long()]


def decomposed_rel_pos(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, hw: tuple[int, int]) -> Tensor:
    """Additive logits (B, h·w, h·w) from q (B, h·w, d): rel_h[b, (y, x), (y', ·)] + rel_w[b, (y, x), (·, x')]."""
    h, w = hw
    b, _, d = q.shape
    rh, rw = rel_pos_table(h, h, rel_pos_h), rel_pos_table(w, w, rel_pos_w)
    r_q = q.reshape(b, h, w, d)
    rel_h = torch.einsum("byxc,ykc->byxk", r_q, rh)
    rel_w = torch.einsum("byxc,xkc->byxk", r_q, rw)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, h * w, h * w)


class SamViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rel_size: int | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if rel_size is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.use_rel_pos = rel_size is not None

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x (B, h, w, C) -> (out (B, h, w, C), attention probs (B, n_h, L, L) | None, v (B, n_h, h, w, d) | None)."""
        b, h, w, c = x.shape
        nh, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4).reshape(3, b * nh, h * w, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * d**-0.5) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            logits = logits + decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        attn = logits.softmax(dim=-1)
        out = (attn @ v).reshape(b, nh, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        out = self.proj(out)
        if not return_attn:
            return out, None, None
        return out, attn.reshape(b, nh, h * w, h * w), v.reshape(b, nh, h, w, d)


class _SamMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def window_partition(x: Tensor, ws: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B·n_win, ws, ws, C) windows after zero padding to multiples of ws; returns padded (H, W)."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(windows: Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`, cropping the padding."""
    hp, wp = pad_hw
    b = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.reshape(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1]]


class SamViTBlock(nn.Module):
    def __init__(self, cfg: SamViTConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = window_size
        rel = (window_size if window_size > 0 else cfg.grid) if cfg.use_rel_pos else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamViTAttention(dim, cfg.num_heads, rel)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _SamMLP(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        shortcut = x
        x = self.norm1(x)
        h, w = x.shape[1:3]
        if self.window_size > 0:
            x, pad_hw = window_partition(x, self.window_size)
            x, _, _ = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
            attn = v = None
        else:
            x, attn, v = self.attn(x, return_attn)
        x = shortcut + x
        return x + self.mlp(self.norm2(x)), attn, v


class SamPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class SamImageEncoder(nn.Module):
    """SAM ViT trunk (``image_encoder.{patch_embed, pos_embed, blocks}``); the neck is separate."""

    def __init__(self, cfg: SamViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = SamPatchEmbed(cfg.patch_size, cfg.embed_dim)
        if cfg.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid, cfg.grid, cfg.embed_dim))
        self.blocks = nn.ModuleList([
            SamViTBlock(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)])

    def forward(self, x: Tensor, return_last_attn: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Normalised padded images (B, 3, S, S) -> (trunk features (B, C, G, G), last attn | None, last v | None).

        The last block's attention probabilities (B, n_h, G², G²) and values (B, n_h, G, G, d) are returned with
        ``return_last_attn`` (the last block must be global, as in every SAM v1 model).
        """
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)
        if self.cfg.use_abs_pos:
            x = x + self.pos_embed
        attn = v = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if last and return_last_attn and block.window_size > 0:
                raise ValueError("the last SAM block is windowed; its attention is not global")
            x, a, vv = block(x, return_attn=return_last_attn and last)
            if last:
                attn, v = a, vv
        return x.permute(0, 3, 1, 2), attn, v


def sam_vit_config_from_state_dict(sd: dict[str, Tensor], num_heads: int = 0, image_size: int = 0,
                                   window_size: int = 0, global_attn_indexes: tuple[int, ...] | None = None,
                                   mlp_ratio: float = 0.0) -> SamViTConfig:
    """Architecture from ``image_encoder.*`` shapes; what shapes cannot tell comes from the arguments or the
    published configuration of the same width (heads, global blocks)."""
    pre = "image_encoder."
    proj = sd[pre + "patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({m.group(1) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    known = {c.embed_dim: c for c in SAM_VIT_CONFIGS.values()}.get(dim)
    use_abs = pre + "pos_embed" in sd
    use_rel = pre + "blocks.0.attn.rel_pos_h" in sd
    if not image_size:
        image_size = sd[pre + "pos_embed"].shape[1] * patch if use_abs else 1024
    grid = image_size // patch
    if global_attn_indexes is None:
        if use_rel:  # global blocks have rel tables of length 2G − 1
            global_attn_indexes = tuple(i for i in range(depth)
                                        if sd[f"{pre}blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1)
        else:
            global_attn_indexes = known.global_attn_indexes if known else tuple(range(depth))
    if not window_size:
        windowed = [i for i in range(depth) if i not in global_attn_indexes]
        window_size = (sd[f"{pre}blocks.{windowed[0]}.attn.rel_pos_h"].shape[0] + 1) // 2 if (windowed and use_rel) \
            else 14
    hidden = sd[pre + "blocks.0.mlp.lin1.weight"].shape[0]
    return SamViTConfig(dim, depth, num_heads or (known.num_heads if known else max(1, dim // 64)),
                        tuple(global_attn_indexes), window_size, image_size, patch, mlp_ratio or hidden / dim,
                        sd[pre + "neck.0.weight"].shape[0] if pre + "neck.0.weight" in sd else 256, use_abs, use_rel)


def load_sam_image_encoder(sd: dict[str, Tensor], **kwargs) -> SamImageEncoder:
    """Build and strictly load the trunk from a SAM state dict (``image_encoder.*`` except the neck).

    Raises:
        ValueError: one line with the expected layout and the first missing / unexpected keys (naming the file
            when ``sd`` is a :class:`~ovmap.fileio.StateDict` read from one).
    """
    source = getattr(sd, "source", None)
    require_keys(sd, ("image_encoder.patch_embed.proj.weight", "image_encoder.blocks.0.mlp.lin1.weight"),
                 "SAM checkpoint", source, SAM_LAYOUT)
    cfg = sam_vit_config_from_state_dict(sd, **kwargs)
    model = SamImageEncoder(cfg)
    sub = {k[len("image_encoder."):]: v for k, v in sd.items()
           if k.startswith("image_encoder.") and not k.startswith("image_encoder.neck.")}
    missing, unexpected = model.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise key_mismatch_error("SAM checkpoint", source, SAM_LAYOUT, ["image_encoder." + k for k in missing],
                                 ["image_encoder." + k for k in unexpected])
    return model.eval()


def longest_side_hw(height: int, width: int, long_side: int) -> tuple[int, int]:
    """ResizeLongestSide size: scale s = long/max(H, W), (int(H·s + 0.5), int(W·s + 0.5))."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_preprocess(image: np.ndarray, image_size: int) -> tuple[Tensor, tuple[int, int]]:
    """``SamPredictor.set_image`` input: uint8 (H, W, 3) RGB -> (1, 3, S, S) normalised and padded, and (H₁, W₁).

    Resized with Pillow bilinear (antialiased when shrinking) to the ResizeLongestSide size.
    """
    from PIL import Image

    h1, w1 = longest_side_hw(image.shape[0], image.shape[1], image_size)
    img = np.asarray(Image.fromarray(image).resize((w1, h1), Image.BILINEAR))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    x = F.pad((x - mean) / std, (0, image_size - w1, 0, image_size - h1))
    return x[None], (h1, w1)


def sam_parameter_count(cfg: SamViTConfig) -> int:
    """Parameters of the image encoder trunk + neck at configuration ``cfg`` (built on the meta device)."""
    from ovmap.encoders.backbones.sam_decoder import make_neck

    with torch.device("meta"):
        trunk, neck = SamImageEncoder(cfg), make_neck(cfg.embed_dim, cfg.out_chans)
    return sum(p.numel() for p in trunk.parameters()) + sum(p.numel() for p in neck.parameters())


__all__ = ["SAM_VIT_CONFIGS", "SamImageEncoder", "SamViTConfig", "decomposed_rel_pos", "load_sam_image_encoder",
           "longest_side_hw", "rel_pos_table", "sam_parameter_count", "sam_preprocess", "window_partition",
           "window_unpartition", "math"]
