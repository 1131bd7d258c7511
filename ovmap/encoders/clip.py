"""Pure-torch CLIP (OpenAI / OpenCLIP layout): vision ViT and text transformer under the original key names.

Written from ``shared/specs/baselines.md`` §2.3–§2.4 and §7. Checkpoints load strictly without renaming:

* vision: ``visual.{conv1.weight, class_embedding, positional_embedding, ln_pre, transformer.resblocks.{i}.{ln_1,
  attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj}``;
* text: ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.{i}.*``, ``ln_final``,
  ``text_projection``, ``logit_scale``.

OpenAI ``.pt`` files are TorchScript archives (read with ``torch.jit.load(...).state_dict()``), OpenCLIP files are
plain state dicts (``.bin``/``.pt``/``.safetensors``). The scalar entries ``input_resolution``, ``context_length``,
``vocab_size`` of OpenAI archives are dropped. Activation: QuickGELU x·σ(1.702x) (OpenAI) or GELU (OpenCLIP laion).

The baselines need surgery inside the last vision block, so the vision forward is split into pure pieces:
:meth:`CLIPVisionTransformer.tokens_before_last` (input X of the last block, CLS first),
:meth:`ResidualAttentionBlock.qkv` (q, k, v of ln_1(X)), ``attn.out_proj``, the block MLP, and
:meth:`CLIPVisionTransformer.head` (ln_post then proj). Positional tables are resized with bicubic interpolation
and the scale factor ((h0 + 0.1)/M, (w0 + 0.1)/M) (:func:`resize_clip_pos_embed`), as every CLIP baseline does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES
from ovmap.fileio import key_mismatch_error, read_state_dict as read_state_dict_file, require_keys

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Official CLIP files (for error messages): name -> (file, where to get it).
CLIP_RESOURCES = {
    "ViT-B/16": ("ViT-B-16.pt", "https://openaipublic.azureedge.net/clip/models/"
                 "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    "ViT-L/14": ("ViT-L-14.pt", "https://openaipublic.azureedge.net/clip/models/"
                 "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
    "ViT-L/14@336px": ("ViT-L-14-336px.pt", "https://openaipublic.azureedge.net/clip/models/"
                       "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"),
    "ViT-H-14/laion2b_s32b_b79k": ("open_clip_pytorch_model.bin",
                                   "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
}
_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")
#: The layout :func:`load_clip` expects, for error messages.
CLIP_LAYOUT = (
    "an OpenAI TorchScript .pt or OpenCLIP state dict with visual.conv1.weight, visual.positional_embedding, "
    "visual.transformer.resblocks.<i>.*, visual.proj (+ text tower: token_embedding.weight, transformer.*, ...)"
)
_CLIP_REQUIRED = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj")


@dataclass
class CLIPConfig:
    """CLIP architecture. ``vision_heads``/``text_heads`` default to width // 64 (the OpenAI convention)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 0
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 0
    act: str = "quick_gelu"
    with_text: bool = True

    def __post_init__(self) -> None:
        self.vision_heads = self.vision_heads or max(1, self.vision_width // 64)
        self.text_heads = self.text_heads or max(1, self.text_width // 64)
        if self.act not in ("quick_gelu", "gelu"):
            raise ValueError(f"act must be 'quick_gelu' or 'gelu', got {self.act!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


#: Published configurations (spec §2.4 / §2.3).
CLIP_CONFIGS = {
    "ViT-B/16": CLIPConfig(512, 224, 16, 768, 12, 12, 77, 49408, 512, 12, 8, "quick_gelu"),
    "ViT-L/14": CLIPConfig(768, 224, 14, 1024, 24, 16, 77, 49408, 768, 12, 12, "quick_gelu"),
    "ViT-L/14@336px": CLIPConfig(768, 336, 14, 1024, 24, 16, 77, 49408, 768, 12, 12, "quick_gelu"),
    "ViT-H-14": CLIPConfig(1024, 224, 14, 1280, 32, 16, 77, 49408, 1024, 24, 16, "gelu"),
}


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s key names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def qkv(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, N, d) of ``u`` (B, N, C), split in the order [q; k; v]."""
        b, n, c = u.shape
        qkv = F.linear(u, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def value(self, u: Tensor) -> Tensor:
        """The value third (B, N, C) of ``in_proj`` applied to ``u`` (heads concatenated)."""
        c = u.shape[-1]
        return F.linear(u, self.in_proj_weight[2 * c:], self.in_proj_bias[2 * c:])

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(u)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(o.transpose(1, 2).flatten(2))


class _MLP(nn.Module):
    def __init__(self, dim: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)
        self.act = quick_gelu if act == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x <- x + attn(ln_1 x); x <- x + mlp(ln_2 x). LayerNorm eps 1e-5."""

    def __init__(self, dim: int, num_heads: int, act: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = MultiheadAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = _MLP(dim, act)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, act: str) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(dim, heads, act) for _ in range(layers)])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


def resize_clip_pos_embed(pos: Tensor, h0: int, w0: int) -> Tensor:
    """Positional table (1 + M², C) resized for an h0 x w0 patch grid (spec §2.4, [RC]).

    The patch part is reshaped to (1, C, M, M) and resized with bicubic interpolation (align_corners False)
    using the **scale factor** ((h0 + 0.1)/M, (w0 + 0.1)/M) (not a target size); the class position is kept.
    Returned unchanged when (h0, w0) == (M, M).
    """
    n, c = pos.shape
    m = int(round(math.sqrt(n - 1)))
    if (h0, w0) == (m, m):
        return pos
    patch = pos[1:].reshape(1, m, m, c).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic",
                          align_corners=False)
    if patch.shape[-2:] != (h0, w0):  # pragma: no cover - floor((h0 + 0.1)/M·M) = h0 always
        raise RuntimeError(f"positional resize gave {tuple(patch.shape[-2:])}, expected {(h0, w0)}")
    patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(h0 * w0, c)
    return torch.cat([pos[:1], patch])


class CLIPVisionTransformer(nn.Module):
    """CLIP image tower (key prefix ``visual.``)."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.vision_width
        self.patch_size = cfg.patch_size
        self.num_heads = cfg.vision_heads
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.grid**2 + 1, w) * w**-0.5)
        self.ln_pre = nn.LayerNorm(w, eps=1e-5)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.act)
        self.ln_post = nn.LayerNorm(w, eps=1e-5)
        self.proj = nn.Parameter(torch.randn(w, cfg.embed_dim) * w**-0.5)

    @property
    def width(self) -> int:
        return self.conv1.out_channels

    @property
    def last_block(self) -> ResidualAttentionBlock:
        return self.transformer.resblocks[-1]

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Tokens after ``ln_pre`` (B, 1 + N, C) of CLIP-normalised images (B, 3, H, W), and the grid (h, w)."""
        x = self.conv1(x.to(self.conv1.weight.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resize_clip_pos_embed(self.positional_embedding, h, w).to(x.dtype)
        return self.ln_pre(x), (h, w)

    def tokens_before_last(self, x: Tensor, all_outputs: bool = False) -> tuple[Tensor, tuple[int, int]] | Any:
        """Input X (B, 1 + N, C) of the last block (CLS first) and the patch grid (h, w).

        With ``all_outputs`` also returns the list of every block's output before the last.
        """
        x, hw = self.embed(x)
        outs = []
        for block in self.transformer.resblocks[:-1]:
            x = block(x)
            outs.append(x)
        return (x, hw, outs) if all_outputs else (x, hw)

    def head(self, x: Tensor) -> Tensor:
        """ln_post(x) @ proj: (..., C) -> (..., D)."""
        return self.ln_post(x) @ self.proj

    def forward(self, x: Tensor) -> Tensor:
        """Image embeddings (B, D) (CLS token) of CLIP-normalised images."""
        tokens, _ = self.tokens_before_last(x)
        return self.head(self.last_block(tokens)[:, 0])


class CLIP(nn.Module):
    """Full CLIP (vision + optional text tower) under the OpenAI key names."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = CLIPVisionTransformer(cfg)
        if cfg.with_text:
            self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
            self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.text_width) * 0.01)
            self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.act)
            self.ln_final = nn.LayerNorm(cfg.text_width, eps=1e-5)
            self.text_projection = nn.Parameter(torch.randn(cfg.text_width, cfg.embed_dim) * cfg.text_width**-0.5)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: Tensor) -> Tensor:
        """Text embeddings (N, D) (unnormalised) of token ids (N, L): EOT row (argmax id) after ln_final, @ proj."""
        if not self.cfg.with_text:
            raise RuntimeError("this CLIP was loaded without its text tower")
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)] @ self.text_projection


# ================================================================================================================
# Loading
# ================================================================================================================
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """State dict of a CLIP file: TorchScript archive (OpenAI ``.pt``), pickle state dict, or ``.safetensors``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP checkpoint not found: {path}. Official files: "
            + "; ".join(f"{k}: {f} ({u})" for k, (f, u) in CLIP_RESOURCES.items())
        )
    return read_state_dict_file(path, "CLIP checkpoint", CLIP_LAYOUT, torchscript=True, nested=("state_dict",))


def config_from_state_dict(sd: dict[str, Tensor], act: str = "quick_gelu", vision_heads: int = 0,
                           text_heads: int = 0, source: str | os.PathLike | None = None) -> CLIPConfig:
    """Architecture read from tensor shapes (heads default to width // 64, as OpenAI's ``build_model``).

    Raises:
        ValueError: the state dict lacks the keys the shapes are read from (names ``source``, the file).
    """
    require_keys(sd, _CLIP_REQUIRED, "CLIP checkpoint", source, CLIP_LAYOUT)
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    grid = int(round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1)))
    with_text = "token_embedding.weight" in sd
    kw: dict[str, Any] = {}
    if with_text:
        kw = dict(context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
                  text_width=sd["ln_final.weight"].shape[0],
                  text_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
    return CLIPConfig(embed_dim=sd["visual.proj"].shape[1], image_size=grid * patch, patch_size=patch,
                      vision_width=width, vision_layers=layers, vision_heads=vision_heads, text_heads=text_heads,
                      act=act, with_text=with_text, **kw)


def load_clip(source: str | os.PathLike | dict[str, Tensor], act: str = "quick_gelu", vision_heads: int = 0,
              text_heads: int = 0, vision_only: bool = False, dtype: torch.dtype = torch.float32) -> CLIP:
    """Build a :class:`CLIP` from a checkpoint file (or state dict) and load it **strictly**.

    Args:
        source: file path (OpenAI TorchScript ``.pt``, OpenCLIP ``.bin``/``.safetensors``) or a state dict.
        act: ``quick_gelu`` (OpenAI weights) or ``gelu`` (OpenCLIP laion weights).
        vision_heads, text_heads: head counts (0 = width // 64).
        vision_only: build only the image tower; the text keys are then known and ignored.
        dtype: parameter dtype (fp16 checkpoints are cast).

    Raises:
        FileNotFoundError: the file does not exist (names the official files).
        ValueError: one line naming the file and the expected layout: unreadable / wrong-format file, or
            missing / unexpected keys (the first five of each).
    """
    src = None if isinstance(source, dict) else Path(source).expanduser()
    sd = dict(source) if isinstance(source, dict) else read_state_dict(source)
    sd = {k: v for k, v in sd.items() if k not in _SCALAR_KEYS}
    cfg = config_from_state_dict(sd, act, vision_heads, text_heads, source=src)
    if vision_only:
        cfg.with_text = False
        sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    model = CLIP(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise key_mismatch_error("CLIP checkpoint", src, CLIP_LAYOUT, missing, unexpected)
    return model.to(dtype).eval()


# ================================================================================================================
# Text encoding
# ================================================================================================================
class CLIPTextEncoder:
    """Template-averaged CLIP text embeddings with the bundled BPE tokenizer (spec §2.3)."""

    def __init__(self, model: CLIP, batch_size: int = 80) -> None:
        from ovmap.encoders.tokenizer_clip import default_tokenizer

        self.model = model
        self.tokenizer = default_tokenizer()
        self.batch_size = batch_size

    @torch.no_grad()
    def prompts(self, prompts: list[str]) -> Tensor:
        """Raw text-tower outputs (N, D)."""
        dev = next(self.model.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ids = self.tokenizer(prompts[i:i + self.batch_size]).to(dev)
            ids = ids[:, : self.model.cfg.context_length]
            out.append(self.model.encode_text(ids).float())
        return torch.cat(out)

    @torch.no_grad()
    def labels(self, labels: list[str], templates: list[str] | tuple[str, ...] = OPENAI_IMAGENET_TEMPLATES,
               renormalize: bool = True) -> Tensor:
        """e_c = mean_j norm(T(template_j(c))), re-normalised by default ([REC]; the RayFronts wrappers do not)."""
        prompts = [t.format(label) for label in labels for t in templates]
        raw = F.normalize(self.prompts(prompts), dim=-1).reshape(len(labels), len(templates), -1).mean(1)
        return F.normalize(raw, dim=-1) if renormalize else raw


def clip_normalize(rgb: Tensor) -> Tensor:
    """(x − μ_clip)/σ_clip of images in [0, 1] (B, 3, H, W)."""
    mean = torch.tensor(CLIP_MEAN, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std
