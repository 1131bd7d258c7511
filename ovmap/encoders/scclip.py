"""SC-CLIP (``SuleBai/SC-CLIP`` 0417ba9): CLIP ViT-B/16 with outlier repair and a self-calibrated last block,
written from ``baselines.md`` §6.2 and ``shared/golden/scclip/README.md`` (the official, not textbook, maths).

One window x (1, 3, h_px, w_px), CLIP-normalised, grid h × w = ⌊h_px/p⌋ × ⌊w_px/p⌋, N = h·w. f_l = output of block
l + 1 (CLS first); the blocks run 1 … L−1 (:meth:`CLIPVisionTransformer.tokens_before_last`).

1. :func:`lof_scores` on the patch tokens of the penultimate output f_{L−2}: squared-Euclidean kNN (k = 30), score(p)
   = mean_{o ∈ kNN(p)} d_k(p)/d_k(o) (the official reachability uses p's own k-distance). Outliers: score >
   quantile(scores, 1 − contamination).
2. :func:`repair_outliers`: each outlier token becomes the mean of its in-grid, non-outlier 3×3 neighbours, at the
   same (row-major, K1) positions in f_{L−2} and f_pre (``pre_adjust_idx``).
3. S_mid = cos(repaired f_pre); x = Ŝ_pre · repaired f_{L−2} (Ŝ: entries < β zeroed, rows / (sum + 1e-6)).
4. :func:`self_calibrated_block`: A = ½[softmax(M) + softmax(k kᵀ/√d)], M = 3(S_mid − mean S_mid) with negatives −∞,
   on ln_1(x); out_proj(A v) + res_cls·CLS(f_{L−2}). No residual, no MLP.
5. x ← Ŝ_post x, S_post = cos(f_post) (``post_adjust_idx``, un-repaired).
6. Multi-level: r = Σ f_l, l ∈ [multi_start, multi_end); x ← x + Ŝ_post·(step 4 on r with res_cls·CLS(r)).
7. ln_post(x) @ proj: (N, D) window features in CLIP text space.

2D path (:meth:`SCCLIPEncoder.slide_logits`): mmseg slide windows (crop 224, stride 112), one at a time; cosine
logits of each window upsampled bilinearly to its pixels and averaged per pixel; optional PAMR (:mod:`pamr`,
dilations 8, 16) on the CLIP-normalised image; then ×scale and softmax. :func:`postprocess_classes` is the official
class-level step (max-merge of synonyms, area and probability thresholds with class 0 = background).

Features for 3D (no reference, spec O-2): window features averaged on a canvas of n_y × n_x cells (n = ⌊side/p⌋, the
window grid, along a side ≤ the crop, else round(side/p)); each window covers the cells its pixel box maps to (resized
bilinearly when that differs from its grid). A one-window frame gives exactly the window's features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.base import ENCODERS, check_rgb
from ovmap.encoders.clip import CLIPTextEncoder, ResidualAttentionBlock, clip_normalize, load_clip
from ovmap.encoders.clip_family import ClipTextSpaceEncoder
from ovmap.encoders.pamr import pamr
from ovmap.encoders.radseg import window_boxes
from ovmap.encoders.windows import paste_window


# ================================================================================================================
# Pure functions
# ================================================================================================================
def lof_scores(tokens: Tensor, k: int = 30) -> Tensor:
    """Official SC-CLIP outlier scores (N,) of patch tokens (N, C).

    d(p, o) = ‖p − o‖²; kNN(p) = the k nearest other tokens (``topk(k + 1)`` without the first); d_k(p) = distance
    to the k-th neighbour; score(p) = mean_{o ∈ kNN(p)} d_k(p) / d_k(o).
    """
    n = tokens.shape[0]
    if n < k + 1:
        raise ValueError(f"SC-CLIP's outlier score needs at least {k + 1} patch tokens per window, got {n} "
                         "(the image is too small for the window grid; K3)")
    dist = torch.cdist(tokens[None].double(), tokens[None].double())[0].pow(2).to(tokens.dtype)
    knn_d, knn_i = dist.topk(k + 1, dim=1, largest=False)
    kdist = knn_d[:, -1]  # (N,)
    return (kdist[:, None] / kdist[knn_i[:, 1:]]).mean(dim=1)


def outlier_mask(scores: Tensor, contamination: float = 0.05) -> Tensor:
    """Bool (N,): score strictly greater than the (1 − contamination) quantile (linear interpolation)."""
    return scores > torch.quantile(scores, 1.0 - contamination)


def repair_outliers(tokens: Tensor, mask: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Outlier tokens (row-major positions on the h × w grid) replaced by the mean of their valid 3×3 neighbours.

    Args:
        tokens: (N, C) patch tokens; mask: (N,) bool outliers; grid_hw: (h, w), N = h·w.

    Returns:
        (N, C) copy; an outlier without any in-grid non-outlier neighbour keeps its value.
    """
    h, w = grid_hw
    c = tokens.shape[1]
    grid = tokens.T.reshape(1, c, h, w)
    valid = (~mask).to(tokens.dtype).reshape(1, 1, h, w)
    ones = torch.ones(1, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    total = F.conv2d(F.pad(grid * valid, [1, 1, 1, 1]), ones.expand(c, 1, 3, 3), groups=c)
    count = F.conv2d(F.pad(valid, [1, 1, 1, 1]), ones)
    repaired = (total / count.clamp_min(1)).reshape(c, -1).T
    use = mask & (count.reshape(-1) > 0)
    return torch.where(use[:, None], repaired, tokens)


def cosine_matrix(tokens: Tensor) -> Tensor:
    """(N, N) cosine similarities of tokens (N, C)."""
    t = F.normalize(tokens, dim=-1)
    return t @ t.T


def adjust_matrix(sim: Tensor, beta: float = 0.4) -> Tensor:
    """Ŝ: entries < β set to 0, rows divided by (row sum + 1e-6)."""
    s = torch.where(sim < beta, torch.zeros_like(sim), sim)
    return s / (s.sum(dim=-1, keepdim=True) + 1e-6)


def self_calibrated_block(x: Tensor, s_mid: Tensor, cls: Tensor, block: ResidualAttentionBlock,
                          res_cls: float = 0.3) -> Tensor:
    """out_proj(A v) + res_cls·cls for patch tokens x (N, C) through the last block's ln_1 / in_proj / out_proj.

    A = ½[softmax(M) + softmax(k kᵀ/√d)] per head, M = 3(S_mid − mean(S_mid)) (mean over all N² entries), negatives of
    M set to −∞. q is not used. Returns (N, C).
    """
    _, k, v = block.attn.qkv(block.ln_1(x)[None])  # (1, H, N, d)
    d = k.shape[-1]
    m = 3.0 * (s_mid - s_mid.mean())
    sim_attn = m.masked_fill(m < 0, float("-inf")).softmax(dim=-1)
    kk = (k @ k.transpose(-1, -2) * d ** -0.5).softmax(dim=-1)
    attn = 0.5 * (sim_attn + kk)
    out = (attn @ v)[0].transpose(0, 1).flatten(1)  # (N, C)
    return block.attn.out_proj(out) + res_cls * cls


def postprocess_classes(logits: Tensor, query_class: Sequence[int], logit_scale: float, prob_thd: float = 0.0,
                        area_thd: float | None = None) -> tuple[Tensor, Tensor]:
    """SC-CLIP's official class-level step on averaged query logits (Q, H, W) (README K5, K6).

    softmax(logit_scale·logits) over the Q queries; each class = max over its queries (skipped when Q = K); with
    ``area_thd`` a class k ≥ 1 is kept only if its argmax area > area_thd × the foreground area (classes 1…K−1), the
    probabilities of removed classes are zeroed (not renormalised); labels = argmax; ``prob_thd`` sets the label to 0
    (background) where the top class probability is below it.

    Returns:
        probs (K, H, W) (the reference's returned ``seg_logits``), labels (H, W) int64 class indices.
    """
    qc = torch.as_tensor(list(query_class), dtype=torch.long, device=logits.device)
    if qc.numel() != logits.shape[0]:
        raise ValueError(f"query_class has {qc.numel()} entries for {logits.shape[0]} query channels")
    probs = (logit_scale * logits).softmax(dim=0)
    num_cls = int(qc.max()) + 1
    if num_cls != logits.shape[0]:
        probs = torch.stack([probs[qc == c].amax(dim=0) for c in range(num_cls)])
    if area_thd is not None:
        pred = probs.argmax(dim=0)
        areas = torch.bincount(pred.flatten(), minlength=num_cls)
        fg = areas[1:].sum()
        removed = areas <= area_thd * fg
        removed[0] = False
        probs = probs * (~removed).to(probs.dtype)[:, None, None]
    top, labels = probs.max(dim=0)
    labels = torch.where(top < prob_thd, torch.zeros_like(labels), labels)
    return probs, labels


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("scclip")
class SCCLIPEncoder(ClipTextSpaceEncoder):
    """SC-CLIP: CLIP with LOF outlier repair, similarity pre/post aggregation, self-calibrated last block and
    multi-level fusion, on 224/112 slide windows processed one at a time.

    Args:
        clip_checkpoint: OpenAI ``ViT-B-16.pt`` (TorchScript archive), a plain state dict ``.pt`` or ``.safetensors``.
        clip_heads, clip_text_heads: head counts (0 = width // 64); only tiny test models need them.
        slide_crop, slide_stride: windows in pixels (224 / 112).
        pre_adjust_idx, post_adjust_idx, multi_start_idx, multi_end_idx: block outputs used (8, 3, [3, 10)).
        res_cls: CLS residual weight (0.3); beta: similarity cut β (0.4).
        lof_neighbors, lof_contamination: outlier detection (30, 0.05).
        temperature: score scale of ``predict`` / :meth:`segment` (SC-CLIP base configs 40; VOC21 50, COCO-Object 55;
            the RayFronts 3D wrapper's softmax uses 100).
        prob_thd, area_thd: :meth:`segment`'s thresholds for class lists whose class 0 is the background
            (VOC21 0.15 / 0.1; Context60 0.15 / none; COCO-Object 0.35 / none; others 0 / none).
        pamr_steps: PAMR iterations on the averaged logits (0 = off; 10 = the reference's setting when on).
        pamr_dilations: PAMR dilations (8, 16).
    """

    name = "scclip"

    def __init__(self, clip_checkpoint: str | None = None, clip_heads: int = 0, clip_text_heads: int = 0,
                 slide_crop: int = 224, slide_stride: int = 112, pre_adjust_idx: int = 8, post_adjust_idx: int = 3,
                 multi_start_idx: int = 3, multi_end_idx: int = 10, res_cls: float = 0.3, beta: float = 0.4,
                 lof_neighbors: int = 30, lof_contamination: float = 0.05, temperature: float = 40.0,
                 prob_thd: float = 0.0, area_thd: float | None = None, pamr_steps: int = 0,
                 pamr_dilations: Sequence[int] = (8, 16), device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        if clip_checkpoint is None:
            raise ValueError("scclip needs clip_checkpoint=<path to ViT-B-16.pt> (see ovmap/configs/encoder/scclip.yaml)")
        self.path = Path(clip_checkpoint)
        self.clip = load_clip(clip_checkpoint, vision_heads=clip_heads, text_heads=clip_text_heads).to(self.device)
        self.text = CLIPTextEncoder(self.clip)
        layers = len(self.clip.visual.transformer.resblocks)
        for key, val in (("pre_adjust_idx", pre_adjust_idx), ("post_adjust_idx", post_adjust_idx),
                         ("multi_start_idx", multi_start_idx)):
            if not 0 <= val < layers - 1:
                raise ValueError(f"{key}={val} must index a block output before the last (0 … {layers - 2})")
        if not multi_start_idx < multi_end_idx <= layers - 1:
            raise ValueError(f"multi_end_idx={multi_end_idx} must lie in ({multi_start_idx}, {layers - 1}]")
        if slide_crop <= 0 or slide_stride <= 0:
            raise ValueError(f"slide_crop and slide_stride must be positive, got {slide_crop}, {slide_stride}")
        if int(pamr_steps) < 0:
            raise ValueError(f"pamr_steps must be >= 0, got {pamr_steps}")
        self.patch = self.clip.visual.patch_size
        self.slide_crop, self.slide_stride = int(slide_crop), int(slide_stride)
        self.pre_adjust_idx, self.post_adjust_idx = int(pre_adjust_idx), int(post_adjust_idx)
        self.multi_start_idx, self.multi_end_idx = int(multi_start_idx), int(multi_end_idx)
        self.res_cls, self.beta = float(res_cls), float(beta)
        self.lof_neighbors, self.lof_contamination = int(lof_neighbors), float(lof_contamination)
        self.temperature = float(temperature)
        self.prob_thd = float(prob_thd)
        self.area_thd = None if area_thd is None else float(area_thd)
        self.pamr_steps, self.pamr_dilations = int(pamr_steps), tuple(int(d) for d in pamr_dilations)
        self.feature_dim = self.language_dim = self.clip.cfg.embed_dim

    def weight_files(self) -> list[Path]:
        return [self.path]

    # --- one window ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def window_tokens(self, xn: Tensor, debug: dict[str, Any] | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Final tokens (N, C) before ln_post of one CLIP-normalised window (1, 3, h_px, w_px), and its grid."""
        visual = self.clip.visual
        penult, (h, w), outs = visual.tokens_before_last(xn, all_outputs=True)
        outs = [o[0] for o in outs]  # f_0 … f_{L-2}, each (1 + N, C)
        f_pen = outs[-1]
        scores = lof_scores(f_pen[1:], self.lof_neighbors)
        mask = outlier_mask(scores, self.lof_contamination)
        pen_rep = repair_outliers(f_pen[1:], mask, (h, w))
        pre_rep = repair_outliers(outs[self.pre_adjust_idx][1:], mask, (h, w))
        s_mid = cosine_matrix(pre_rep)
        x = adjust_matrix(s_mid, self.beta) @ pen_rep
        block = visual.last_block
        last = self_calibrated_block(x, s_mid, f_pen[:1], block, self.res_cls)
        s_post = cosine_matrix(outs[self.post_adjust_idx][1:])
        post = adjust_matrix(s_post, self.beta)
        r = torch.stack(outs[self.multi_start_idx:self.multi_end_idx]).sum(0)
        multi = post @ self_calibrated_block(r[1:], s_mid, r[:1], block, self.res_cls)
        final = post @ last + multi
        if debug is not None:
            debug.update(lof_scores=scores, outlier_mask=mask, penult=f_pen, repaired_rows=pen_rep[mask],
                         s_mid=s_mid, s_post=s_post, pre_agg=x, last_block_out=last, multi_branch=multi,
                         final_tokens=final)
        return final, (h, w)

    @torch.no_grad()
    def window_features(self, xn: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """SC-CLIP features (D, h, w) (not normalised) of one CLIP-normalised window (1, 3, h_px, w_px)."""
        tokens, (h, w) = self.window_tokens(xn, debug)
        feats = self.clip.visual.head(tokens).T.reshape(-1, h, w)
        if debug is not None:
            debug["feats"] = feats
        return feats

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """mmseg slide windows ``(y1, x1, y2, x2)`` over an H × W frame (row-major)."""
        return window_boxes(height, width, self.slide_crop, self.slide_stride)[0]

    def canvas_side(self, side: int) -> int:
        """Cells of the 3D feature canvas along a frame side: the window grid ⌊side/p⌋ when one window spans the side
        (side ≤ slide_crop), else round(side/p)."""
        return max(1, side // self.patch if side <= self.slide_crop else round(side / self.patch))

    # --- frames ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_single(self, rgb: Tensor) -> Tensor:
        """Features (1, D, n_y, n_x) of one frame (:meth:`canvas_side`): window features averaged on the canvas."""
        xn = clip_normalize(rgb.to(self.device, torch.float32))
        height, width = xn.shape[-2:]
        hc, wc = self.canvas_side(height), self.canvas_side(width)
        acc = xn.new_zeros(self.feature_dim, hc, wc)
        cnt = xn.new_zeros(1, hc, wc)
        for y1, x1, y2, x2 in self.windows(height, width):
            paste_window(acc, cnt, self.window_features(xn[:, :, y1:y2, x1:x2]), (y1, x1, y2, x2), (height, width))
        return (acc / cnt.clamp_min(1))[None]

    def encode_image(self, rgb: Tensor) -> Tensor:
        """CLIP-text-space features (B, D, n_y, n_x) (not normalised; :meth:`canvas_side`)."""
        check_rgb(rgb)
        return torch.cat([self.encode_single(rgb[i:i + 1]) for i in range(rgb.shape[0])])

    @torch.no_grad()
    def slide_logits(self, rgb: Tensor, text_embeds: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """Averaged per-pixel cosine logits (Q, H, W) of one frame (1, 3, H, W) in [0, 1], after PAMR if on."""
        xn = clip_normalize(rgb.to(self.device, torch.float32))
        height, width = xn.shape[-2:]
        text = F.normalize(text_embeds.to(self.device, torch.float32), dim=-1)
        acc = xn.new_zeros(text.shape[0], height, width)
        cnt = xn.new_zeros(1, height, width)
        boxes = self.windows(height, width)
        win_logits, win_debug = [], []
        for i, (y1, x1, y2, x2) in enumerate(boxes):
            dbg: dict[str, Any] | None = {} if debug is not None else None
            feats = self.window_features(xn[:, :, y1:y2, x1:x2], dbg)
            logits = torch.einsum("dhw,qd->qhw", F.normalize(feats, dim=0), text)
            if debug is not None:
                win_logits.append(logits)
                win_debug.append(dbg)
            acc[:, y1:y2, x1:x2] += F.interpolate(logits[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                  align_corners=False)[0]
            cnt[:, y1:y2, x1:x2] += 1
        logits = acc / cnt
        if debug is not None:
            debug.update(window_boxes=boxes, window_logits=win_logits, windows=win_debug, logits_raw=logits)
        if self.pamr_steps:
            logits = pamr(xn, logits[None], self.pamr_steps, self.pamr_dilations)[0]
        return logits

    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """softmax(temperature·logits) over the K text embeddings at image resolution (official slide path).

        Returns probs (B, K + 1, H, W) with channel 0 = ignore (zeros) and labels (B, H, W) in 1..K.
        """
        check_rgb(rgb)
        probs = torch.stack([(self.temperature * self.slide_logits(rgb[i:i + 1], text_embeds)).softmax(dim=0)
                             for i in range(rgb.shape[0])])
        return torch.cat([torch.zeros_like(probs[:, :1]), probs], dim=1), probs.argmax(dim=1) + 1

    @torch.no_grad()
    def segment(self, rgb: Tensor, query_embeds: Tensor, query_class: Sequence[int]) -> tuple[Tensor, Tensor]:
        """SC-CLIP's official 2D output for one frame (1, 3, H, W): class probabilities (K, H, W) and labels (H, W).

        ``query_embeds`` (Q, D) holds one embedding per query (synonyms of a class line are separate queries,
        separated by ", " in SC-CLIP's class files), ``query_class`` (Q,) the class of each query; class 0 is the
        background when ``prob_thd`` / ``area_thd`` are set (:func:`postprocess_classes`).
        """
        check_rgb(rgb)
        if rgb.shape[0] != 1:
            raise ValueError(f"segment takes one frame (1, 3, H, W), got batch {rgb.shape[0]}")
        logits = self.slide_logits(rgb, query_embeds)
        return postprocess_classes(logits, query_class, self.temperature, self.prob_thd, self.area_thd)


__all__ = ["SCCLIPEncoder", "adjust_matrix", "cosine_matrix", "lof_scores", "outlier_mask", "postprocess_classes",
           "repair_outliers", "self_calibrated_block"]
