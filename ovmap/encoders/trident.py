"""Trident (arXiv 2411.09219): CLIP + DINO + SAM, splice-then-segment, written from ``baselines.md`` §4.

Pipeline for one RGB frame x (1, 3, H, W) in [0, 1] (the math is in pure functions):

1. CLIP branch: x̃ = CLIP-normalised x (``input_normalization="clip"``; ``"none"`` feeds raw [0, 1] as the RayFronts
   wrapper did before 0b7b4a7, Q-T5), resized with :func:`ovmap.encoders.radseg.sliding_resize_hw` (unit s = CLIP
   patch, at least the crop) and cut into crop x crop windows (:func:`ovmap.encoders.radseg.window_boxes`), all
   windows in one batch.
2. DINO branch: each window un-normalised and ImageNet-normalised -> DINO patch tokens F (last block, final norm).
3. Proxy attention (:func:`proxy_attention`): S = F̂F̂ᵀ, m = mean(S) over **all windows** (``proxy_mean="batch"``,
   Trident) or per window (``"window"``, ProxyCLIP); S' = γ(S − β·m), negatives -> −∞, A = softmax_rows(S').
   Rows that are entirely −∞ keep their diagonal (Q-T7 [REC], with a warning) unless ``fix_empty_rows=False``.
4. CLIP last block (:func:`proxy_block_output`): V = value(ln_1(X)) of the patch tokens (CLS dropped), resized
   bilinearly from the CLIP grid to the DINO grid, O = out_proj(A·V). No residual, no MLP.
5. Splice (:func:`splice_windows`): window outputs averaged on the (r·H'/s) x (r·W'/s) patch canvas.
6. SAM global aggregation (:func:`sam_affinity`): with the last (global) SAM block's attention A_s and values V_s
   cropped to the valid h_v x w_v grid: C = V̂_sV̂_sᵀ per head, ε_i = min(cos_fac·mean_{h,j} C, 0.9) (negative ε ->
   0.6 when ``refine_neg_cos`` is False), W = A_s·[C > ε], 𝒜 = row-normalised mean over heads. The canvas is
   resized to (h_v, w_v) and aggregated: Ĩ = 𝒜·M.
7. Output ln_post(Ĩ) @ proj, L2-normalised (``normalize_output``; the RayFronts wrapper returns it unnormalised,
   Q-T6): (1, D, h_v, w_v), already in CLIP text space (``align_to_language`` is the identity).

The SAM image is the frame rounded to uint8 (``sam_image="frame"``) or, as in the RayFronts wrapper (Q-T3),
rebuilt from the CLIP-normalised tensor with ImageNet statistics (``"rayfronts"``); it is resized with OpenCV
bilinear so that H and W are rounded up to multiples of s, then SAM's ResizeLongestSide (Pillow), normalisation
and padding. Optional SAM prompt refinement of ``predict`` (``sam_refine``) reuses RADSeg+'s refinement
(:func:`ovmap.encoders.radseg.sam_refinement`, the same algorithm, spec §4.7) on SAM's own image embedding; the
refined scores R are lifted as R/ΣR where ΣR > 0 and the unrefined probabilities elsewhere (O-6). The accepted
masks are upsampled as the official code does (``refine_upsample="two_step"``: to the stride-rounded SAM image, then
bilinearly to H x W) or in one step from the 1024 frame to H x W (``"one_step"``, RADSeg+'s order); the two differ
only when H or W is not a multiple of the CLIP patch (1.5-14 % of the refined labels on the golden cases).

Every intermediate stage is returned by :meth:`TridentEncoder.encode_single` (``debug=``) and
:meth:`TridentEncoder.predict_stages`; the golden tests compare them with the official code's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.backbones.sam_vit import load_sam_image_encoder, longest_side_hw, sam_preprocess
from ovmap.encoders.base import ENCODERS, check_rgb
from ovmap.encoders.clip_family import ClipTextSpaceEncoder
from ovmap.encoders.clip import CLIP_MEAN, CLIP_STD, CLIPTextEncoder, load_clip
from ovmap.encoders.dino import IMAGENET_MEAN, IMAGENET_STD, load_dino
from ovmap.encoders.radseg import sliding_resize_hw, window_boxes

log = logging.getLogger(__name__)


# ================================================================================================================
# Pure functions
# ================================================================================================================
def proxy_attention(feats: Tensor, beta: float = 1.2, gamma: float = 3.0, mean: str = "batch",
                    fix_empty_rows: bool = True) -> Tensor:
    """DINO-guided attention A (n_win, N, N) from DINO patch tokens ``feats`` (n_win, N, C_d).

    S = F̂F̂ᵀ; m = mean of all entries of S over the whole batch (``mean="batch"``) or per window (``"window"``);
    S' = γ(S − β·m); S' < 0 -> −∞; A = softmax_rows(S'). A row with every entry −∞ gives NaN in the reference;
    with ``fix_empty_rows`` its diagonal is kept (self-attention) and a warning is issued.
    """
    fn = F.normalize(feats, dim=-1)
    sim = fn @ fn.transpose(-1, -2)
    if mean == "batch":
        m = sim.mean()
    elif mean == "window":
        m = sim.mean(dim=(-1, -2), keepdim=True)
    else:
        raise ValueError(f"proxy mean must be 'batch' or 'window', got {mean!r}")
    logits = gamma * (sim - beta * m)
    masked = logits < 0
    if fix_empty_rows:
        empty = masked.all(dim=-1)
        if bool(empty.any()):
            warnings.warn(f"proxy attention: {int(empty.sum())} fully masked rows keep their diagonal (Q-T7)",
                          RuntimeWarning, stacklevel=2)
            eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
            masked = masked & ~(empty[..., None] & eye)
    return logits.masked_fill(masked, float("-inf")).softmax(dim=-1)


def proxy_block_output(values: Tensor, clip_hw: tuple[int, int], attn: Tensor, dino_hw: tuple[int, int],
                       out_proj_weight: Tensor, out_proj_bias: Tensor | None) -> Tensor:
    """O = out_proj(A·resize(V)) per window: (n_win, C, h_d, w_d).

    Args:
        values: (n_win, N_c, C) value third of the last block's ``in_proj`` on ln_1 of the patch tokens.
        clip_hw: CLIP grid (h_c, w_c); attn: (n_win, N_d, N_d); dino_hw: DINO grid (h_d, w_d).
    """
    n, _, c = values.shape
    v = values.transpose(1, 2).reshape(n, c, *clip_hw)
    if tuple(clip_hw) != tuple(dino_hw):
        v = F.interpolate(v, size=dino_hw, mode="bilinear", align_corners=False)
    v = v.flatten(2).transpose(1, 2)  # (n, N_d, C); the per-head products share A, so one product suffices
    out = F.linear(attn @ v, out_proj_weight, out_proj_bias)
    return out.transpose(1, 2).reshape(n, c, *dino_hw)


def splice_ratio(clip_side: int, dino_side: int) -> int:
    """r between the DINO and CLIP window grids: d/c when d is a multiple of c, else round(d/c) (at least 1)."""
    if dino_side % clip_side == 0:
        return dino_side // clip_side
    return max(1, round(dino_side / clip_side))


def splice_windows(outs: Tensor, boxes: Sequence[tuple[int, int, int, int]], image_hw: tuple[int, int],
                   stride_unit: int, ratio: int = 1) -> Tensor:
    """Average window outputs on the patch canvas.

    Args:
        outs: (n_win, C, r·h_c, r·w_c) window outputs (already at the r-scaled CLIP grid).
        boxes: pixel boxes (y1, x1, y2, x2), multiples of ``stride_unit`` (s).
        image_hw: (H', W').
        ratio: r.

    Returns:
        (1, C, r·H'/s, r·W'/s): sum / count.
    """
    c = outs.shape[1]
    s, r = stride_unit, ratio
    hh, ww = r * image_hw[0] // s, r * image_hw[1] // s
    acc = outs.new_zeros(1, c, hh, ww)
    cnt = outs.new_zeros(1, 1, hh, ww)
    for o, (y1, x1, y2, x2) in zip(outs, boxes):
        ys, xs = r * y1 // s, r * x1 // s
        ye, xe = r * y2 // s, r * x2 // s
        acc[0, :, ys:ye, xs:xe] += o
        cnt[0, :, ys:ye, xs:xe] += 1
    return acc / cnt


def sam_affinity(attn: Tensor, values: Tensor, valid_hw: tuple[int, int], cos_fac: float = 1.2,
                 refine_neg_cos: bool = True, debug: dict[str, Any] | None = None) -> Tensor:
    """Trident's SAM affinity 𝒜 (L, L) on the valid grid (paper Eq. 5, spec §4.5).

    Args:
        attn: (n_s, G², G²) last SAM block attention probabilities (one image).
        values: (n_s, G, G, d) its values.
        valid_hw: (h_v, w_v); tokens (a, b) with a < h_v and b < w_v are kept (A is not renormalised).
        debug: receives ``affinity_eps`` (L,) (ε after the clamp) and ``affinity_kept_frac`` (n_s,) (fraction of
            the (i, j) with C > ε per head).
    """
    n_s, g, _, d = values.shape
    hv, wv = valid_hw
    idx = (torch.arange(hv, device=attn.device)[:, None] * g + torch.arange(wv, device=attn.device)[None]).flatten()
    v = F.normalize(values[:, :hv, :wv].reshape(n_s, hv * wv, d), dim=-1)
    # one head at a time: peak memory ~ 3 (L, L) matrices instead of 4 (n_s, L, L) ones (0.8 GB each for SAM-B)
    eps = sum((v[h] @ v[h].T).mean(dim=1) for h in range(n_s)) * (cos_fac / n_s)  # (L,)
    if not refine_neg_cos:
        eps = torch.where(eps < 0, torch.full_like(eps, 0.6), eps)
    eps = eps.clamp(max=0.9)
    w = torch.zeros(len(idx), len(idx), dtype=attn.dtype, device=attn.device)
    kept = []
    for h in range(n_s):
        above = v[h] @ v[h].T > eps[:, None]
        kept.append(above.float().mean())
        w += torch.where(above, attn[h][idx][:, idx], 0.0)
    w /= n_s
    if debug is not None:
        debug.update(affinity_eps=eps, affinity_kept_frac=torch.stack(kept))
    return w / w.sum(dim=-1, keepdim=True)


def aggregate(canvas: Tensor, affinity: Tensor, valid_hw: tuple[int, int]) -> Tensor:
    """Ĩ = 𝒜·M with M the canvas (1, C, h, w) resized bilinearly to ``valid_hw``: (L, C)."""
    m = F.interpolate(canvas, size=valid_hw, mode="bilinear", align_corners=False)
    return affinity @ m[0].flatten(1).T


def rounded_up_hw(height: int, width: int, unit: int) -> tuple[int, int]:
    """H and W rounded up to multiples of ``unit`` (Trident's SAM-branch resize)."""
    return -(-height // unit) * unit, -(-width // unit) * unit


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("trident")
class TridentEncoder(ClipTextSpaceEncoder):
    """Trident: CLIP with DINO proxy attention on windows, spliced, aggregated with SAM's last-block affinity.

    Args:
        clip_checkpoint: OpenAI ``ViT-B-16.pt`` (TorchScript) / OpenCLIP state dict / ``.safetensors``.
        dino_checkpoint: ``dino_vitbase16_pretrain.pth`` (DINO v1 hub state dict).
        sam_checkpoint: ``sam_vit_b_01ec64.pth`` (segment_anything layout).
        clip_act: ``quick_gelu`` (OpenAI weights) or ``gelu`` (OpenCLIP laion, the huge preset).
        clip_heads, clip_text_heads, dino_heads, sam_heads, sam_decoder_heads: head counts (0 = the published
            value / width // 64); only tiny test models need them.
        slide_crop, slide_stride: windows (336 / 224 paper base; 112 for VOC20 and the RayFronts wrapper).
        beta, gamma: proxy-attention parameters (1.2, 3.0); proxy_mean: ``batch`` (Trident) | ``window``.
        cos_fac, refine_neg_cos: SAM-affinity parameters (1.2, True).
        input_normalization: ``clip`` (default) | ``none`` (pre-0b7b4a7 RayFronts wrapper, Q-T5).
        sam_image: ``frame`` (default) | ``rayfronts`` (Q-T3).
        normalize_output: L2-normalise the output features (Trident 2D; False = the RayFronts wrapper, Q-T6).
        fix_empty_rows: keep the diagonal of fully masked proxy-attention rows (Q-T7).
        sam_refine: refine ``predict`` with SAM prompts; coarse_thresh, minimal_area, sam_mask_coff,
            sam_iou_thresh: its parameters (base config 0.2 / 225 / 0.005 / 0.8; wrapper 0.10 / 225 / 0.005 / 0.9).
        refine_upsample: ``two_step`` (official Trident: accepted masks to the stride-rounded SAM image, then
            bilinear to H x W) | ``one_step`` (straight from the 1024 frame to H x W, as RADSeg+).
        temperature: softmax temperature of ``predict`` (100 = the 3D wrapper; Trident 2D uses 40).
    """

    name = "trident"

    def __init__(self, clip_checkpoint: str | None = None, dino_checkpoint: str | None = None,
                 sam_checkpoint: str | None = None, clip_act: str = "quick_gelu", clip_heads: int = 0,
                 clip_text_heads: int = 0, dino_heads: int = 0, sam_heads: int = 0, sam_decoder_heads: int = 8,
                 slide_crop: int = 336, slide_stride: int = 224, beta: float = 1.2, gamma: float = 3.0,
                 proxy_mean: str = "batch", cos_fac: float = 1.2, refine_neg_cos: bool = True,
                 input_normalization: str = "clip", sam_image: str = "frame", normalize_output: bool = True,
                 fix_empty_rows: bool = True, sam_refine: bool = False, coarse_thresh: float = 0.2,
                 minimal_area: int = 225, sam_mask_coff: float = 0.005, sam_iou_thresh: float = 0.8,
                 refine_upsample: str = "two_step", temperature: float = 100.0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        for name, val in (("clip_checkpoint", clip_checkpoint), ("dino_checkpoint", dino_checkpoint),
                          ("sam_checkpoint", sam_checkpoint)):
            if val is None:
                raise ValueError(f"trident needs {name}=<path> (see ovmap/configs/encoder/trident.yaml for the files)")
        if input_normalization not in ("clip", "none"):
            raise ValueError(f"input_normalization must be 'clip' or 'none', got {input_normalization!r}")
        if sam_image not in ("frame", "rayfronts"):
            raise ValueError(f"sam_image must be 'frame' or 'rayfronts', got {sam_image!r}")
        if refine_upsample not in ("two_step", "one_step"):
            raise ValueError(f"refine_upsample must be 'two_step' or 'one_step', got {refine_upsample!r}")
        from ovmap.encoders.backbones.sam_decoder import build_sam_decoder

        self.paths = [Path(p) for p in (clip_checkpoint, dino_checkpoint, sam_checkpoint)]
        self.clip = load_clip(clip_checkpoint, act=clip_act, vision_heads=clip_heads,
                              text_heads=clip_text_heads).to(self.device)
        self.dino = load_dino(dino_checkpoint, num_heads=dino_heads).to(self.device)
        sam_sd = _read_sam(sam_checkpoint)
        self.sam_encoder = load_sam_image_encoder(sam_sd, num_heads=sam_heads).to(self.device)
        cfg = self.sam_encoder.cfg
        self.sam = build_sam_decoder(sam_sd, sam_decoder_heads, cfg.image_size, (cfg.grid, cfg.grid),
                                     name=str(sam_checkpoint)).to(self.device)
        self.text = CLIPTextEncoder(self.clip)
        self.patch = self.clip.visual.patch_size
        if slide_crop % self.patch or slide_stride % self.patch:
            raise ValueError(f"slide_crop and slide_stride must be multiples of the CLIP patch {self.patch}")
        self.slide_crop, self.slide_stride = int(slide_crop), int(slide_stride)
        self.beta, self.gamma, self.proxy_mean = float(beta), float(gamma), proxy_mean
        self.cos_fac, self.refine_neg_cos = float(cos_fac), bool(refine_neg_cos)
        self.input_normalization, self.sam_image = input_normalization, sam_image
        self.normalize_output, self.fix_empty_rows = bool(normalize_output), bool(fix_empty_rows)
        self.sam_refine = bool(sam_refine)
        self.coarse_thresh, self.minimal_area = float(coarse_thresh), int(minimal_area)
        self.sam_mask_coff, self.sam_iou_thresh = float(sam_mask_coff), float(sam_iou_thresh)
        self.refine_upsample = refine_upsample
        self.temperature = float(temperature)
        self.feature_dim = self.language_dim = self.clip.cfg.embed_dim

    def weight_files(self) -> list[Path]:
        return list(self.paths)

    # --- stages --------------------------------------------------------------------------------------------
    def _normalise(self, rgb: Tensor) -> Tensor:
        if self.input_normalization == "none":
            return rgb
        mean = torch.tensor(CLIP_MEAN, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=rgb.device).view(1, 3, 1, 1)
        return (rgb - mean) / std

    @torch.no_grad()
    def clip_canvas(self, xn: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """Spliced canvas (1, C, r·H'/s, r·W'/s) of a CLIP-normalised image ``xn`` (1, 3, H, W)."""
        s = self.patch
        hh, ww = sliding_resize_hw(xn.shape[-2], xn.shape[-1], self.slide_crop, s)
        if (hh, ww) != tuple(xn.shape[-2:]):
            xn = F.interpolate(xn, size=(hh, ww), mode="bilinear", align_corners=False)
        boxes, grid = window_boxes(hh, ww, self.slide_crop, self.slide_stride)
        if any(v % s for box in boxes for v in box):
            raise ValueError(f"window corners {boxes} are not multiples of the CLIP patch {s}")
        wins = torch.cat([xn[:, :, y1:y2, x1:x2] for (y1, x1, y2, x2) in boxes])
        # DINO input: un-normalise CLIP, re-normalise ImageNet
        cm, cs = (torch.tensor(v, device=wins.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        im, istd = (torch.tensor(v, device=wins.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        dino_feats, dino_hw = self.dino.patch_tokens(((wins * cs + cm) - im) / istd)
        attn = proxy_attention(dino_feats, self.beta, self.gamma, self.proxy_mean, self.fix_empty_rows)
        tokens, clip_hw = self.clip.visual.tokens_before_last(wins)
        block = self.clip.visual.last_block
        values = block.attn.value(block.ln_1(tokens[:, 1:]))
        outs = proxy_block_output(values, clip_hw, attn, dino_hw, block.attn.out_proj.weight,
                                  block.attn.out_proj.bias)
        r = splice_ratio(clip_hw[1], dino_hw[1])
        target = (r * clip_hw[0], r * clip_hw[1])
        if tuple(outs.shape[-2:]) != target:
            outs = F.interpolate(outs, size=target, mode="bilinear", align_corners=False)
        canvas = splice_windows(outs, boxes, (hh, ww), s, r)
        if debug is not None:
            debug.update(preproc_hw=(hh, ww), boxes=boxes, window_grid=grid, dino_feats=dino_feats, proxy_attn=attn,
                         window_outs=outs, canvas=canvas)
        return canvas

    def sam_uint8(self, rgb: Tensor, xn: Tensor) -> np.ndarray:
        """uint8 (H, W, 3) SAM image of one frame (see ``sam_image``)."""
        if self.sam_image == "rayfronts":
            im, istd = (torch.tensor(v, device=xn.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            img = ((xn * istd + im).clamp(0, 1) * 255).to(torch.uint8)
        else:
            img = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
        return img[0].permute(1, 2, 0).cpu().numpy()

    @torch.no_grad()
    def sam_branch(self, image: np.ndarray) -> tuple[Tensor, Tensor, Tensor, tuple[int, int], tuple[int, int]]:
        """(last attn (n_s, G², G²), values (n_s, G, G, d), embedding (1, C, G, G), valid (h_v, w_v), (H₁, W₁)).

        ``image`` (H, W, 3) uint8 is resized (OpenCV bilinear) to H, W rounded up to the CLIP patch
        (:func:`rounded_up_hw`), then to the ResizeLongestSide size (H₁, W₁) inside SAM's square input.
        """
        import cv2

        h, w = image.shape[:2]
        hr, wr = rounded_up_hw(h, w, self.patch)
        if (hr, wr) != (h, w):
            image = cv2.resize(image, (wr, hr), interpolation=cv2.INTER_LINEAR)
        cfg = self.sam_encoder.cfg
        x, (h1, w1) = sam_preprocess(image, cfg.image_size)
        trunk, attn, values = self.sam_encoder(x.to(self.device), return_last_attn=True)
        emb = self.sam.neck(trunk)
        return attn[0], values[0], emb, (h1 // cfg.patch_size, w1 // cfg.patch_size), (h1, w1)

    @torch.no_grad()
    def encode_single(self, rgb: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """Trident features (1, D, h_v, w_v) of one frame (1, 3, H, W) in [0, 1].

        ``debug`` (optional dict) receives the stages: ``preproc_hw`` (H', W'), ``boxes`` (window pixel boxes
        (y1, x1, y2, x2) on the resized image), ``window_grid`` (rows, cols), ``dino_feats`` (n_win, N_d, C_d),
        ``proxy_attn`` (n_win, N_d, N_d), ``window_outs`` (n_win, C, r·h_c, r·w_c), ``canvas`` (1, C, r·H'/s, r·W'/s),
        ``sam_image_hw`` (stride-rounded SAM image), ``sam_input_hw`` (H₁, W₁), ``valid_hw`` (h_v, w_v),
        ``affinity`` (L, L), ``affinity_eps`` (L,), ``affinity_kept_frac`` (n_s,), ``sam_embedding``
        (1, C_s, G, G), ``feat_norms`` (1, 1, h_v, w_v) (norms before the optional L2 normalisation).
        """
        rgb = rgb.to(self.device, torch.float32)
        xn = self._normalise(rgb)
        canvas = self.clip_canvas(xn, debug)
        attn, values, emb, valid, hw1 = self.sam_branch(self.sam_uint8(rgb, xn))
        aff = sam_affinity(attn, values, valid, self.cos_fac, self.refine_neg_cos, debug)
        out = self.clip.visual.head(aggregate(canvas, aff, valid))  # (L, D)
        norms = out.norm(dim=-1)
        if self.normalize_output:
            out = F.normalize(out, dim=-1)
        if debug is not None:
            debug.update(affinity=aff, sam_embedding=emb, sam_image_hw=rounded_up_hw(*rgb.shape[-2:], self.patch),
                         sam_input_hw=hw1, valid_hw=valid, feat_norms=norms.reshape(1, 1, *valid))
        return out.T.reshape(1, -1, *valid)

    # --- the interface -----------------------------------------------------------------------------------
    def encode_image(self, rgb: Tensor) -> Tensor:
        """CLIP-text-space features (B, D, h_v, w_v) on SAM's valid grid."""
        check_rgb(rgb)
        return torch.cat([self.encode_single(rgb[i:i + 1]) for i in range(rgb.shape[0])])



    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """softmax(T·cos) at image resolution; with ``sam_refine`` the SAM-refined scores (R/ΣR, O-6)."""
        check_rgb(rgb)
        if not self.sam_refine:
            feats = self.encode_image(rgb)
            cos = self.cosine_logits(feats, text_embeds)
            return self._probs(cos, rgb.shape[-2:])
        probs, labels = [], []
        for i in range(rgb.shape[0]):
            st = self.predict_stages(rgb[i:i + 1], text_embeds)
            probs.append(st["probs"])
            labels.append(st["labels"])
        return torch.cat(probs), torch.cat(labels)

    @staticmethod
    def cosine_logits(feats: Tensor, text_embeds: Tensor) -> Tensor:
        """cos(F, t) (B, K, h, w) of features (B, D, h, w) and class embeddings (K, D)."""
        text = F.normalize(text_embeds.to(feats), dim=-1)
        return torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), text)

    def _probs(self, cos: Tensor, hw) -> tuple[Tensor, Tensor]:
        cos = F.interpolate(cos, size=tuple(hw), mode="bilinear", align_corners=False)
        probs = torch.softmax(self.temperature * cos, dim=1)
        return torch.cat([torch.zeros_like(probs[:, :1]), probs], dim=1), probs.argmax(dim=1) + 1

    @torch.no_grad()
    def predict_stages(self, rgb: Tensor, text_embeds: Tensor) -> dict[str, Any]:
        """Every stage of ``predict`` for one frame (1, 3, H, W) in [0, 1] and class embeddings (K, D).

        Returns the :meth:`encode_single` stages plus ``feats`` (1, D, h_v, w_v), ``cos_lowres`` (1, K, h_v, w_v),
        ``coarse_probs`` (1, K + 1, H, W) and ``coarse_labels`` (1, H, W) (softmax(T·cos), 1-based), and what
        ``predict`` returns as ``probs`` / ``labels``. With ``sam_refine`` also ``refined_scores`` (K, H, W) (the
        reference's R), ``refined_labels`` (1, H, W) and the refinement's own stages (see
        :func:`ovmap.encoders.radseg.sam_refinement`).
        """
        from ovmap.encoders.radseg import sam_refinement

        check_rgb(rgb)
        if rgb.shape[0] != 1:
            raise ValueError(f"predict_stages takes one frame (1, 3, H, W), got {tuple(rgb.shape)}")
        st: dict[str, Any] = {}
        feats = self.encode_single(rgb, st)
        cos = self.cosine_logits(feats, text_embeds)
        probs, labels = self._probs(cos, rgb.shape[-2:])
        st.update(feats=feats, cos_lowres=cos, coarse_probs=probs, coarse_labels=labels, probs=probs, labels=labels)
        if not self.sam_refine:
            return st
        p = probs[0, 1:]
        sam_hw = st["sam_image_hw"] if self.refine_upsample == "two_step" else None
        new_labels, refined = sam_refinement(labels[0] - 1, p, self.sam, st["sam_embedding"], st["sam_input_hw"],
                                             self.coarse_thresh, self.minimal_area, self.sam_mask_coff,
                                             self.sam_iou_thresh, st, sam_image_hw=sam_hw)
        total = refined.sum(0, keepdim=True)
        out = torch.where(total > 0, refined / total.clamp_min(1e-12), p)
        st.update(refined_scores=refined, refined_labels=(new_labels + 1)[None],
                  probs=torch.cat([torch.zeros_like(out[:1]), out])[None], labels=(new_labels + 1)[None])
        return st


def _read_sam(path: str | Path) -> dict[str, Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path}. Trident base uses sam_vit_b_01ec64.pth "
            "(https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth); huge: sam_vit_h_4b8939.pth.")
    from ovmap.encoders.backbones.sam_vit import SAM_LAYOUT
    from ovmap.fileio import key_mismatch_error, read_state_dict

    sd = read_state_dict(path, "SAM checkpoint", SAM_LAYOUT, nested=("model", "state_dict"), strip_prefixes=())
    unknown = [k for k in sd if not k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))
               and k not in ("pixel_mean", "pixel_std")]
    if unknown:
        raise key_mismatch_error("SAM checkpoint", path, SAM_LAYOUT, [], unknown)
    return sd


__all__ = ["TridentEncoder", "aggregate", "longest_side_hw", "proxy_attention", "proxy_block_output",
           "rounded_up_hw", "sam_affinity", "splice_ratio", "splice_windows"]
