"""SAM 2.1 image path (Hiera trunk + FPN neck + prompt encoder + SAM 2 mask decoder), pure torch, ``baselines.md`` §2.7.

Loads the official checkpoints ``sam2.1_hiera_{tiny,small,base_plus,large}.pt`` (``{'model': state_dict}``) under
their original key names, strictly for the image path; the video-only modules (memory attention / encoder, object
pointers, ...) are known keys that are ignored deliberately (:data:`VIDEO_ONLY_PREFIXES`). Written from the
architecture description (no ``sam2`` code); single images only.

Image path for a normalised image x (B, 3, S, S), S = 1024:

* **Hiera trunk** (``image_encoder.trunk``): patch embedding conv 7×7 / stride 4 / padding 3 → (B, S/4, S/4, C);
  plus the position embedding :func:`hiera_pos_embed` (background table ``pos_embed`` (1, C, b_h, b_w) resized
  bicubically to the grid, plus the window table ``pos_embed_window`` (1, C, w₀, w₀) tiled over it). Then
  ``sum(stages)`` pre-LN blocks (LayerNorm eps 1e-6, MLP ``mlp.layers.{0,1}`` with GELU). A block uses window
  attention (:func:`window_partition`, zero padding to multiples of the window) except the global blocks
  (``global_att_blocks``). The first block of stages 2.. (the q-pool blocks, ``q_pool`` of them) doubles width and
  heads: its query is max-pooled 2×2 inside each window (:func:`q_pool`), its residual is ``proj``(norm1(x))
  max-pooled the same way, and it keeps the *previous* stage's window size (window w → w/2 after pooling). Stage ends
  give 4 feature maps at strides 4, 8, 16, 32 with C, 2C, 4C, 8C channels.
* **FPN neck** (``image_encoder.neck.convs.{i}.conv``, 1×1 convs to d = 256, ``convs[0]`` on the lowest
  resolution): top-down from stride 32; levels in ``fpn_top_down_levels`` (2, 3) add the nearest-upsampled (×2)
  previous output, the others are lateral only. ``scalp`` = 1 drops the stride-32 level, leaving strides 4, 8, 16.
  (The neck's sine position encoding only feeds the memory modules and is not computed.)
* **Single-image features** (SAM2ImagePredictor): image embedding = stride-16 level + ``no_mem_embed``;
  high-resolution features = ``sam_mask_decoder.conv_s0``(stride 4) (d/8 channels) and ``conv_s1``(stride 8) (d/4).
* **Prompt encoder** (``sam_prompt_encoder``): SAM v1's (random-Fourier PE, point embeddings, mask downscaling).
* **Mask decoder** (``sam_mask_decoder``): output tokens [obj_score, iou, 4 mask tokens] + prompt tokens through the
  two-way transformer (depth 2, 8 heads, MLP 2048 ``mlp.layers.{0,1}`` ReLU, cross-attention downsample 2);
  upscaling ConvT → LN2d → (+ conv_s1 features) GELU → ConvT → (+ conv_s0 features) GELU; hypernetwork MLPs;
  IoU head (3 layers, sigmoid output); object-score head (3-layer MLP on the obj_score token). Output selection
  (:func:`select_masks`): multimask → masks 1..3; single mask → mask 0 unless its stability
  #(logit > 0.05)/#(logit > −0.05) is < 0.98, then the multimask output with the highest predicted IoU. The image
  predictor does not use the object score to change masks; it is returned.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovmap.encoders.backbones.sam_vit import window_partition, window_unpartition
from ovmap.encoders.backbones.sam_decoder import HeadMLP, LayerNorm2d, PromptEncoder, TwoWayTransformer
from ovmap.fileio import format_keys, key_mismatch_error, read_checkpoint

#: The layout :func:`load_sam2` expects, for error messages.
SAM2_LAYOUT = "an official SAM 2.1 checkpoint: {'model': state dict with image_encoder.trunk.*, sam_mask_decoder.*, ...}"

#: ImageNet normalisation of the SAM 2.1 input (images in [0, 1]).
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)

SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

#: Official checkpoint key prefixes that belong to the video (memory) path: known and ignored by :func:`load_sam2`.
VIDEO_ONLY_PREFIXES = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                       "no_obj_embed_spatial", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.")
#: Parameters of the video-only modules of every official SAM 2.1 size (not built by ovmap; measured with sam2 1.1.0):
#: memory attention + memory encoder (the spec's "memory modules", 7.31M) and the rest (object-pointer projections,
#: temporal encodings, no-object/no-memory embeddings, mask downsampler: 0.21M).
VIDEO_ONLY_PARAMETERS = {"memory_attention": 5_922_304, "memory_encoder": 1_384_608, "other": 214_865}
IMAGE_PATH_PREFIXES = ("image_encoder.trunk.", "image_encoder.neck.", "sam_prompt_encoder.", "sam_mask_decoder.",
                       "no_mem_embed")


@dataclass
class Sam2Config:
    """SAM 2.1 image-path architecture (defaults: hiera-t, ``configs/sam2.1/sam2.1_hiera_t.yaml``)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    image_size: int = 1024
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attn_downsample: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_high_res_features: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    def __post_init__(self) -> None:
        for f in ("stages", "global_att_blocks", "window_spec", "window_pos_embed_bkg_spatial_size", "q_stride",
                  "fpn_top_down_levels"):
            setattr(self, f, tuple(int(v) for v in getattr(self, f)))

    @property
    def stage_ends(self) -> list[int]:
        return [sum(self.stages[:i]) - 1 for i in range(1, len(self.stages) + 1)]

    @property
    def q_pool_blocks(self) -> list[int]:
        return [e + 1 for e in self.stage_ends[:-1]][: self.q_pool]

    @property
    def backbone_channel_list(self) -> list[int]:
        """Stage output widths, lowest resolution first (the neck's ``convs`` order)."""
        return [int(self.embed_dim * self.dim_mul ** i) for i in range(len(self.stages))][::-1]

    @property
    def level_strides(self) -> list[int]:
        """Strides of the stage outputs (highest resolution first)."""
        out, s = [], self.patch_stride
        for i in range(len(self.stages)):
            if i > 0 and i <= self.q_pool:
                s *= self.q_stride[0]
            out.append(s)
        return out

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (lowest kept level): 64 for S = 1024."""
        return self.image_size // self.level_strides[len(self.stages) - 1 - self.scalp]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Published SAM 2.1 image-path configurations (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``).
SAM2_CONFIGS: dict[str, Sam2Config] = {
    "tiny": Sam2Config(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "small": Sam2Config(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "base_plus": Sam2Config(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "large": Sam2Config(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}
_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "b": "base_plus", "base+": "base_plus", "l": "large",
            "hiera_t": "tiny", "hiera_s": "small", "hiera_b+": "base_plus", "hiera_l": "large"}


def sam2_config(size_or_config: str | dict | Sam2Config) -> Sam2Config:
    """A :class:`Sam2Config` from a size name (t / s / b+ / l, tiny / small / base_plus / large) or a dict."""
    if isinstance(size_or_config, Sam2Config):
        return size_or_config
    if isinstance(size_or_config, dict):
        known = {f.name for f in dataclasses.fields(Sam2Config)}
        bad = sorted(set(size_or_config) - known)
        if bad:
            raise ValueError(f"unknown SAM 2.1 config fields {bad}; known: {sorted(known)}")
        return Sam2Config(**size_or_config)
    name = _ALIASES.get(str(size_or_config).lower(), str(size_or_config).lower())
    if name not in SAM2_CONFIGS:
        raise ValueError(f"unknown SAM 2.1 size {size_or_config!r}; use one of t, s, b+, l")
    return dataclasses.replace(SAM2_CONFIGS[name])


# ================================================================================================================
# Pure functions
# ================================================================================================================
def q_pool(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """Max pooling (kernel = stride, floor) of channels-last maps (B, H, W, C) -> (B, H/s, W/s, C)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


def hiera_pos_embed(pos_embed: Tensor, pos_embed_window: Tensor, hw: tuple[int, int]) -> Tensor:
    """Hiera position embedding (1, H, W, C) for an (H, W) token grid.

    The background table (1, C, b_h, b_w) is resized bicubically (align_corners False, no antialias) to (H, W) and
    the window table (1, C, w₀, w₀) is tiled over it (window (i, j) gets the whole table). Grids that are not
    multiples of w₀ (the reference requires multiples) get the tiling cropped at the bottom/right.
    """
    h, w = hw
    pe = F.interpolate(pos_embed, size=(h, w), mode="bicubic", align_corners=False)
    wh, ww = pos_embed_window.shape[-2:]
    tiled = pos_embed_window.tile(1, 1, -(-h // wh), -(-w // ww))[..., :h, :w]
    return (pe + tiled).permute(0, 2, 3, 1)


def stability_scores(logits: Tensor, delta: float) -> Tensor:
    """#(logit > δ) / #(logit > −δ) over the last two dims (1 where the union is empty)."""
    flat = logits.flatten(-2)
    inter = (flat > delta).sum(-1).float()
    union = (flat > -delta).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def select_masks(masks: Tensor, iou: Tensor, multimask: bool, dynamic: bool = True, delta: float = 0.05,
                 thresh: float = 0.98) -> tuple[Tensor, Tensor]:
    """SAM 2 output selection from all decoder outputs masks (B, 1 + M, h, w), iou (B, 1 + M).

    multimask: outputs 1..M. Otherwise (dynamic): output 0 where its stability score ≥ ``thresh``, else the
    multimask output with the highest predicted IoU; (not dynamic): output 0.
    """
    if multimask:
        return masks[:, 1:], iou[:, 1:]
    if not dynamic:
        return masks[:, :1], iou[:, :1]
    best = iou[:, 1:].argmax(-1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    best_masks, best_iou = masks[:, 1:][rows, best][:, None], iou[:, 1:][rows, best][:, None]
    stable = stability_scores(masks[:, 0], delta) >= thresh  # (B,)
    return (torch.where(stable[:, None, None, None], masks[:, :1], best_masks),
            torch.where(stable[:, None], iou[:, :1], best_iou))


# ================================================================================================================
# Hiera trunk
# ================================================================================================================
class HieraPatchEmbed(nn.Module):
    def __init__(self, dim: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class _GeluMLP(nn.Module):
    """``layers.1``(GELU(``layers.0``(x))): Hiera's block MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class HieraAttention(nn.Module):
    """Multi-scale attention: qkv (dim -> 3·dim_out), optional max-pooled queries, SDPA, ``proj``."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads, self.q_stride = num_heads, q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, H, W, C) -> (B, H', W', C_out) (H' = H / stride with query pooling)."""
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_stride is not None:
            q = q_pool(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraBlock(nn.Module):
    """Hiera ``MultiScaleBlock`` (pre-LN; window attention when ``window_size`` > 0; q-pooling and ``proj`` when
    the width changes)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, q_stride: tuple[int, int] | None,
                 window_size: int) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window_size, self.q_stride = dim, dim_out, window_size, q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HieraAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = _GeluMLP(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride is not None:
                shortcut = q_pool(shortcut, self.q_stride)
        ws = self.window_size
        if ws > 0:
            x, (hp, wp) = window_partition(x, ws)
            x = self.attn(x)
            ws_out = x.shape[1]  # ws, or ws // stride after query pooling
            n_h, n_w = hp // ws, wp // ws
            x = window_unpartition(x, ws_out, (n_h * ws_out, n_w * ws_out), shortcut.shape[1:3])
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hiera trunk (``image_encoder.trunk``): returns the stage-end maps (B, C_i, H_i, W_i), highest resolution
    first."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.cfg = cfg
        dim, heads = cfg.embed_dim, cfg.num_heads
        self.patch_embed = HieraPatchEmbed(dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, dim, cfg.window_spec[0], cfg.window_spec[0]))
        self.stage_ends = cfg.stage_ends
        blocks, stage = [], 0
        for i in range(sum(cfg.stages)):
            dim_out = dim
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]  # before a stage change: the
            if i - 1 in self.stage_ends:  # transition block keeps the previous stage's window
                dim_out, heads, stage = int(dim * cfg.dim_mul), int(heads * cfg.head_mul), stage + 1
            blocks.append(HieraBlock(dim, dim_out, heads, cfg.mlp_ratio,
                                     cfg.q_stride if i in cfg.q_pool_blocks else None, window))
            dim = dim_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        x = x + hiera_pos_embed(self.pos_embed, self.pos_embed_window, tuple(x.shape[1:3]))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outs.append(x.permute(0, 3, 1, 2))
        return outs


class FpnNeck(nn.Module):
    """SAM 2 FPN neck (``image_encoder.neck.convs.{i}.conv``), without the sine position encoding."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(OrderedDict(conv=nn.Conv2d(c, cfg.d_model, 1)))
                                    for c in cfg.backbone_channel_list])
        self.top_down = set(cfg.fpn_top_down_levels)
        self.interp = cfg.fpn_interp_model

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        n = len(self.convs) - 1
        out: list[Tensor] = [xs[0]] * len(xs)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down and prev is not None:
                up = F.interpolate(prev.float(), scale_factor=2.0, mode=self.interp,
                                   align_corners=None if self.interp == "nearest" else False).to(lateral.dtype)
                prev = lateral + up
            else:
                prev = lateral
            out[i] = prev
        return out


class Sam2ImageEncoder(nn.Module):
    """``image_encoder``: trunk + neck, minus the ``scalp`` lowest-resolution levels."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.scalp = cfg.scalp
        self.trunk = Hiera(cfg)
        self.neck = FpnNeck(cfg)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.neck(self.trunk(x))
        return feats[: len(feats) - self.scalp] if self.scalp > 0 else feats


# ================================================================================================================
# Mask decoder
# ================================================================================================================
class Sam2MaskDecoder(nn.Module):
    """SAM 2 mask decoder (``sam_mask_decoder``) with high-resolution features and the object-score head."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.transformer = TwoWayTransformer(cfg.decoder_depth, d, cfg.decoder_heads, cfg.decoder_mlp_dim,
                                             d // cfg.decoder_attn_downsample)
        for layer in self.transformer.layers:  # SAM 2 names the block MLP ``mlp.layers.{0,1}`` (ReLU)
            layer.mlp = HeadMLP([d, cfg.decoder_mlp_dim, d])
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        if cfg.pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(nn.ConvTranspose2d(d, d // 4, 2, stride=2), LayerNorm2d(d // 4),
                                              nn.GELU(), nn.ConvTranspose2d(d // 4, d // 8, 2, stride=2), nn.GELU())
        if cfg.use_high_res_features:
            self.conv_s0 = nn.Conv2d(d, d // 8, 1)
            self.conv_s1 = nn.Conv2d(d, d // 4, 1)
        self.output_hypernetworks_mlps = nn.ModuleList([HeadMLP([d, d, d, d // 8])
                                                        for _ in range(self.num_mask_tokens)])
        self.iou_prediction_head = HeadMLP([d] + [cfg.iou_head_hidden_dim] * (cfg.iou_head_depth - 1)
                                           + [self.num_mask_tokens])
        if cfg.pred_obj_scores:
            self.pred_obj_score_head = HeadMLP([d, d, d, 1]) if cfg.pred_obj_scores_mlp else nn.Linear(d, 1)

    def predict_all(self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                    high_res: list[Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """All outputs: (mask logits (B, 1 + M, 4h, 4w), IoU (B, 1 + M), object-score logits (B, 1)).

        image, image_pe (1 or B, d, h, w); sparse (B, T, d); dense (1 or B, d, h, w); high_res [s0 (·, d/8, 4h, 4w),
        s1 (·, d/4, 2h, 2w)] already through conv_s0 / conv_s1.
        """
        b = sparse.shape[0]
        heads = [self.iou_token.weight, self.mask_tokens.weight]
        if self.cfg.pred_obj_scores:
            heads.insert(0, self.obj_score_token.weight)
        s = 1 if self.cfg.pred_obj_scores else 0
        tokens = torch.cat([torch.cat(heads)[None].expand(b, -1, -1), sparse], dim=1)
        src = image.expand(b, -1, -1, -1) + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src_tokens = self.transformer(src, pos, tokens)
        iou_out, mask_out = hs[:, s], hs[:, s + 1:s + 1 + self.num_mask_tokens]
        src = src_tokens.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        if self.cfg.use_high_res_features:
            if high_res is None:
                raise ValueError("this SAM 2 mask decoder uses high-resolution features; pass high_res")
            s0, s1 = (f.expand(b, -1, -1, -1) for f in high_res)
            up = act2(dc2(act1(ln1(dc1(src) + s1))) + s0)
        else:
            up = act2(dc2(act1(ln1(dc1(src)))))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        bu, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        iou = self.iou_prediction_head(iou_out)
        if self.cfg.iou_prediction_use_sigmoid:
            iou = iou.sigmoid()
        obj = self.pred_obj_score_head(hs[:, 0]) if self.cfg.pred_obj_scores else iou.new_full((b, 1), 10.0)
        return masks, iou, obj

    def forward(self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor, multimask: bool,
                high_res: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(mask logits (B, 3 or 1, 4h, 4w), IoU (B, 3 or 1), object-score logits (B, 1)); see :func:`select_masks`."""
        masks, iou, obj = self.predict_all(image, image_pe, sparse, dense, high_res)
        cfg = self.cfg
        masks, iou = select_masks(masks, iou, multimask, cfg.dynamic_multimask_via_stability,
                                  cfg.dynamic_multimask_stability_delta, cfg.dynamic_multimask_stability_thresh)
        return masks, iou, obj


# ================================================================================================================
# The image model
# ================================================================================================================
class Sam2ImageModel(nn.Module):
    """SAM 2.1 for single images: ``image_encoder``, ``sam_prompt_encoder``, ``sam_mask_decoder``, ``no_mem_embed``."""

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = Sam2ImageEncoder(cfg)
        e = cfg.embedding_size
        self.sam_prompt_encoder = PromptEncoder(cfg.d_model, (e, e), (cfg.image_size, cfg.image_size),
                                                cfg.mask_in_chans)
        self.sam_mask_decoder = Sam2MaskDecoder(cfg)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, cfg.d_model))

    def preprocess(self, rgb: Tensor) -> Tensor:
        """rgb (B, 3, H, W) in [0, 1] -> bilinear (no antialias) to S×S, aspect ignored, ImageNet-normalised."""
        s = self.cfg.image_size
        x = F.interpolate(rgb.float(), size=(s, s), mode="bilinear", align_corners=False)
        mean = torch.tensor(SAM2_PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(SAM2_PIXEL_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_features(self, x: Tensor) -> dict[str, Any]:
        """Normalised (B, 3, S, S) -> {"image_embed" (B, d, S/16, S/16) with no_mem_embed added,
        "high_res_feats" [conv_s0(stride 4) (B, d/8, ·), conv_s1(stride 8) (B, d/4, ·)]}."""
        feats = self.image_encoder(x)
        embed = feats[-1] + self.no_mem_embed.reshape(1, -1, 1, 1)
        high = feats[:-1]
        if self.cfg.use_high_res_features:
            high = [self.sam_mask_decoder.conv_s0(high[0]), self.sam_mask_decoder.conv_s1(high[1])]
        return {"image_embed": embed, "high_res_feats": high}

    def predict(self, features: dict[str, Any], points: Tensor | None, labels: Tensor | None,
                boxes: Tensor | None = None, mask_input: Tensor | None = None,
                multimask: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts in the S×S input frame for one image's features -> (low-res logits, IoU, object logits)."""
        pts = (points, labels) if points is not None else None
        sparse, dense = self.sam_prompt_encoder(pts, boxes, mask_input)
        return self.sam_mask_decoder(features["image_embed"], self.sam_prompt_encoder.dense_pe(), sparse, dense,
                                     multimask, features["high_res_feats"] if self.cfg.use_high_res_features else None)

    @torch.no_grad()
    def point_predictor(self, rgb: Tensor, points_per_batch: int = 64) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """For TextRegion's mask generator: rgb (1, 3, H, W) in [0, 1] -> ``predict(points (P, 2) in the S×S frame)
        -> (low-res logits (P, 3, S/4, S/4), IoU (P, 3))``, one positive point per prompt, multimask output."""
        feats = self.image_features(self.preprocess(rgb))

        def predict(points: Tensor) -> tuple[Tensor, Tensor]:
            dev = feats["image_embed"].device
            logits, ious = [], []
            for chunk in points.to(dev).float().split(points_per_batch):
                lab = torch.ones(chunk.shape[0], 1, device=dev)
                m, iou, _ = self.predict(feats, chunk[:, None], lab, multimask=True)
                logits.append(m)
                ious.append(iou)
            return torch.cat(logits), torch.cat(ious)

        return predict


def build_sam2(size_or_config: str | dict | Sam2Config = "base_plus") -> Sam2ImageModel:
    """A randomly initialised SAM 2.1 image model from a size (t / s / b+ / l) or a config dict."""
    return Sam2ImageModel(sam2_config(size_or_config))


def parameter_counts(size_or_config: str | dict | Sam2Config) -> dict[str, int]:
    """Parameters (built on the meta device) of the image encoder, the mask decoder, the prompt encoder, the whole
    image path (these + ``no_mem_embed``) and ``official_total`` (image path + :data:`VIDEO_ONLY_PARAMETERS`, the
    whole checkpoint as the spec's §8 totals and RADSeg's Table A.3 count it)."""
    with torch.device("meta"):
        model = build_sam2(size_or_config)
    n = lambda m: sum(p.numel() for p in m.parameters())
    return {"image_encoder": n(model.image_encoder), "mask_decoder": n(model.sam_mask_decoder),
            "prompt_encoder": n(model.sam_prompt_encoder), "image_path": n(model),
            "official_total": n(model) + sum(VIDEO_ONLY_PARAMETERS.values())}


# ================================================================================================================
# Loading
# ================================================================================================================
def infer_sam2_config(sd: dict[str, Tensor]) -> Sam2Config:
    """The published configuration whose trunk width and depth match ``sd`` (window sizes, global blocks and heads
    are not in the shapes; non-published models need an explicit config)."""
    dim = sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    depth = len({m.group(1) for k in sd if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))})
    for cfg in SAM2_CONFIGS.values():
        if cfg.embed_dim == dim and sum(cfg.stages) == depth:
            return dataclasses.replace(cfg)
    raise ValueError(f"SAM 2.1 trunk of width {dim} and depth {depth} matches no published size (t/s/b+/l); "
                     "pass config=<dict> or put a <stem>.config.json next to the checkpoint")


def split_sam2_keys(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(image-path entries, known video-only keys (ignored), unknown keys)."""
    image = {k: v for k, v in sd.items() if k.startswith(IMAGE_PATH_PREFIXES)}
    video = [k for k in sd if k not in image and k.startswith(VIDEO_ONLY_PREFIXES)]
    unknown = [k for k in sd if k not in image and k not in video]
    return image, video, unknown


def load_sam2(checkpoint_path: str | Path, config: str | dict | Sam2Config | None = None) -> Sam2ImageModel:
    """Load an official SAM 2.1 checkpoint (``{'model': state_dict}``; a bare state dict is accepted too).

    The configuration is ``config`` if given, else a sibling ``<stem>.config.json`` (a :class:`Sam2Config` dict,
    for non-published models), else the published size matching the trunk shapes. The image-path keys load
    strictly; the video-only keys (:data:`VIDEO_ONLY_PREFIXES`) are ignored; any other key is an error.

    Raises:
        FileNotFoundError: the file is missing (names it and where to get it).
        ValueError: unknown, missing or unexpected keys (listed, with the file name).
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM 2.1 checkpoint not found: {path}. Download the official sam2.1_hiera_{{tiny,small,base_plus,large}}"
            f".pt from {SAM2_URL} (TextRegion's RADSeg base row: {SAM2_URL}sam2.1_hiera_base_plus.pt).")
    obj = read_checkpoint(path, "SAM 2.1 checkpoint", SAM2_LAYOUT)
    sd = obj["model"] if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) else obj
    if not isinstance(sd, dict) or "image_encoder.trunk.patch_embed.proj.weight" not in sd:
        found = f"keys {list(map(str, sd))[:5]}" if isinstance(sd, dict) else f"a {type(sd).__name__}"
        raise ValueError(f"{path} is not a SAM 2.1 checkpoint: expected {SAM2_LAYOUT}; missing key "
                         f"image_encoder.trunk.patch_embed.proj.weight; it holds {found}")
    image, video, unknown = split_sam2_keys(sd)
    if unknown:
        raise ValueError(f"SAM 2.1 checkpoint {path} does not match the expected layout ({SAM2_LAYOUT}): "
                         f"unknown keys {format_keys(sorted(unknown))}")
    if config is None:
        cfg_file = path.with_name(path.name.split(".")[0] + ".config.json")
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else infer_sam2_config(sd)
    model = build_sam2(config)
    # the prompt encoder's Fourier matrix is a buffer in the official model too; both are in the state dict
    missing, unexpected = model.load_state_dict(image, strict=False)
    if missing or unexpected:
        raise key_mismatch_error("SAM 2.1 checkpoint", path, SAM2_LAYOUT, missing, unexpected)
    model.ignored_keys = sorted(video)
    return model.float().eval()


__all__ = ["IMAGE_PATH_PREFIXES", "SAM2_CONFIGS", "SAM2_PIXEL_MEAN", "SAM2_PIXEL_STD", "VIDEO_ONLY_PARAMETERS",
           "VIDEO_ONLY_PREFIXES",
           "FpnNeck", "Hiera", "HieraAttention", "HieraBlock", "Sam2Config", "Sam2ImageEncoder", "Sam2ImageModel",
           "Sam2MaskDecoder", "build_sam2", "hiera_pos_embed", "infer_sam2_config", "load_sam2", "parameter_counts",
           "q_pool", "sam2_config", "select_masks", "split_sam2_keys", "stability_scores"]
