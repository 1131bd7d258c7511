"""Pure-torch RADIO ViT backbone: CPE patch generator, pre-LN transformer blocks, input conditioner.

This is the architecture that RADIO builds from a timm ViT plus ``enable_cpe`` (see
``shared/specs/radseg_encoder.md`` §4), written from the specification only, with the official state-dict key
names so that checkpoints load without renaming:

* ``patch_generator.embedder.weight`` (C, 3·p·p): linear patch embedder (no bias) on patches flattened in
  (channel, y, x) order.
* ``patch_generator.pos_embed`` (1, G·G, C): learned position grid; at inference it is resized bilinearly
  (``align_corners=False``, no antialias) to (m, m) with m = max(h_p, w_p) and cropped top-left to (h_p, w_p).
* ``patch_generator.cls_token.token`` (P, C): P prefix tokens (one CLS per teacher, then registers), prepended
  *after* the position embedding, so they carry none.
* ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` (+ optional ``ls1.gamma``/``ls2.gamma``
  LayerScale and ``attn.{q,k}_norm`` QK-norm): pre-LN blocks, LayerNorm eps 1e-6, exact GELU.
* ``norm`` (only when the checkpoint's ``model_norm`` is true).

Shapes: images (B, 3, H, W); tokens (B, P + N, C) with N = h_p·w_p patch tokens in row-major order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: OpenAI-CLIP normalisation RADIO applies inside the model (used when a checkpoint has no conditioner).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class RadioArch:
    """Architecture of a RADIO ViT, read from a checkpoint's args and tensor shapes.

    Attributes:
        embed_dim: token width C.
        depth: number of transformer blocks.
        num_heads: attention heads (C must be divisible by it).
        patch_size: patch side p (the embedder takes 3·p·p inputs).
        mlp_hidden: hidden width of each block's MLP.
        num_prefix: number of prefix tokens P (CLS tokens + registers).
        num_cls: number of CLS tokens (one per unique teacher name, or 1).
        pos_grid: side G of the learned CPE position grid.
        qkv_bias: whether the qkv projection has a bias.
        embedder_bias: whether the patch embedder has a bias (not in RADIO v2.5/v3).
        layer_scale: whether blocks carry LayerScale (``ls1.gamma``/``ls2.gamma``).
        qk_norm: whether attention has per-head LayerNorm on q and k.
        final_norm: whether a final LayerNorm ``norm`` is applied (``model_norm``).
        norm_eps: LayerNorm epsilon of the blocks.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_hidden: int = 0
    num_prefix: int = 0
    num_cls: int = 1
    pos_grid: int = 128
    qkv_bias: bool = True
    embedder_bias: bool = False
    layer_scale: bool = False
    qk_norm: bool = False
    final_norm: bool = False
    norm_eps: float = 1e-6
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not self.mlp_hidden:
            self.mlp_hidden = 4 * self.embed_dim


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention softmax(q kᵀ/√d)·v per head.

    Args:
        q, k, v: (B, H, N, d).

    Returns:
        (B, H, N, d).
    """
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention with the timm key names ``qkv`` and ``proj`` (optional ``q_norm``/``k_norm``).

    ``core`` can be replaced by a function ``(module, u (B, N, C)) -> (B, N, C)`` to change the attention
    (SCRA does this on the last block); by default it is the standard attention.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.core: Callable[[Attention, Tensor], Tensor] | None = None

    def split_qkv(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, N, d) of normalised tokens ``u`` (B, N, C), before any QK-norm."""
        b, n, c = u.shape
        qkv = self.qkv(u).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def merge_heads(self, o: Tensor) -> Tensor:
        """(B, H, N, d) -> (B, N, C) (heads concatenated along channels), before the output projection."""
        b, h, n, d = o.shape
        return o.transpose(1, 2).reshape(b, n, h * d)

    def standard(self, u: Tensor) -> Tensor:
        """Standard attention branch W_proj·[softmax(q kᵀ/√d)·v] + b_proj of ``u`` (B, N, C)."""
        q, k, v = self.split_qkv(u)
        q, k = self.q_norm(q), self.k_norm(k)
        return self.proj(self.merge_heads(attention(q, k, v)))

    def forward(self, u: Tensor) -> Tensor:
        if self.core is not None:
            return self.core(self, u)
        return self.standard(u)


class Mlp(nn.Module):
    """Block MLP fc1 -> exact GELU -> fc2 (timm key names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """x·gamma (timm ``ls1``/``ls2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN transformer block: x <- x + ls1(attn(norm1 x)); x <- x + ls2(mlp(norm2 x))."""

    def __init__(self, arch: RadioArch) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.attn = Attention(dim, arch.num_heads, arch.qkv_bias, arch.qk_norm, arch.norm_eps)
        self.ls1: nn.Module = LayerScale(dim) if arch.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.mlp = Mlp(dim, arch.mlp_hidden)
        self.ls2: nn.Module = LayerScale(dim) if arch.layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ClsToken(nn.Module):
    """Holds the prefix tokens ``token`` (P, C): CLS tokens then registers."""

    def __init__(self, num_prefix: int, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(num_prefix, dim))


def patchify(images: Tensor, patch: int) -> Tensor:
    """Split images into non-overlapping patches.

    Args:
        images: (B, 3, H, W), H and W multiples of ``patch``.
        patch: patch side p.

    Returns:
        (B, h_p·w_p, 3·p·p): row-major patches, each flattened in (channel, y, x) order.
    """
    b, c, h, w = images.shape
    hp, wp = h // patch, w // patch
    x = images.reshape(b, c, hp, patch, wp, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, hp * wp, c * patch * patch)


def cpe_position_embedding(pos_embed: Tensor, grid: int, hp: int, wp: int) -> Tensor:
    """CPE position embedding for an (hp, wp) patch grid at inference.

    Args:
        pos_embed: (1, G·G, C) learned grid, G = ``grid``.
        grid: G.
        hp, wp: patch grid of the image.

    Returns:
        (1, hp·wp, C): the grid itself if (hp, wp) == (G, G); otherwise the grid bilinearly resized
        (``align_corners=False``, no antialias) to (m, m), m = max(hp, wp), cropped top-left to (hp, wp),
        flattened row-major.
    """
    if (hp, wp) == (grid, grid):
        return pos_embed
    c = pos_embed.shape[-1]
    pe = pos_embed.reshape(1, grid, grid, c).permute(0, 3, 1, 2)  # (1, C, G, G)
    m = max(hp, wp)
    pe = F.interpolate(pe.float(), size=(m, m), mode="bilinear", align_corners=False).to(pos_embed.dtype)
    pe = pe[:, :, :hp, :wp]
    return pe.flatten(2).transpose(1, 2)


class PatchGenerator(nn.Module):
    """CPE patch generator: linear embedder + resized/cropped position grid + prefix tokens."""

    def __init__(self, arch: RadioArch) -> None:
        super().__init__()
        self.patch_size = arch.patch_size
        self.grid = arch.pos_grid
        self.num_prefix = arch.num_prefix
        self.embedder = nn.Linear(3 * arch.patch_size**2, arch.embed_dim, bias=arch.embedder_bias)
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.pos_grid**2, arch.embed_dim))
        self.cls_token = ClsToken(arch.num_prefix, arch.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Tokens (B, P + N, C) of normalised ``images`` (B, 3, H, W)."""
        b, _, h, w = images.shape
        hp, wp = h // self.patch_size, w // self.patch_size
        x = self.embedder(patchify(images, self.patch_size))  # (B, N, C)
        x = x + cpe_position_embedding(self.pos_embed, self.grid, hp, wp)
        if self.num_prefix:
            x = torch.cat([self.cls_token.token[None].expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x


class RadioViT(nn.Module):
    """The RADIO ViT (the official ``base_model``): patch generator, blocks, optional final norm."""

    def __init__(self, arch: RadioArch) -> None:
        super().__init__()
        self.arch = arch
        self.patch_generator = PatchGenerator(arch)
        self.blocks = nn.ModuleList([Block(arch) for _ in range(arch.depth)])
        self.norm: nn.Module = nn.LayerNorm(arch.embed_dim, eps=arch.norm_eps) if arch.final_norm else nn.Identity()

    def forward_tokens(self, images: Tensor, hooks: dict[str, Tensor] | None = None) -> Tensor:
        """All output tokens (B, P + N, C) of normalised ``images`` (B, 3, H, W).

        Args:
            images: (B, 3, H, W), CLIP-normalised, H and W multiples of the patch size.
            hooks: if given, filled with ``tokens_embed`` (after the patch generator) and
                ``lastblock_in`` (input of the last block), each (B, P + N, C).
        """
        x = self.patch_generator(images)
        if hooks is not None:
            hooks["tokens_embed"] = x
        for i, block in enumerate(self.blocks):
            if hooks is not None and i == len(self.blocks) - 1:
                hooks["lastblock_in"] = x
            x = block(x)
        return self.norm(x)


class InputConditioner(nn.Module):
    """(x - norm_mean) / norm_std with buffers ``norm_mean``, ``norm_std`` of shape (3, 1, 1)."""

    def __init__(self, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)


class FeatureNormalizer(nn.Module):
    """Optional RADIO feature normaliser: f <- (f - mean)·txᵀ (buffers ``mean`` (C,), ``tx`` (C, C))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("tx", torch.eye(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) @ self.tx.to(x.dtype).T


class RadioModel(nn.Module):
    """RADIO backbone with its input conditioner: images in [0, 1] -> (summary, patch features).

    Attributes:
        arch: the architecture.
        model: the ViT (``base_model`` in the checkpoint).
        input_conditioner: CLIP mean/std normalisation.
        feature_normalizer: optional ``_feature_normalizer`` (None if the checkpoint has none).
        teacher_names: teacher names in checkpoint order (for adaptor lookup).
        summary_idxs: indices of teachers with ``use_summary``.
    """

    def __init__(self, arch: RadioArch, feature_normalizer: bool = False,
                 teacher_names: list[str] | None = None, summary_idxs: list[int] | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.model = RadioViT(arch)
        self.input_conditioner = InputConditioner()
        self.feature_normalizer = FeatureNormalizer(arch.embed_dim) if feature_normalizer else None
        self.teacher_names = list(teacher_names or [])
        self.summary_idxs = list(summary_idxs or [])

    @property
    def patch_size(self) -> int:
        return self.arch.patch_size

    @property
    def num_prefix(self) -> int:
        return self.arch.num_prefix

    def check_size(self, height: int, width: int) -> None:
        """Raise a clear error unless H and W are positive multiples of the patch size."""
        p = self.patch_size
        if height <= 0 or width <= 0 or height % p or width % p:
            raise ValueError(
                f"RADIO needs image sides that are positive multiples of the patch size {p}; got {height}x{width}"
            )

    def forward_tokens(self, rgb: Tensor, hooks: dict[str, Tensor] | None = None) -> Tensor:
        """All tokens (B, P + N, C) of ``rgb`` (B, 3, H, W) in [0, 1] (conditioner applied here)."""
        self.check_size(rgb.shape[-2], rgb.shape[-1])
        return self.model.forward_tokens(self.input_conditioner(rgb), hooks=hooks)

    def split_tokens(self, tokens: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Split all tokens into (summary (B, n_summary·C), spatial features (B, C, H/p, W/p)).

        The feature normaliser (if any) is applied to the patch features. The summary concatenates the
        CLS tokens of ``summary_idxs`` (all CLS tokens if unknown).
        """
        b, _, c = tokens.shape
        cls = tokens[:, : self.arch.num_cls]
        if self.summary_idxs and max(self.summary_idxs) < cls.shape[1]:
            cls = cls[:, self.summary_idxs]
        patches = tokens[:, self.num_prefix:]
        if self.feature_normalizer is not None:
            patches = self.feature_normalizer(patches)
        hp, wp = height // self.patch_size, width // self.patch_size
        feats = patches.transpose(1, 2).reshape(b, c, hp, wp)
        return cls.flatten(1), feats

    def forward(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """(summary (B, n_summary·C), features (B, C, H/p, W/p)) of ``rgb`` (B, 3, H, W) in [0, 1]."""
        tokens = self.forward_tokens(rgb)
        return self.split_tokens(tokens, rgb.shape[-2], rgb.shape[-1])


def infer_patch_size(embedder_in: int) -> int:
    """Patch side p from the embedder's input width 3·p·p."""
    p = int(round(math.sqrt(embedder_in / 3)))
    if 3 * p * p != embedder_in:
        raise ValueError(f"patch embedder input width {embedder_in} is not 3·p·p")
    return p
