"""NARADIO (RayFronts' ``NARadioEncoder``): RADIO + neighbourhood-aware last-block attention + summary head.

Written from ``shared/specs/baselines.md`` §3 and ``shared/specs/radseg_encoder.md`` §10, verified against the
golden outputs of RayFronts' own encoder (``shared/golden/radseg/ref_naradio_*``). It shares the RADIO backbone,
checkpoint loading, adaptor MLP and SigLIP/SigLIP2 text tower with :mod:`ovmap.encoders.radseg`.

Pipeline for images x (B, 3, H, W) in [0, 1], H and W multiples of the patch size p (16) (other sizes are
resized bilinearly to the nearest multiples first, :meth:`NARadioEncoder.input_size`):

1. RADIO forward (input conditioner = CLIP mean/std, or none for the pre-fix RayFronts behaviour,
   ``input_normalization``), blocks 1..L-1 unchanged.
2. Last block: x <- x + W_proj [softmax(k_h k_hᵀ/√d + Ĝ) v_h]_h + b_proj, then the block's MLP residual.
   The query projection is unused and QK-norm is dropped (as in RayFronts). Ĝ is the Gaussian neighbourhood bias
   (:func:`gaussian_bias`, σ = ``gauss_std`` patches) bordered by P zero rows/columns for the prefix tokens.
3. ``encode_image``: the RADIO patch features (B, C, H/p, W/p) (RADIO space; what a feature map stores).
4. ``align_to_language``: the summary head ``_heads.<lang_adaptor>`` (MLP v2) per token -> (B, D, h, w).
5. ``predict``: the generic cosine / softmax(100·cos) path of :class:`~ovmap.encoders.base.Encoder`.

Grid orientation (quirk Q-N1): RayFronts builds Ĝ for a (W/16) x (H/16) grid while the tokens are laid out over
(H/16) rows and (W/16) columns, so on non-square inputs its bias does not follow the token layout.
``gauss_grid="row_major"`` (default) uses the real layout; ``gauss_grid="rayfronts"`` reproduces the reference
(what the golden file ``ref_naradio_img2_240x352.npz`` encodes and what RayFronts' / RADSeg's published 3D numbers
used). The two agree on square inputs. Unlike the reference, the bias is built per grid size and cached, so any
frame size works (Q-N3), and the patch size comes from the backbone (Q-N2).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.base import ENCODERS, Encoder, check_rgb
from ovmap.encoders.radio.checkpoint import build_radio, load_adaptor_mlp, load_checkpoint_source
from ovmap.encoders.radio.vit import Attention, RadioModel
from ovmap.encoders.radseg import (
    SigLIP2TextTower,
    average_prompt_embeddings,
    canonicalize_prompt,
)
from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES

log = logging.getLogger(__name__)

#: Text towers of the two NARADIO presets (local directory or Hugging Face id, loaded with transformers).
DEFAULT_TEXT_MODELS = {
    "siglip2": "google/siglip2-giant-opt-patch16-384",
    "siglip2-g": "google/siglip2-giant-opt-patch16-384",
    "siglip": "google/siglip-so400m-patch14-384",
}

GAUSS_GRIDS = ("row_major", "rayfronts")
INPUT_NORMALIZATIONS = ("radio", "none")


# ================================================================================================================
# Pure functions
# ================================================================================================================
@functools.lru_cache(maxsize=32)
def _gaussian_bias_cpu(rows: int, cols: int, sigma: float, num_prefix: int) -> Tensor:
    idx = torch.arange(rows * cols, dtype=torch.float64)
    a, b = torch.div(idx, cols, rounding_mode="floor"), torch.remainder(idx, cols)
    d2 = (a[:, None] - a[None]) ** 2 + (b[:, None] - b[None]) ** 2
    g = torch.zeros(num_prefix + rows * cols, num_prefix + rows * cols, dtype=torch.float64)
    g[num_prefix:, num_prefix:] = torch.exp(-d2 / (2.0 * sigma * sigma))
    return g.float()


def gaussian_bias(rows: int, cols: int, sigma: float, num_prefix: int = 0) -> Tensor:
    """Gaussian neighbourhood bias (P + N, P + N) for an ``rows`` x ``cols`` token grid (spec §2.9).

    G[n(a, b), n(a', b')] = exp(−((a − a')² + (b − b')²) / (2σ²)) with the row-major index n(a, b) = a·cols + b,
    bordered by ``num_prefix`` zero rows and columns (prefix first). Symmetric, 1 on the patch diagonal.
    Cached per (rows, cols, σ, P); the returned tensor is shared, do not modify it in place.
    """
    return _gaussian_bias_cpu(int(rows), int(cols), float(sigma), int(num_prefix))


def gauss_grid_shape(height: int, width: int, patch: int, mode: str = "row_major") -> tuple[int, int]:
    """(rows, cols) of the grid the bias is built on for an H x W image.

    ``row_major``: (H/p, W/p), the real token layout. ``rayfronts``: (W/p, H/p), the reference's transposed grid.
    """
    if mode == "row_major":
        return height // patch, width // patch
    if mode == "rayfronts":
        return width // patch, height // patch
    raise ValueError(f"gauss_grid must be one of {GAUSS_GRIDS}, got {mode!r}")


def kk_gauss_attention(u: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, proj_weight: Tensor,
                       proj_bias: Tensor | None, num_heads: int, bias: Tensor) -> Tensor:
    """RayFronts ``GaussKernelAttn``: key–key attention with an additive bias (the attention branch only).

    [q; k; v] = W_qkv u + b_qkv split into H heads of width d; out = W_proj [softmax(k_h k_hᵀ/√d + bias) v_h]_h
    + b_proj. q is unused; no QK-norm.

    Args:
        u: (B, N, C) normalised tokens (``norm1`` output, prefix included).
        qkv_weight, qkv_bias, proj_weight, proj_bias: the block's weights.
        num_heads: H.
        bias: (N, N) additive bias on the logits (shared by heads and batch).

    Returns:
        (B, N, C).
    """
    b, n, c = u.shape
    d = c // num_heads
    qkv = F.linear(u, qkv_weight, qkv_bias).reshape(b, n, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    k, v = qkv[1], qkv[2]  # (B, H, N, d)
    out = F.scaled_dot_product_attention(k, k, v, attn_mask=bias.to(u.dtype))
    return F.linear(out.transpose(1, 2).reshape(b, n, c), proj_weight, proj_bias)


def make_gauss_core(bias: Tensor) -> Callable[[Attention, Tensor], Tensor]:
    """An :class:`Attention` ``core`` computing :func:`kk_gauss_attention` with the module's weights."""

    def core(attn: Attention, u: Tensor) -> Tensor:
        return kk_gauss_attention(u, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
                                  attn.num_heads, bias.to(u.device))

    return core


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("naradio")
class NARadioEncoder(Encoder):
    """NARADIO: RADIO with Gaussian key–key attention on the last block and a SigLIP(2) summary head.

    Args:
        checkpoint: local RADIO checkpoint (official ``.pth.tar`` or ``.safetensors`` + ``.args.json``) or a
            loaded ``{'state_dict', 'args'}`` dict; takes precedence over ``version``.
        version: official RADIO version resolved when no checkpoint is given. The RADSeg "RayFronts" base row is
            most likely ``radio_v2.5-b`` with ``lang_adaptor=siglip`` (inferred, spec §14 O-3); RADSeg Tab. 5
            uses ``c-radio_v3-b`` with ``siglip2``.
        lang_adaptor: teacher whose summary head maps features to the text space. ``siglip2`` and ``siglip2-g``
            are aliases, resolved against the checkpoint's teacher names.
        gauss_std: σ of the Gaussian bias in patches (7).
        gauss_grid: ``"row_major"`` (default, correct layout) or ``"rayfronts"`` (the reference's transposed
            grid on non-square frames, needed for exact parity with RayFronts/RADSeg numbers).
        input_normalization: ``"radio"`` (RADIO's input conditioner; RayFronts since 5efcfb7) or ``"none"``
            (the pre-fix RayFronts behaviour the RayFronts and RADSeg paper numbers include, Q-N4).
        text_model: SigLIP / SigLIP2 text tower (local directory or hub id); None = the adaptor's default.
        canonicalize_text: apply the SigLIP2 wrapper's prompt canonicalisation before tokenisation.
        device, dtype: torch device and model dtype.
    """

    name = "naradio"

    def __init__(self, checkpoint: str | dict | None = None, version: str = "c-radio_v3-b",
                 lang_adaptor: str = "siglip2", gauss_std: float = 7.0, gauss_grid: str = "row_major",
                 input_normalization: str = "radio", text_model: str | None = None,
                 canonicalize_text: bool = True, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32") -> None:
        super().__init__(device)
        if gauss_grid not in GAUSS_GRIDS:
            raise ValueError(f"gauss_grid must be one of {GAUSS_GRIDS}, got {gauss_grid!r}")
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"input_normalization must be one of {INPUT_NORMALIZATIONS}, got {input_normalization!r}")
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        sd, args, self.checkpoint_path = load_checkpoint_source(checkpoint, version)
        self.radio: RadioModel = build_radio(sd, args).to(self.device, self.dtype)
        self.lang_adaptor = self._resolve_adaptor(lang_adaptor, self.radio.teacher_names)
        self.lang_head = load_adaptor_mlp(sd, args, self.lang_adaptor, "summary").to(self.device, self.dtype)
        self.gauss_std = float(gauss_std)
        self.gauss_grid = gauss_grid
        self.input_normalization = input_normalization
        self.feature_dim = self.radio.arch.embed_dim
        self.language_dim = self.lang_head.out_dim
        self.canonicalize_text = bool(canonicalize_text)
        model = text_model or DEFAULT_TEXT_MODELS.get(self.lang_adaptor, DEFAULT_TEXT_MODELS["siglip2"])
        self.text_tower: Callable[[list[str]], Tensor] = SigLIP2TextTower(model, self.device)
        log.info("naradio: RADIO %d-d x %d blocks (%s), head '%s' -> %d-d, sigma %.1f, grid %s, input norm %s",
                 self.feature_dim, self.radio.arch.depth, self.checkpoint_path or "in-memory checkpoint",
                 self.lang_adaptor, self.language_dim, self.gauss_std, gauss_grid, input_normalization)

    @staticmethod
    def _resolve_adaptor(name: str, teachers: list[str]) -> str:
        aliases = {"siglip2": ("siglip2", "siglip2-g"), "siglip2-g": ("siglip2-g", "siglip2")}
        for cand in aliases.get(name, (name,)):
            if cand in teachers:
                return cand
        return name  # load_adaptor_mlp raises with the list of available adaptors

    def weight_files(self) -> list[Path]:
        return [self.checkpoint_path] if self.checkpoint_path is not None else []

    # --- backbone ------------------------------------------------------------------------------------------
    def attention_bias(self, height: int, width: int) -> Tensor:
        """The additive last-block bias (P + N, P + N) for an H x W input (the golden ``gauss_attn_addition``)."""
        rows, cols = gauss_grid_shape(height, width, self.radio.patch_size, self.gauss_grid)
        return gaussian_bias(rows, cols, self.gauss_std, self.radio.num_prefix)

    def _check(self, rgb: Tensor) -> None:
        if isinstance(rgb, Tensor) and rgb.ndim == 4 and rgb.shape[1] != 3:
            raise ValueError(f"NARADIO takes RGB images (B, 3, H, W); got {rgb.shape[1]} channels")
        check_rgb(rgb)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the image is run at: each side rounded to the nearest multiple of p (at least p).

        Unchanged when H and W are already multiples of p (the reference's only supported case; RADIO's
        ``get_nearest_supported_resolution`` rounds the same way). The feature grid is (H'/p, W'/p) and covers
        the whole input image.
        """
        p = self.radio.patch_size
        return max(p, round(height / p) * p), max(p, round(width / p) * p)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature grid (h, w) produced for an H x W input."""
        hh, ww = self.input_size(height, width)
        return hh // self.radio.patch_size, ww // self.radio.patch_size

    @torch.no_grad()
    def forward_tokens(self, rgb: Tensor, hooks: dict[str, Tensor] | None = None) -> Tensor:
        """All final tokens (B, P + N, C) of ``rgb`` (B, 3, H, W) in [0, 1] with the Gaussian last block."""
        self._check(rgb)
        x = rgb.to(self.device, self.dtype)
        size = self.input_size(x.shape[-2], x.shape[-1])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        last = self.radio.model.blocks[-1].attn
        last.core = make_gauss_core(self.attention_bias(x.shape[-2], x.shape[-1]))
        try:
            if self.input_normalization == "radio":
                return self.radio.forward_tokens(x, hooks=hooks)
            return self.radio.model.forward_tokens(x, hooks=hooks)
        finally:
            last.core = None

    def global_token_index(self) -> int:
        """Prefix index of the language teacher's CLS token (one CLS per teacher, in teacher order).

        RayFronts takes slot ``head_idx`` of the summary assuming 3 summary teachers; for checkpoints whose
        summary teachers come first (RADIO v2.5, C-RADIOv3) that is the same token.
        """
        names = self.radio.teacher_names
        idx = names.index(self.lang_adaptor) if self.lang_adaptor in names else 0
        return idx if idx < self.radio.arch.num_cls else 0

    @torch.no_grad()
    def encode_global(self, rgb: Tensor) -> Tensor:
        """Global vector (B, C): the final hidden state of the language teacher's CLS token (RADIO space)."""
        return self.forward_tokens(rgb)[:, self.global_token_index()]

    # --- the interface -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, rgb: Tensor) -> Tensor:
        """RADIO-space features (B, C, h, w) of ``rgb`` (B, 3, H, W) in [0, 1]; (h, w) = :meth:`output_size`.

        H and W should be multiples of p (as in the reference); other sizes are resized bilinearly to the nearest
        multiples first.
        """
        tokens = self.forward_tokens(rgb)
        return self.radio.split_tokens(tokens, *self.input_size(rgb.shape[-2], rgb.shape[-1]))[1]

    @torch.no_grad()
    def align_to_language(self, feats: Tensor) -> Tensor:
        """Summary head per token: (B, C, h, w) -> (B, D, h, w), or (..., C) -> (..., D)."""
        c = self.feature_dim
        feats = feats.to(self.device)
        if feats.ndim == 4 and feats.shape[1] == c:
            return self.lang_head(feats.permute(0, 2, 3, 1).to(self.dtype)).permute(0, 3, 1, 2)
        if feats.shape[-1] == c:
            return self.lang_head(feats.to(self.dtype))
        raise ValueError(f"features must be (B, {c}, h, w) or (..., {c}); got {tuple(feats.shape)}")

    def _prep(self, prompts: list[str]) -> list[str]:
        return [canonicalize_prompt(p) for p in prompts] if self.canonicalize_text else list(prompts)

    @torch.no_grad()
    def encode_labels_raw(self, labels: list[str]) -> Tensor:
        """RayFronts ``encode_labels``: 80 templates -> tower -> L2-normalise -> mean (K, D), not re-normalised."""
        prompts = [t.format(label) for label in labels for t in OPENAI_IMAGENET_TEMPLATES]
        raw = self.text_tower(self._prep(prompts)).float()
        return average_prompt_embeddings(raw.reshape(len(labels), len(OPENAI_IMAGENET_TEMPLATES), -1))

    @torch.no_grad()
    def encode_text(self, labels: list[str]) -> Tensor:
        """L2-normalised template-averaged text embeddings (K, D) (re-normalised, Q-N7; cosines unchanged)."""
        return F.normalize(self.encode_labels_raw(labels), dim=-1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """L2-normalised embeddings (N, D) of free-text prompts."""
        return F.normalize(self.text_tower(self._prep(prompts)).float(), dim=-1)
