"""RADSeg encoder: RADIO + SCRA (last block) + sliding windows + SCGA + SigLIP2 summary-head language projection.

A port of the official RADSeg pipeline written from ``shared/specs/radseg_encoder.md`` and verified against the
golden outputs of the official code (``shared/golden/radseg``). The math lives in pure functions
(:func:`scra_attention`, :func:`sliding_resize_hw`, :func:`window_boxes`, :func:`merge_windows`, :func:`scga`,
:func:`seg_logits`, :func:`probs_to_prediction`, :func:`average_prompt_embeddings`); :class:`RADSegEncoder` is
a thin class around them.

Pipeline for one image x (1, 3, H, W) in [0, 1]:

1. sliding mode (``slide_crop > 0``): resize to (H', W') with :func:`sliding_resize_hw` (multiples of the
   stride, at least the crop; aspect may be distorted), cut windows (:func:`window_boxes`), run all windows in
   one RADIO forward with SCRA on the last block, average the window features on the patch grid
   (:func:`merge_windows`) -> (1, C, ⌈H'/16⌉, ⌈W'/16⌉). ``slide_crop == 0``: one forward of the whole image
   (H, W multiples of 16).
2. SCGA (:func:`scga`) on the merged RADIO-space map -> ``encode_image`` output (1, C, h, w).
3. ``align_to_language``: the SigLIP2 summary head ``_heads.siglip2`` (MLP v2) per token -> (1, D, h, w).
4. ``predict``: softmax(100·cos) -> bilinear upsample to (H, W) -> prompt denoising -> argmax + 1, zero
   ignore channel prepended.

Batches are processed image by image (the official sliding code is only correct for batch 1), so the results
of an image never depend on the other images of its batch.
"""

from __future__ import annotations

import logging
import math
import string
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.base import ENCODERS, Encoder, check_rgb
from ovmap.encoders.radio.checkpoint import (
    build_radio,
    load_adaptor_mlp,
    load_checkpoint_source,
)
from ovmap.encoders.radio.vit import Attention, RadioModel
from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES

log = logging.getLogger(__name__)

#: Default SigLIP2 text tower (the teacher of C-RADIOv3's ``siglip2`` adaptor).
DEFAULT_SIGLIP2_TEXT_MODEL = "google/siglip2-giant-opt-patch16-384"
#: Tokeniser keyword arguments of RADIO's SigLIP2 adaptor wrapper.
SIGLIP2_TOKENIZER_KWARGS = {"max_length": 64, "padding": "max_length", "truncation": True}


# ================================================================================================================
# SCRA
# ================================================================================================================
def scra_attention(u: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, proj_weight: Tensor,
                   proj_bias: Tensor | None, num_heads: int, tau: float = 10.0) -> Tensor:
    """Self-Correlating Recursive Attention (SCRA) branch of a block.

    With q, k, v = split(W_qkv u + b_qkv) into H heads of width d:
    o = W_proj [softmax(q_h k_hᵀ/√d) v_h]_h + b_proj; o_h = the h-th channel chunk of width d of o;
    S_h = τ ô_h ô_hᵀ (ô_h row-L2-normalised, eps 1e-12); S_h[S_h < 0] = −∞; P_h = softmax_rows(S_h);
    output = W_proj [P_h v_h]_h + b_proj (original v, same projection).

    Args:
        u: (B, N, C) normalised tokens (``norm1`` output), prefix tokens included.
        qkv_weight: (3C, C); qkv_bias: (3C,) or None.
        proj_weight: (C, C); proj_bias: (C,) or None.
        num_heads: H.
        tau: τ (``scra_scaling``).

    Returns:
        (B, N, C) the attention-branch output (before the residual).
    """
    b, n, c = u.shape
    d = c // num_heads
    qkv = F.linear(u, qkv_weight, qkv_bias).reshape(b, n, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    o = F.linear(o, proj_weight, proj_bias)  # (B, N, C)
    oh = F.normalize(o.reshape(b, n, num_heads, d).transpose(1, 2), dim=-1)  # (B, H, N, d)
    sim = tau * (oh @ oh.transpose(-1, -2))  # (B, H, N, N)
    sim = sim.masked_fill(sim < 0, float("-inf"))
    attn = sim.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, proj_weight, proj_bias)


def make_scra_core(tau: float) -> Callable[[Attention, Tensor], Tensor]:
    """An :class:`Attention` ``core`` replacing its attention by SCRA with the module's own qkv/proj.

    Like the official code, QK-norm (if the backbone has it) is not applied inside SCRA.
    """

    def core(attn: Attention, u: Tensor) -> Tensor:
        return scra_attention(u, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
                              attn.num_heads, tau)

    return core


# ================================================================================================================
# Sliding windows
# ================================================================================================================
def sliding_resize_hw(height: int, width: int, crop: int, stride: int) -> tuple[int, int]:
    """Image size (H', W') after RADSeg's sliding-mode preprocessing.

    Unchanged if both sides are multiples of ``stride``. Otherwise the long side L goes to L' = ⌈L/s⌉·s, each
    side to int(side·L'/L) rounded up to a multiple of s, then at least ``crop`` (the aspect ratio may change).
    """
    if height % stride == 0 and width % stride == 0:
        return height, width
    long_side = max(height, width)
    new_long = math.ceil(long_side / stride) * stride
    new_h = int(height * new_long / long_side)
    new_w = int(width * new_long / long_side)
    new_h = math.ceil(new_h / stride) * stride
    new_w = math.ceil(new_w / stride) * stride
    return max(new_h, crop), max(new_w, crop)


def preprocess_sliding(rgb: Tensor, crop: int, stride: int) -> Tensor:
    """Resize ``rgb`` (B, 3, H, W) to :func:`sliding_resize_hw` (bilinear, align_corners=False, no antialias)."""
    h, w = rgb.shape[-2:]
    new_hw = sliding_resize_hw(h, w, crop, stride)
    if new_hw == (h, w):
        return rgb
    return F.interpolate(rgb, size=new_hw, mode="bilinear", align_corners=False)


def window_boxes(height: int, width: int, crop: int, stride: int) -> tuple[list[tuple[int, int, int, int]],
                                                                           tuple[int, int]]:
    """Sliding windows over an (H', W') image, row-major.

    Grid h_g = max(H' − crop + s − 1, 0) // s + 1 (same for w). Window (i, j): y2 = min(i·s + crop, H'),
    y1 = max(y2 − crop, 0) (same for x), so the last window ends at the border.

    Returns:
        (boxes, (h_g, w_g)): boxes as pixel ``(y1, x1, y2, x2)``.
    """
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            boxes.append((y1, x1, y2, x2))
    return boxes, (h_grids, w_grids)


def merge_windows(feats: Tensor, boxes: Sequence[tuple[int, int, int, int]], out_hw: tuple[int, int],
                  patch: int = 16) -> Tensor:
    """Average window features on the patch grid.

    Args:
        feats: (n_win, C, h_c, w_c) window features.
        boxes: n_win pixel boxes ``(y1, x1, y2, x2)`` (multiples of ``patch``).
        out_hw: (H', W') image size; the map is (⌈H'/p⌉, ⌈W'/p⌉).
        patch: patch size p.

    Returns:
        (1, C, ⌈H'/p⌉, ⌈W'/p⌉): sum of window features / number of windows covering each cell.
    """
    c = feats.shape[1]
    h, w = math.ceil(out_hw[0] / patch), math.ceil(out_hw[1] / patch)
    acc = feats.new_zeros(1, c, h, w)
    count = feats.new_zeros(1, 1, h, w)
    for f, (y1, x1, y2, x2) in zip(feats, boxes):
        py1, px1 = y1 // patch, x1 // patch
        py2, px2 = py1 + f.shape[-2], px1 + f.shape[-1]
        acc[0, :, py1:py2, px1:px2] += f
        count[0, :, py1:py2, px1:px2] += 1
    return acc / count


# ================================================================================================================
# SCGA, language, prediction
# ================================================================================================================
def scga(feats: Tensor, tau: float = 10.0) -> Tensor:
    """Self-Correlating Global Aggregation.

    F̂ = row-normalise(F), S = F̂F̂ᵀ, m = mean of all entries of S (a scalar over the whole input batch),
    S' = τ(S − m), S'[S' < 0] = −∞, P = softmax_rows(S'), output = P·F (raw F).

    Args:
        feats: (B, C, h, w) RADIO-space feature map.
        tau: τ (``scga_scaling``).

    Returns:
        (B, C, h, w).
    """
    b, c, h, w = feats.shape
    f = feats.flatten(2).transpose(1, 2)  # (B, N, C)
    fn = F.normalize(f, dim=-1)
    sim = fn @ fn.transpose(1, 2)  # (B, N, N)
    sim = tau * (sim - sim.mean())
    sim = sim.masked_fill(sim < 0, float("-inf"))
    out = sim.softmax(dim=-1) @ f
    return out.transpose(1, 2).reshape(b, c, h, w)


def seg_logits(lang: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine similarities and class probabilities.

    Args:
        lang: (B, D, h, w) language-space features.
        text: (K, D) text embeddings (normalised here).

    Returns:
        (cos (B, K, h, w), probs (B, K, h, w) = softmax_K(100·cos)).
    """
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(lang, dim=1), F.normalize(text.to(lang), dim=-1))
    return cos, torch.softmax(100.0 * cos, dim=1)


def probs_to_prediction(probs_lowres: Tensor, out_hw: tuple[int, int], denoise_thresh: float = 0.5,
                        prediction_thresh: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """RADSeg's prediction path after ``_get_seg_logits``.

    Bilinear upsample (align_corners=False) to ``out_hw``; prompt denoising: a class whose max over all pixels
    of the input is < ``denoise_thresh`` gets an all-zero channel; labels = argmax (first on ties) + 1, 0 where
    the max probability < ``prediction_thresh``; an all-zero ignore channel is prepended.

    Args:
        probs_lowres: (B, K, h, w).
        out_hw: (H, W).

    Returns:
        (probs (B, K + 1, H, W), labels (B, H, W) int64 in 0..K, class_max (K,) max per class before denoising).
    """
    probs = F.interpolate(probs_lowres, size=tuple(out_hw), mode="bilinear", align_corners=False)
    class_max = probs.amax(dim=(0, 2, 3))  # (K,)
    keep = class_max >= denoise_thresh
    probs = probs * keep.view(1, -1, 1, 1).to(probs.dtype)
    max_prob, labels = probs.max(dim=1)
    labels = labels + 1
    labels = torch.where(max_prob < prediction_thresh, torch.zeros_like(labels), labels)
    probs = torch.cat([torch.zeros_like(probs[:, :1]), probs], dim=1)
    return probs, labels, class_max


# ================================================================================================================
# Text
# ================================================================================================================
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def canonicalize_prompt(text: str) -> str:
    """SigLIP2 wrapper canonicalisation: ``_`` -> space, drop punctuation, lowercase, collapse whitespace."""
    text = text.replace("_", " ").translate(_PUNCT_TABLE).lower()
    return " ".join(text.split())


def average_prompt_embeddings(raw: Tensor) -> Tensor:
    """Official template averaging: L2-normalise each prompt embedding, then mean over templates.

    Args:
        raw: (K, T, D) text-tower outputs (``pooler_output``) for K labels × T templates.

    Returns:
        (K, D) mean of the normalised embeddings (not re-normalised, as in RADSeg).
    """
    return F.normalize(raw, dim=-1).mean(dim=1)


class SigLIP2TextTower:
    """SigLIP2 text tower loaded lazily with ``transformers`` from a local directory or a hub id.

    Call it with canonicalised prompts; it returns the raw ``pooler_output`` (N, D).
    """

    def __init__(self, model: str = DEFAULT_SIGLIP2_TEXT_MODEL, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 80) -> None:
        self.model_name = str(model)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        try:
            import transformers
        except ImportError as err:  # pragma: no cover
            raise ImportError("the SigLIP2 text tower needs `transformers` (pip install transformers)") from err
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_name)
            text_cls = {"siglip2": "Siglip2TextModel", "siglip": "SiglipTextModel"}.get(config.model_type)
            if text_cls is not None:  # load only the text tower of a full SigLIP(2) checkpoint
                model = getattr(transformers, text_cls).from_pretrained(self.model_name, dtype=self.dtype)
            else:
                model = transformers.AutoModel.from_pretrained(self.model_name, dtype=self.dtype)
                model = getattr(model, "text_model", model)
            try:
                processor = transformers.AutoProcessor.from_pretrained(self.model_name)
            except Exception:  # noqa: BLE001 - a text-only directory has a tokenizer but no image processor
                processor = transformers.AutoTokenizer.from_pretrained(self.model_name)
        except Exception as err:  # noqa: BLE001
            raise FileNotFoundError(
                f"cannot load the SigLIP2 text tower '{self.model_name}' ({err}). Download it (e.g. "
                f"`huggingface-cli download {DEFAULT_SIGLIP2_TEXT_MODEL}`) and pass its local directory as "
                "text_model=<dir>."
            ) from err
        self._tokenizer = processor
        self._model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Tensor:
        if self._model is None:
            self._load()
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self._tokenizer(text=prompts[i:i + self.batch_size], return_tensors="pt",
                                     **SIGLIP2_TOKENIZER_KWARGS)
            tokens = {k: v.to(self.device) for k, v in tokens.items()
                      if k in ("input_ids", "attention_mask", "position_ids")}
            out.append(self._model(**tokens).pooler_output.float())
        return torch.cat(out)


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("radseg")
class RADSegEncoder(Encoder):
    """RADSeg (RADIO + SCRA + sliding windows + SCGA) dense language-aligned encoder.

    Args:
        checkpoint: local RADIO checkpoint (official ``.pth.tar`` or ``.safetensors`` + ``.args.json``), or an
            already loaded ``{'state_dict': ..., 'args': ...}`` dict; takes precedence over ``version``.
        version: official RADIO version resolved (and downloaded once when online) if no checkpoint is given.
        lang_adaptor: teacher whose summary head projects to language space (``siglip2``).
        slide_crop: window size in pixels (multiple of 16); 0 = single pass on the whole image.
        slide_stride: window stride (the resize unit of the sliding-mode preprocessing).
        scra, scga: enable SCRA on the last block / SCGA on the merged map.
        scra_tau, scga_tau: their temperatures τ.
        scga_mode: ``"always"`` (RADSeg repo) or ``"multi_window"`` (RayFronts' copy: only with > 1 window).
        prompt_denoising_thresh, prediction_thresh: thresholds of the predict path.
        text_model: SigLIP2 text tower (local directory or hub id), loaded lazily on first ``encode_text``.
        device: torch device.
        dtype: model dtype (``"float32"``, ``"bfloat16"``, ...).
    """

    name = "radseg"
    _keeps_checkpoint = False

    def __init__(self, checkpoint: str | dict | None = None, version: str = "c-radio_v3-b",
                 lang_adaptor: str = "siglip2", slide_crop: int = 336, slide_stride: int = 112,
                 scra: bool = True, scga: bool = True, scra_tau: float = 10.0, scga_tau: float = 10.0,
                 scga_mode: str = "always", prompt_denoising_thresh: float = 0.5,
                 prediction_thresh: float = 0.0, text_model: str = DEFAULT_SIGLIP2_TEXT_MODEL,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> None:
        super().__init__(device)
        if scga_mode not in ("always", "multi_window"):
            raise ValueError(f"scga_mode must be 'always' or 'multi_window', got {scga_mode!r}")
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        sd, args, self.checkpoint_path = load_checkpoint_source(checkpoint, version)
        self.radio: RadioModel = build_radio(sd, args).to(self.device, self.dtype)
        self.lang_head = load_adaptor_mlp(sd, args, lang_adaptor, "summary").to(self.device, self.dtype)
        if self._keeps_checkpoint:  # RADSeg+ reads its SAM feature head from it, then drops it
            self._state_dict, self._args = sd, args
        log.info("%s: RADIO %d-d x %d blocks (%s), language head '%s' -> %d-d", self.name,
                 self.radio.arch.embed_dim, self.radio.arch.depth, self.checkpoint_path or "in-memory checkpoint",
                 lang_adaptor, self.lang_head.out_dim)
        self.lang_adaptor = lang_adaptor
        patch = self.radio.patch_size
        if slide_crop < 0 or slide_crop % patch:
            raise ValueError(f"slide_crop must be 0 or a positive multiple of the patch size {patch}, got {slide_crop}")
        if slide_crop and (slide_stride <= 0 or slide_stride % patch):
            raise ValueError(f"slide_stride must be a positive multiple of the patch size {patch}, got {slide_stride}")
        self.slide_crop, self.slide_stride = int(slide_crop), int(slide_stride)
        self.scra, self.scga = bool(scra), bool(scga)
        self.scra_tau, self.scga_tau = float(scra_tau), float(scga_tau)
        self.scga_mode = scga_mode
        self.prompt_denoising_thresh = float(prompt_denoising_thresh)
        self.prediction_thresh = float(prediction_thresh)
        self.feature_dim = self.radio.arch.embed_dim
        self.language_dim = self.lang_head.out_dim
        self.text_tower: Callable[[list[str]], Tensor] = SigLIP2TextTower(text_model, self.device)
        self._set_scra(self.scra)

    def weight_files(self) -> list[Path]:
        """The RADIO checkpoint (part of the map cache key); none for an in-memory checkpoint."""
        return [self.checkpoint_path] if self.checkpoint_path is not None else []

    # --- backbone ------------------------------------------------------------------------------------------
    def _set_scra(self, on: bool) -> None:
        self.radio.model.blocks[-1].attn.core = make_scra_core(self.scra_tau) if on else None

    def _check(self, rgb: Tensor) -> None:
        if isinstance(rgb, Tensor) and rgb.ndim == 4 and rgb.shape[1] != 3:
            raise ValueError(f"RADSeg takes RGB images (B, 3, H, W); got {rgb.shape[1]} channels")
        check_rgb(rgb)
        if self.slide_crop == 0:
            p = self.radio.patch_size
            h, w = rgb.shape[-2:]
            if h % p or w % p:
                raise ValueError(
                    f"slide_crop=0 (single pass) needs H and W multiples of {p}; got {h}x{w}. Resize the image "
                    "or use sliding windows (slide_crop > 0)."
                )

    @torch.no_grad()
    def radio_features(self, rgb: Tensor, hooks: dict[str, Tensor] | None = None,
                       scra: bool | None = None) -> Tensor:
        """RADIO patch features (B, C, H/p, W/p) of ``rgb`` (B, 3, H, W) in [0, 1].

        Args:
            hooks: if given, filled with ``tokens_embed``, ``lastblock_in``, ``scra_attn_out`` (the last
                block's attention branch) and ``lastblock_out``, each (B, P + N, C).
            scra: override the encoder's SCRA switch for this call (None: use ``self.scra``).
        """
        if scra is not None and scra != self.scra:
            self._set_scra(scra)
            try:
                return self.radio_features(rgb, hooks)
            finally:
                self._set_scra(self.scra)
        x = rgb.to(self.device, self.dtype)
        handle = None
        if hooks is not None:
            handle = self.radio.model.blocks[-1].attn.register_forward_hook(
                lambda _m, _i, out: hooks.__setitem__("scra_attn_out", out))
        try:
            tokens = self.radio.forward_tokens(x, hooks=hooks)
        finally:
            if handle is not None:
                handle.remove()
        if hooks is not None:
            hooks["lastblock_out"] = tokens
        return self.radio.split_tokens(tokens, x.shape[-2], x.shape[-1])[1]

    @torch.no_grad()
    def encode_single(self, rgb: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """SCGA output (1, C, h, w) of one image ``rgb`` (1, 3, H, W); ``debug`` collects intermediates."""
        if self.slide_crop > 0:
            img = preprocess_sliding(rgb.to(self.device, self.dtype), self.slide_crop, self.slide_stride)
            hh, ww = img.shape[-2:]
            boxes, grid = window_boxes(hh, ww, self.slide_crop, self.slide_stride)
            p = self.radio.patch_size
            if any(v % p for box in boxes for v in box):
                raise ValueError(f"window origins {boxes} are not multiples of the patch size {p}")
            wins = torch.cat([img[:, :, y1:y2, x1:x2] for (y1, x1, y2, x2) in boxes])  # (n_win, 3, hc, wc)
            hooks: dict[str, Tensor] | None = {} if debug is not None else None
            win_feats = self.radio_features(wins, hooks)  # (n_win, C, hc/p, wc/p)
            merged = merge_windows(win_feats, boxes, (hh, ww), p)
            n_win = len(boxes)
        else:
            img = rgb.to(self.device, self.dtype)
            boxes, grid = [(0, 0, img.shape[-2], img.shape[-1])], (1, 1)
            hooks = {} if debug is not None else None
            wins = img
            win_feats = merged = self.radio_features(img, hooks)
            n_win = 0
        run_scga = self.scga and (self.scga_mode == "always" or n_win > 1)
        out = scga(merged, self.scga_tau) if run_scga else merged
        if debug is not None:
            debug.update(preproc=img, windows_input=wins, boxes=boxes, grid=grid, windows_feats=win_feats, merged_feats=merged,
                         scga_feats=out, tokens={k: v[0] for k, v in (hooks or {}).items()})
        return out

    # --- the interface -----------------------------------------------------------------------------------
    def encode_image(self, rgb: Tensor) -> Tensor:
        """SCGA output (B, C, h, w) in RADIO space of ``rgb`` (B, 3, H, W) in [0, 1].

        h, w = ⌈H'/16⌉, ⌈W'/16⌉ of the sliding-mode resized image (H/16, W/16 with ``slide_crop=0``).
        """
        self._check(rgb)
        return torch.cat([self.encode_single(rgb[i:i + 1]) for i in range(rgb.shape[0])])

    @torch.no_grad()
    def align_to_language(self, feats: Tensor) -> Tensor:
        """SigLIP2 summary head per token: (B, C, h, w) -> (B, D, h, w), or (..., C) -> (..., D)."""
        c = self.feature_dim
        feats = feats.to(self.device)
        if feats.ndim == 4 and feats.shape[1] == c:
            out = self.lang_head(feats.permute(0, 2, 3, 1).to(self.dtype))
            return out.permute(0, 3, 1, 2)
        if feats.shape[-1] == c:
            return self.lang_head(feats.to(self.dtype))
        raise ValueError(f"features must be (B, {c}, h, w) or (..., {c}); got {tuple(feats.shape)}")

    @torch.no_grad()
    def encode_text(self, labels: list[str]) -> Tensor:
        """L2-normalised template-averaged SigLIP2 embeddings (K, D) of ``labels``.

        The official RADSeg mean is not re-normalised (:meth:`encode_labels_raw`); normalising does not change
        any cosine similarity, and the interface asks for unit vectors.
        """
        return F.normalize(self.encode_labels_raw(labels), dim=-1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """L2-normalised text-tower embeddings (N, D) of free-text ``prompts`` (canonicalised first)."""
        raw = self.text_tower([canonicalize_prompt(p) for p in prompts])
        return F.normalize(raw.float(), dim=-1)

    @torch.no_grad()
    def encode_labels_raw(self, labels: list[str]) -> Tensor:
        """RADSeg ``encode_labels``: 80 templates per label -> tower -> normalise -> mean (K, D), not normalised."""
        prompts = [t.format(label) for label in labels for t in OPENAI_IMAGENET_TEMPLATES]
        raw = self.text_tower([canonicalize_prompt(p) for p in prompts]).float()
        return average_prompt_embeddings(raw.reshape(len(labels), len(OPENAI_IMAGENET_TEMPLATES), -1))

    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Official RADSeg prediction against ``text_embeds`` (K, D).

        Returns:
            probs: (B, K + 1, H, W), channel 0 all zero (ignore), denoised classes all zero.
            labels: (B, H, W) int64 in 1..K (0 only where the max probability < ``prediction_thresh``).
        """
        self._check(rgb)
        probs, labels = [], []
        for i in range(rgb.shape[0]):
            p, lab = self.predict_single(rgb[i:i + 1], text_embeds)
            probs.append(p)
            labels.append(lab)
        return torch.cat(probs), torch.cat(labels)

    @torch.no_grad()
    def predict_single(self, rgb: Tensor, text_embeds: Tensor, debug: dict[str, Any] | None = None
                       ) -> tuple[Tensor, Tensor]:
        """:meth:`predict` for one image (1, 3, H, W); ``debug`` collects intermediates."""
        feats = self.encode_single(rgb, debug)
        lang = self.align_to_language(feats)
        cos, probs_low = seg_logits(lang.float(), text_embeds.to(self.device).float())
        probs, labels, class_max = probs_to_prediction(
            probs_low, tuple(rgb.shape[-2:]), self.prompt_denoising_thresh, self.prediction_thresh)
        if debug is not None:
            debug.update(lang_feats=lang, cos_sim=cos, probs_lowres=probs_low, class_max_prob_fullres=class_max)
        return probs, labels


# ================================================================================================================
# RADSeg+ (RADIO-SAM refinement)
# ================================================================================================================
def longest_side_hw(height: int, width: int, long_side: int) -> tuple[int, int]:
    """SAM ``ResizeLongestSide.get_preprocess_shape``: scale so the long side is ``long_side``, round half up."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_input_hw(height: int, width: int, long_side: int = 1024) -> tuple[int, int]:
    """RADSeg+'s SAM-branch size: long side -> 1024, short side -> ⌊short·64/long⌋·16 (multiple of 16)."""
    if height >= width:
        return long_side, (width * 64 // height) * 16
    return (height * 64 // width) * 16, long_side


def connected_regions(mask: Tensor) -> list[Tensor]:
    """8-connected components of a boolean (h, w) mask, in raster order of their first pixel."""
    import numpy as np
    from scipy import ndimage

    lab, n = ndimage.label(mask.cpu().numpy().astype(bool), structure=np.ones((3, 3), dtype=int))
    lab_t = torch.from_numpy(lab).to(mask.device)
    return [lab_t == i for i in range(1, n + 1)]


def region_prompts(region: Tensor, prob: Tensor) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Point (x, y) = row-major first argmax of prob·region; box (x1, y1, x2, y2) inclusive of the region."""
    w = region.shape[1]
    idx = int(torch.argmax((prob * region).flatten()))
    ys, xs = torch.nonzero(region, as_tuple=True)
    return (idx % w, idx // w), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def sam_refinement(labels: Tensor, probs: Tensor, sam: Any, features: Tensor, input_size: tuple[int, int],
                   coarse_thresh: float = 0.10, minimal_area: int = 225, mask_coff: float = 0.005,
                   iou_thresh: float = 0.9, debug: dict[str, Any] | None = None,
                   sam_image_hw: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """RADSeg+ refinement of one image (RADSeg ``sam_utils.sam_refinement``, quirks kept).

    The accepted mask logits are upsampled in one step from the cropped 1024 frame to (H, W) (RADSeg+). With
    ``sam_image_hw`` = (H_s, W_s) they go to that SAM image size first and then bilinearly to (H, W): Trident's
    two-step upsampling (its SAM image is the frame with sides rounded up to the CLIP patch).

    Args:
        labels: (H, W) 0-based labels after prompt denoising.
        probs: (K, H, W) probabilities after prompt denoising.
        sam: a :class:`~ovmap.encoders.backbones.sam_decoder.SamDecoder`.
        features: (1, C, 64, 64) SAM image embedding.
        input_size: (h, w) of the SAM-branch image inside the 1024 frame.
        debug: filled with the prompts of every SAM call, ``region_classes`` and, when a mask is accepted,
            ``refine_post_sizes`` ((input_size, first upsampling size)) and ``refine_kept_masks`` (n_kept, H, W) bool.

    Returns:
        (labels (H, W), refined "logits" (K, H, W)); unchanged inputs if SAM accepts no mask.
    """
    k, height, width = probs.shape
    dh, dw = height // 2, width // 2
    lab_ds = F.interpolate(labels[None, None].float(), size=(dh, dw), mode="nearest")[0, 0].long()
    prob_ds = F.interpolate(probs[None], size=(dh, dw), mode="bilinear", align_corners=False)[0]  # (K, dh, dw)
    lab_ds = torch.where(prob_ds.max(0).values < coarse_thresh, torch.full_like(lab_ds, k), lab_ds)
    frame_h, frame_w = longest_side_hw(dh, dw, sam.image_size)
    mask_hw = longest_side_hw(height, width, 256)
    calls = []
    for c in range(k):
        if float(prob_ds[c].max()) < coarse_thresh:
            continue
        regions = [r for r in connected_regions(lab_ds == c) if int(r.sum()) >= minimal_area]
        if not regions:
            continue
        pts, boxes = zip(*(region_prompts(r, prob_ds[c]) for r in regions))
        pts_t = torch.tensor(pts, dtype=torch.float32, device=probs.device)[:, None]  # (n, 1, 2)
        box_t = torch.tensor(boxes, dtype=torch.float32, device=probs.device)  # (n, 4)
        sx, sy = frame_w / dw, frame_h / dh
        pts_t = pts_t * torch.tensor([sx, sy], device=probs.device)
        box_t = box_t * torch.tensor([sx, sy, sx, sy], device=probs.device)
        m = F.interpolate(prob_ds[c][None, None], size=mask_hw, mode="bilinear", align_corners=False)
        m = F.pad(m, (0, 256 - mask_hw[1], 0, 256 - mask_hw[0]))
        m = torch.where(m > coarse_thresh, m * mask_coff, torch.zeros_like(m))
        # Quirk (official): the dense prompt reaches SAM unbatched, (1, 256, 256), so SAM's LayerNorm2d in the
        # mask downscaling normalises over the first spatial axis instead of the channels.
        low, iou = sam.predict(features, pts_t, torch.ones(len(regions), 1, device=probs.device), box_t, m[0])
        calls.append((c, regions, pts_t, box_t, m, low, iou))
    if debug is not None:
        debug.update(region_classes=[cl[0] for cl in calls for _ in cl[1]],
                     sam_call_sizes=[len(cl[1]) for cl in calls],
                     sam_call_point_coords=torch.cat([cl[2] for cl in calls]) if calls else None,
                     sam_call_boxes=torch.cat([cl[3] for cl in calls]) if calls else None,
                     sam_call_iou_scores=torch.cat([cl[6] for cl in calls]) if calls else None,
                     sam_call_mask_input_sum=[float(cl[4].sum()) for cl in calls])
    if not any(bool((cl[6][:, 0] > iou_thresh).any()) for cl in calls):
        return labels, probs
    logits = torch.zeros_like(probs)
    failed, kept_masks = [], []
    first_size = (height, width) if sam_image_hw is None else tuple(sam_image_hw)
    for c, regions, _, _, _, low, iou in calls:
        keep = iou[:, 0] > iou_thresh
        if keep.any():
            up = sam.postprocess(low[keep], input_size, first_size)
            if first_size != (height, width):
                up = F.interpolate(up, size=(height, width), mode="bilinear", align_corners=False)
            up = up[:, 0]  # (n_keep, H, W)
            kept_masks.append(up > 0)
            val = (torch.sigmoid(up) * probs[c]) * (up > 0)
            logits[c] = torch.maximum(logits[c], val.amax(0))
        failed += [(c, r) for r, ok in zip(regions, keep.tolist()) if not ok]
    if debug is not None:
        debug.update(refine_post_sizes=(tuple(input_size), first_size), refine_kept_masks=torch.cat(kept_masks))
    new_labels = logits.argmax(0)
    new_labels = torch.where(logits.amax(0) == 0, labels, new_labels)
    if failed:
        failed_ds = torch.stack([r for _, r in failed]).any(0).float()  # (dh, dw) union of failed regions
        up = F.interpolate(failed_ds[None, None], size=(height, width), mode="nearest")[0]  # (1, H, W)
        logits = torch.maximum(logits, up * probs)
    return new_labels, logits


@ENCODERS.register("radseg_plus")
class RADSegPlusEncoder(RADSegEncoder):
    """RADSeg+ : RADSeg whose ``predict`` is refined with SAM prompted from the coarse labels.

    Feature mode (``encode_image``) is the same as RADSeg. Extra args (besides :class:`RADSegEncoder`'s):

    Args:
        sam_checkpoint: official SAM checkpoint (``sam_vit_h_4b8939.pth``) or a ``.safetensors`` in the same
            layout (with ``<stem>.config.json`` for the decoder head count), or a built
            :class:`~ovmap.encoders.backbones.sam_decoder.SamDecoder`; only the neck, prompt encoder and mask
            decoder are used.
        sam_adaptor: RADIO teacher whose feature projection maps to the SAM image-encoder space (``sam``).
        coarse_thresh, minimal_area, sam_mask_coff, sam_iou_thresh: refinement parameters (RADSeg defaults).
    """

    name = "radseg_plus"
    _keeps_checkpoint = True

    def __init__(self, sam_checkpoint: Any = None, sam_adaptor: str = "sam", coarse_thresh: float = 0.10,
                 minimal_area: int = 225, sam_mask_coff: float = 0.005, sam_iou_thresh: float = 0.9,
                 **kwargs: Any) -> None:
        from ovmap.encoders.backbones.sam_decoder import SamDecoder, load_sam_decoder

        super().__init__(**kwargs)
        if sam_checkpoint is None:
            raise ValueError("radseg_plus needs sam_checkpoint=<path to sam_vit_h_4b8939.pth>")
        sam = sam_checkpoint if isinstance(sam_checkpoint, SamDecoder) else load_sam_decoder(sam_checkpoint)
        self.sam_checkpoint_path = Path(sam_checkpoint) if isinstance(sam_checkpoint, (str, Path)) else None
        self.sam = sam.to(self.device)
        self.sam_feat_head = load_adaptor_mlp(self._state_dict, self._args, sam_adaptor, "feature").to(
            self.device, self.dtype)
        del self._state_dict, self._args
        self.coarse_thresh, self.minimal_area = float(coarse_thresh), int(minimal_area)
        self.sam_mask_coff, self.sam_iou_thresh = float(sam_mask_coff), float(sam_iou_thresh)

    def weight_files(self) -> list[Path]:
        sam = [self.sam_checkpoint_path] if self.sam_checkpoint_path is not None else []
        return super().weight_files() + sam

    @torch.no_grad()
    def sam_features(self, rgb: Tensor, debug: dict[str, Any] | None = None) -> tuple[Tensor, tuple[int, int]]:
        """SAM image embedding (1, C_sam, 64, 64) of one image and the SAM-branch size (h, w).

        RADIO (SCRA per the switch, no sliding, no SCGA) at the SAM size -> ``sam`` feature head -> zero-pad
        right/bottom to the embedding grid -> SAM neck.
        """
        hw = sam_input_hw(rgb.shape[-2], rgb.shape[-1], self.sam.image_size)
        img = F.interpolate(rgb.to(self.device, self.dtype), size=hw, mode="bilinear", align_corners=False)
        feats = self.radio_features(img)  # (1, C, h/16, w/16)
        adapted = self.sam_feat_head(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).float()
        eh, ew = self.sam.prompt_encoder.image_embedding_size
        adapted = F.pad(adapted, (0, ew - adapted.shape[-1], 0, eh - adapted.shape[-2]))
        emb = self.sam.neck(adapted)
        if debug is not None:
            debug.update(sam_input_hw=hw, sam_adaptor_feats_shape=tuple(feats.shape[:1]) + (adapted.shape[1],)
                         + tuple(feats.shape[-2:]), sam_neck_feats=emb)
        return emb, hw

    @torch.no_grad()
    def predict_single(self, rgb: Tensor, text_embeds: Tensor, debug: dict[str, Any] | None = None
                       ) -> tuple[Tensor, Tensor]:
        feats = self.encode_single(rgb, debug)
        lang = self.align_to_language(feats)
        cos, probs_low = seg_logits(lang.float(), text_embeds.to(self.device).float())
        height, width = rgb.shape[-2:]
        probs = F.interpolate(probs_low, size=(height, width), mode="bilinear", align_corners=False)
        class_max = probs.amax(dim=(0, 2, 3))
        probs = probs * (class_max >= self.prompt_denoising_thresh).view(1, -1, 1, 1).to(probs.dtype)
        max_prob, labels0 = probs.max(dim=1)
        emb, hw = self.sam_features(rgb, debug)
        new_labels, logits = sam_refinement(
            labels0[0], probs[0], self.sam, emb, hw, self.coarse_thresh, self.minimal_area, self.sam_mask_coff,
            self.sam_iou_thresh, debug)
        labels = new_labels[None] + 1
        labels = torch.where(max_prob < self.prediction_thresh, torch.zeros_like(labels), labels)
        out = torch.cat([torch.zeros_like(logits[None, :1]), logits[None]], dim=1)
        if debug is not None:
            debug.update(lang_feats=lang, cos_sim=cos, probs_lowres=probs_low, class_max_prob_fullres=class_max)
        return out, labels
