"""TextRegion (arXiv 2505.23769): CLIP value pooling over class-agnostic region masks, from ``baselines.md`` §5.

Pipeline for one frame x (1, 3, H, W) in [0, 1]:

1. CLIP views (:func:`tile_boxes`): a global view (the whole image resized to crop x crop, aspect ignored) and
   non-overlapping tiles (n_h = max(H // crop, 1) x n_w), each resized to crop x crop (bicubic, antialiased),
   CLIP-normalised, batched [global, tiles...].
2. Values of the last block (:func:`view_values`): v = value third of ``in_proj``(ln_1(X)), CLS dropped. The
   multi-resolution value map (:func:`multires_sum`) is the global map upsampled bilinearly to the full grid
   (n_h·g) x (n_w·g) **plus** each tile's map in its block (a sum, [RC] Q-R2).
3. Region masks (:class:`RegionMaskGenerator`): a point grid through a promptable segmenter with multimask output,
   TextRegion's filters (predicted IoU, stability, box NMS, size on the 256² logits), soft masks clamp(logit, 0, 3)
   at image resolution, ordered whole > part > sub-part by IoU, then fused (:func:`fuse_masks`).
4. Masks on the patch grid (bilinear, clamped to [0, 1]); global-patch removal (:func:`remove_global_patches`).
5. Region tokens (:func:`region_tokens`): f_r = norm(ln_post(out_proj(Σ_p m_r(p) v_p)) @ proj) (unnormalised
   weights, no MLP: the evaluation path, Q-R3/Q-R4).
6. Fallback features (:func:`sclip_features`): SCLIP correlative attention on the last block per view; the global
   view's features upsampled plus each tile's features.
7. Dense features (§5.8, [REC], O-1 (a)): F(x) = Σ_r m_r(x) f_r / Σ_r m_r(x) where Σ_r m_r(x) > 0, the fallback
   elsewhere, at output stride ``output_stride`` (default 4). ⟨F, t⟩ is a positive multiple of TextRegion's
   score(x, c) = Σ_r ℓ_rc m_r(x), so the per-pixel argmax is TextRegion's. ``predict`` is the generic cosine /
   softmax(T·cos) wrapper on F, or TextRegion's own softmax(T·score) with ``prob_space="textregion"``.

Mask backends (``mask_model``): ``sam2`` (default, the paper's) is ovmap's pure-torch SAM 2.1 image path
(:mod:`ovmap.encoders.backbones.sam2`: Hiera + FPN + SAM 2 decoder) loading the official
``sam2.1_hiera_{tiny,small,base_plus,large}.pt`` (hiera-b+ for the RADSeg base row); the image is resized to
1024² ignoring the aspect ratio (spec §5.2), the point grid lives in that square frame. ``mask_model="sam"`` uses
ovmap's SAM v1 (original ``segment_anything`` checkpoints) with the same point grid, filters and fusion: a documented
substitute, not the paper's configuration.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.base import ENCODERS, check_rgb
from ovmap.encoders.clip_family import ClipTextSpaceEncoder
from ovmap.encoders.clip import CLIP, CLIPTextEncoder, clip_normalize, load_clip

log = logging.getLogger(__name__)


# ================================================================================================================
# CLIP side
# ================================================================================================================
def tile_boxes(height: int, width: int, crop: int) -> tuple[list[tuple[int, int, int, int]], tuple[int, int]]:
    """Non-overlapping tiles (y1, x1, y2, x2), row-major, and the grid (n_h, n_w) (spec §5.2)."""
    n_h, n_w = max(height // crop, 1), max(width // crop, 1)
    th, tw = math.ceil(height / n_h), math.ceil(width / n_w)
    boxes = []
    for i in range(n_h):
        for j in range(n_w):
            y2, x2 = min(i * th + th, height), min(j * tw + tw, width)
            boxes.append((max(y2 - th, 0), max(x2 - tw, 0), y2, x2))
    return boxes, (n_h, n_w)


def make_views(rgb: Tensor, crop: int) -> tuple[Tensor, tuple[int, int]]:
    """[global, tiles...] views (1 + n, 3, crop, crop) of ``rgb`` (1, 3, H, W) in [0, 1] (bicubic + antialias)."""
    boxes, grid = tile_boxes(rgb.shape[-2], rgb.shape[-1], crop)
    crops = [rgb] + [rgb[:, :, y1:y2, x1:x2] for (y1, x1, y2, x2) in boxes]
    views = [F.interpolate(c, size=(crop, crop), mode="bicubic", align_corners=False, antialias=True) for c in crops]
    return torch.cat(views), grid


def multires_sum(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Global map (maps[0]) upsampled bilinearly to (n_h·g, n_w·g) plus each tile map in its block: (C, n_h·g, n_w·g)."""
    n_h, n_w = grid
    c, g, _ = maps.shape[1:]
    out = F.interpolate(maps[:1], size=(n_h * g, n_w * g), mode="bilinear", align_corners=False)[0]
    for k, tile in enumerate(maps[1:]):
        i, j = divmod(k, n_w)
        out[:, i * g:(i + 1) * g, j * g:(j + 1) * g] += tile
    return out


def view_values(clip: CLIP, views: Tensor) -> tuple[Tensor, Tensor]:
    """(last-block input X (V, 1 + N, C), value maps (V, C, g, g)) of CLIP-normalised views."""
    x, (h, w) = clip.visual.tokens_before_last(views)
    block = clip.visual.last_block
    v = block.attn.value(block.ln_1(x))[:, 1:]
    return x, v.transpose(1, 2).reshape(v.shape[0], -1, h, w)


def sclip_features(clip: CLIP, x: Tensor) -> Tensor:
    """SCLIP-attention last block, normalised projected patch features (V, D, g, g) (spec §5.5).

    A_h = softmax(q qᵀ/√d) + softmax(k kᵀ/√d); x' = X + out_proj([A_h v_h]); x' += MLP(ln_2 x');
    f = norm(ln_post(x') @ proj).
    """
    block = clip.visual.last_block
    q, k, v = block.attn.qkv(block.ln_1(x))
    d = q.shape[-1]
    a = torch.softmax(q @ q.transpose(-1, -2) / math.sqrt(d), -1) + torch.softmax(k @ k.transpose(-1, -2) / math.sqrt(d),
                                                                                  -1)
    out = x + block.attn.out_proj((a @ v).transpose(1, 2).flatten(2))
    out = out + block.mlp(block.ln_2(out))
    f = F.normalize(clip.visual.head(out[:, 1:]), dim=-1)
    g = int(round(math.sqrt(f.shape[1])))
    return f.transpose(1, 2).reshape(f.shape[0], -1, g, f.shape[1] // g)


def global_patch_difference(masks: Tensor, values: Tensor) -> Tensor:
    """belong − outside (N,) of TextRegion's global-patch filter (spec §5.4 step 4).

    With patch-grid masks (R, N) in [0, 1] and values (N, C): s(p, r) = mean over q with m_r(q) > 0 of
    cos(v_p, v_q); belong(p) = mean of s(p, r) over the regions containing p, outside(p) = mean over the others
    (each with +1e-9 in the count).
    """
    vn = F.normalize(values, dim=-1)
    sim = vn @ vn.T  # (N, N)
    inside = (masks > 0).float()  # (R, N)
    s = (sim @ inside.T) / inside.sum(1).clamp_min(1e-12)[None]  # (N, R): mean over q in region r
    belong = (s * inside.T).sum(1) / (inside.sum(0) + 1e-9)
    outside = (s * (1 - inside.T)).sum(1) / ((1 - inside).sum(0) + 1e-9)
    return belong - outside


def remove_global_patches(masks: Tensor, values: Tensor, thresh: float = 0.07) -> Tensor:
    """Masks (R, N) with the patches whose :func:`global_patch_difference` is < ``thresh`` zeroed in every mask."""
    keep = global_patch_difference(masks, values) >= thresh
    return masks * keep[None].to(masks.dtype)


def pooled_values(clip: CLIP, masks: Tensor, values: Tensor, normalize: bool = False) -> Tensor:
    """u_r = out_proj(Σ_p m_r(p) v_p) (R, C) from masks (R, N) and values (N, C): unnormalised weights, the bias added
    once (Q-R3). ``normalize`` pools v_p/‖v_p‖ (norm over all C channels) instead: the official code in float32
    (``value_pooling="normalized"``, golden README R1)."""
    if normalize:
        values = F.normalize(values, dim=-1)
    return clip.visual.last_block.attn.out_proj(masks @ values)


def region_tokens(clip: CLIP, masks: Tensor, values: Tensor, normalize: bool = False) -> Tensor:
    """f_r = norm(ln_post(u_r) @ proj): (R, D), u_r from :func:`pooled_values`."""
    return F.normalize(clip.visual.head(pooled_values(clip, masks, values, normalize)), dim=-1)


# ================================================================================================================
# Region masks
# ================================================================================================================
def box_from_mask(mask: Tensor) -> Tensor:
    """(x1, y1, x2, y2) of ``mask`` (..., h, w) bool (zeros where empty)."""
    h, w = mask.shape[-2:]
    rows, cols = mask.any(-1), mask.any(-2)
    ar_h, ar_w = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    y1 = torch.where(rows, ar_h, h).amin(-1)
    y2 = torch.where(rows, ar_h, -1).amax(-1)
    x1 = torch.where(cols, ar_w, w).amin(-1)
    x2 = torch.where(cols, ar_w, -1).amax(-1)
    empty = ~rows.any(-1)
    box = torch.stack([x1, y1, x2, y2], -1).float()
    return torch.where(empty[..., None], torch.zeros_like(box), box)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (A, B) of boxes (x1, y1, x2, y2)."""
    area = lambda x: (x[:, 2] - x[:, 0]).clamp_min(0) * (x[:, 3] - x[:, 1]).clamp_min(0)  # noqa: E731
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp_min(1e-12)


def nms(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """Greedy NMS: indices kept, by decreasing score.

    The order is torch's CPU ``argsort(descending=True)`` on every device: the order of torchvision's CPU NMS kernel
    that the reference runs (not a stable sort: tied scores do not come out in index order, golden README R2), so
    ties are broken deterministically and as in the reference.
    """
    order = scores.detach().cpu().argsort(descending=True)
    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i].cpu() > thresh
    return torch.tensor(keep, dtype=torch.long)


def stability_score(logits: Tensor, offset: float = 1.0) -> Tensor:
    """#(logit > offset) / #(logit > −offset) per mask."""
    hi = (logits > offset).flatten(-2).sum(-1).float()
    lo = (logits > -offset).flatten(-2).sum(-1).float()
    return hi / lo.clamp_min(1)


def fuse_groups(masks: Tensor, boxes: Tensor, box_thresh: float = 0.2, contain_thresh: float = 0.8) -> Tensor:
    """Fused region of each ordered soft mask (R, H, W) with boxes (R, 4): (R,) int64, −1 for all-zero masks
    (dropped); regions are numbered in the order they are opened (spec §5.3 step 7)."""
    r = len(masks)
    group = torch.full((r,), -1, dtype=torch.long)
    live = (masks.flatten(1).amax(1) > 0).tolist() if r else []
    sums = masks.flatten(1).sum(1)
    ious = box_iou(boxes, boxes)
    n = 0
    for i in range(r):
        if not live[i] or group[i] >= 0:
            continue
        group[i] = n
        for j in range(r):
            if not live[j] or group[j] >= 0 or ious[i, j] <= box_thresh:
                continue
            small = torch.minimum(sums[i], sums[j])
            contain = float(torch.minimum(masks[i], masks[j]).sum() / small) if small >= 1e-8 else 0.0
            if contain > contain_thresh:
                group[j] = n
        n += 1
    return group


def fuse_masks(masks: Tensor, boxes: Tensor | None, box_thresh: float = 0.2, contain_thresh: float = 0.8,
               groups: Tensor | None = None) -> Tensor:
    """TextRegion's fusion of ordered soft masks (R, H, W): the element-wise maximum over each of
    :func:`fuse_groups` (given or computed): (R', H, W)."""
    if groups is None:
        groups = fuse_groups(masks, boxes, box_thresh, contain_thresh)
    n = int(groups.max()) + 1 if len(groups) else 0
    out = [masks[groups == g].amax(0) for g in range(n)]
    return torch.stack(out) if out else masks.new_zeros(0, *masks.shape[1:])


class RegionMaskGenerator:
    """Point-grid mask generation with TextRegion's settings on a promptable segmenter.

    Args:
        predict: ``predict(points (P, 2) in the 1024² frame (x, y)) -> (low-res logits (P, 3, 256, 256), IoU (P, 3))``
            with multimask outputs in the order sub-part, part, whole.
        points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_size, fuse, fuse_threshold:
            TextRegion's defaults 16 / 0.6 / 0.6 / 0.9 / 100 / True / 0.8.
    """

    def __init__(self, predict: Callable[[Tensor], tuple[Tensor, Tensor]], points_per_side: int = 16,
                 pred_iou_thresh: float = 0.6, stability_score_thresh: float = 0.6, box_nms_thresh: float = 0.9,
                 min_size: int = 100, fuse: bool = True, fuse_threshold: float = 0.8, input_size: int = 1024) -> None:
        self.predict = predict
        self.points_per_side = points_per_side
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.box_nms_thresh, self.min_size = box_nms_thresh, min_size
        self.fuse, self.fuse_threshold = fuse, fuse_threshold
        self.input_size = input_size

    def point_grid(self) -> Tensor:
        """(n², 2) points ((i + 0.5)/n, (j + 0.5)/n) scaled to the square input frame (x, y)."""
        n = self.points_per_side
        c = (torch.arange(n, dtype=torch.float32) + 0.5) / n * self.input_size
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        return torch.stack([xx.flatten(), yy.flatten()], -1)

    def __call__(self, image_hw: tuple[int, int], debug: dict[str, Any] | None = None) -> Tensor:
        """Fused soft masks (R, H, W) in [0, 3] at image resolution.

        ``debug`` (optional dict) receives, per candidate c = 3·point + k (k: 0 sub-part, 1 part, 2 whole):
        ``points`` (P, 2), ``iou`` (P, 3), ``stability`` (P, 3), ``mask_size`` (P, 3) (#logit > 0 on the low-res
        grid), ``boxes`` (P, 3, 4) (inclusive (x1, y1, x2, y2) there), ``stage`` (P, 3) (0 dropped by IoU,
        1 by stability, 2 by NMS, 3 by size, 4 kept), ``nms_order`` / ``ranked`` (candidate ids after NMS in its
        order / in the ranking fed to fusion), ``nms_masks`` (n, h, w) bool and ``fused_group`` (per ranked mask,
        −1 = all-zero).
        """
        points = self.point_grid()
        logits, iou = self.predict(points)  # (P, 3, h, w), (P, 3)
        logits, iou = logits.float().flatten(0, 1), iou.float().flatten()
        n_cand = len(iou)
        kinds = torch.arange(3).repeat(n_cand // 3)  # 0 sub-part, 1 part, 2 whole
        stab = stability_score(logits)
        stage = torch.full((n_cand,), 4, dtype=torch.uint8)
        ok_iou = iou > self.pred_iou_thresh
        ok_stab = stab >= self.stability_score_thresh
        stage[~ok_iou] = 0
        stage[ok_iou & ~ok_stab] = 1
        cand = torch.nonzero(ok_iou & ok_stab)[:, 0]
        boxes = box_from_mask(logits[cand] > 0)
        keep_nms = cand[nms(boxes, iou[cand], self.box_nms_thresh)] if len(cand) else cand
        dropped = torch.ones(n_cand, dtype=torch.bool)
        dropped[keep_nms] = False
        stage[dropped & (stage == 4)] = 2
        big = (logits[keep_nms] > 0).flatten(1).sum(1) > self.min_size
        stage[keep_nms[~big]] = 3
        kept = keep_nms[big].tolist()
        # whole > part > sub-part, each by IoU descending; Python's sort is stable: ties keep the NMS order
        ranked = torch.tensor(sorted(kept, key=lambda c: (-int(kinds[c]), -float(iou[c]))), dtype=torch.long)
        if debug is not None:
            debug.update(points=points, iou=iou.reshape(-1, 3), stability=stab.reshape(-1, 3),
                         mask_size=(logits > 0).flatten(1).sum(1).reshape(-1, 3),
                         boxes=box_from_mask(logits > 0).reshape(-1, 3, 4), stage=stage.reshape(-1, 3),
                         nms_order=keep_nms, nms_masks=logits[keep_nms] > 0, ranked=ranked,
                         fused_group=torch.zeros(0, dtype=torch.long))
        if len(ranked) == 0:
            return logits.new_zeros(0, *image_hw)
        soft = F.interpolate(logits[ranked].clamp(0, 3)[:, None], size=tuple(image_hw), mode="bilinear",
                             align_corners=False)[:, 0]
        if not self.fuse:
            return soft
        groups = fuse_groups(soft, box_from_mask(logits[ranked] > 0), 0.2, self.fuse_threshold)
        if debug is not None:
            debug["fused_group"] = groups
        return fuse_masks(soft, None, groups=groups)


# ================================================================================================================
# Dense features
# ================================================================================================================
def dense_features(masks: Tensor, tokens: Tensor, fallback: Tensor) -> Tensor:
    """F = Σ_r m_r f_r / Σ_r m_r where Σ_r m_r > 0, else the fallback: (D, h, w).

    Args:
        masks: (R, h, w) in [0, 1]; tokens: (R, D); fallback: (D, h, w).
    """
    if masks.numel() == 0:
        return fallback
    total = masks.sum(0)
    feats = torch.einsum("rhw,rd->dhw", masks, tokens) / total.clamp_min(1e-12)
    return torch.where(total[None] > 0, feats, fallback)


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("textregion")
class TextRegionEncoder(ClipTextSpaceEncoder):
    """TextRegion: CLIP value pooling over region masks, densified for 3D mapping (spec §5.8).

    Args:
        clip_checkpoint: OpenAI ``ViT-B-16.pt`` (RADSeg base) / OpenCLIP ViT-H/14 (huge, ``clip_act=gelu``).
        mask_model: ``sam2`` (SAM 2.1, the paper's) | ``sam`` (SAM v1 substitute).
        mask_checkpoint: the mask model's checkpoint (``sam2.1_hiera_base_plus.pt`` / ``sam_vit_*.pth``).
        sam2_checkpoint: alias of ``mask_checkpoint`` for ``mask_model=sam2`` (give one of them). A non-published
            SAM 2.1 (tiny test models) takes its architecture from a sibling ``<stem>.config.json``.
        sam2_points_per_batch: prompts decoded at once by SAM 2.1 (memory bound only; results do not change).
        clip_heads, clip_text_heads, sam_heads, sam_decoder_heads: head counts (0 = published values); tiny tests.
        crop_size: CLIP view size (336).
        points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_size, fuse_mask,
            fuse_mask_threshold: mask generator settings (16 / 0.6 / 0.6 / 0.9 / 100 / True / 0.8).
        remove_global_patch, global_patch_threshold: global-patch filter (True, 0.07).
        value_pooling: ``raw`` (pool the raw values v_p: the official code with fp16 CLIP, i.e. the OpenAI B/16 path on
            GPU) | ``normalized`` (pool v_p/‖v_p‖: the official code in float32 with ``remove_global_patch``, i.e. on
            CPU and for fp32 checkpoints such as laion ViT-H/14, TextRegion-H). See ovmap/encoders/README.md.
        output_stride: stride of the dense feature map relative to the input (4).
        prob_space: ``cosine`` (generic softmax(T·cos(F, t))) | ``textregion`` (softmax(T·Σ_r ℓ m_r)).
        temperature: 100 for ``cosine`` (3D wrapper); TextRegion 2D uses 50 (``region_logit_scale``).
    """

    name = "textregion"

    def __init__(self, clip_checkpoint: str | None = None, mask_model: str = "sam2",
                 mask_checkpoint: str | None = None, clip_act: str = "quick_gelu", clip_heads: int = 0,
                 clip_text_heads: int = 0, sam_heads: int = 0, sam_decoder_heads: int = 8, crop_size: int = 336,
                 points_per_side: int = 16, pred_iou_thresh: float = 0.6, stability_score_thresh: float = 0.6,
                 box_nms_thresh: float = 0.9, min_size: int = 100, fuse_mask: bool = True,
                 fuse_mask_threshold: float = 0.8, remove_global_patch: bool = True,
                 global_patch_threshold: float = 0.07, value_pooling: str = "raw", output_stride: int = 4,
                 prob_space: str = "cosine",
                 temperature: float = 100.0, device: str | torch.device = "cpu", sam2_checkpoint: str | None = None,
                 sam2_points_per_batch: int = 64) -> None:
        super().__init__(device)
        if clip_checkpoint is None:
            raise ValueError("textregion needs clip_checkpoint=<path to ViT-B-16.pt>")
        if value_pooling not in ("raw", "normalized"):
            raise ValueError(f"value_pooling must be 'raw' or 'normalized', got {value_pooling!r}")
        if prob_space not in ("cosine", "textregion"):
            raise ValueError(f"prob_space must be 'cosine' or 'textregion', got {prob_space!r}")
        self.clip = load_clip(clip_checkpoint, act=clip_act, vision_heads=clip_heads,
                              text_heads=clip_text_heads).to(self.device)
        self.text = CLIPTextEncoder(self.clip)
        self.paths = [Path(clip_checkpoint)]
        self.sam2 = None
        if mask_model == "sam2":
            if sam2_checkpoint is not None and mask_checkpoint is not None and sam2_checkpoint != mask_checkpoint:
                raise ValueError("textregion: give the SAM 2.1 checkpoint once (sam2_checkpoint or mask_checkpoint)")
            mask_checkpoint = sam2_checkpoint if sam2_checkpoint is not None else mask_checkpoint
            if mask_checkpoint is None:
                raise ValueError("textregion with mask_model=sam2 needs sam2_checkpoint=<sam2.1_hiera_*.pt> "
                                 "(RADSeg base: sam2.1_hiera_base_plus.pt)")
            from ovmap.encoders.backbones.sam2 import load_sam2

            self.sam2 = load_sam2(mask_checkpoint).to(self.device)
            self.sam2_points_per_batch = int(sam2_points_per_batch)
            input_size = self.sam2.cfg.image_size
        elif mask_model == "sam":
            if mask_checkpoint is None:
                raise ValueError("textregion with mask_model=sam needs mask_checkpoint=<sam_vit_*.pth>")
            from ovmap.encoders.backbones.sam_vit import load_sam_image_encoder
            from ovmap.encoders.backbones.sam_decoder import build_sam_decoder
            from ovmap.encoders.trident import _read_sam

            sd = _read_sam(mask_checkpoint)
            self.sam_encoder = load_sam_image_encoder(sd, num_heads=sam_heads).to(self.device)
            cfg = self.sam_encoder.cfg
            self.sam = build_sam_decoder(sd, sam_decoder_heads, cfg.image_size, (cfg.grid, cfg.grid),
                                         name=str(mask_checkpoint)).to(self.device)
            input_size = cfg.image_size
        else:
            raise ValueError(f"mask_model must be 'sam2' or 'sam', got {mask_model!r}")
        self.paths.append(Path(mask_checkpoint))
        self.mask_kwargs = dict(points_per_side=int(points_per_side), pred_iou_thresh=float(pred_iou_thresh),
                                stability_score_thresh=float(stability_score_thresh),
                                box_nms_thresh=float(box_nms_thresh), min_size=int(min_size), fuse=bool(fuse_mask),
                                fuse_threshold=float(fuse_mask_threshold), input_size=input_size)
        self.crop_size = int(crop_size)
        self.remove_global_patch, self.global_patch_threshold = bool(remove_global_patch), float(global_patch_threshold)
        self.value_pooling = value_pooling
        self.output_stride = int(output_stride)
        self.prob_space, self.temperature = prob_space, float(temperature)
        self.feature_dim = self.language_dim = self.clip.cfg.embed_dim

    def weight_files(self) -> list[Path]:
        return list(self.paths)

    # --- masks ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sam_predictor(self, rgb: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """Point predictor on the image resized to the square input (aspect ignored, as SAM 2.1 in TextRegion)."""
        if self.sam2 is not None:
            return self.sam2.point_predictor(rgb, self.sam2_points_per_batch)
        from ovmap.encoders.backbones.sam_vit import SAM_PIXEL_MEAN, SAM_PIXEL_STD

        s = self.sam_encoder.cfg.image_size
        img = F.interpolate(rgb.float(), size=(s, s), mode="bilinear", align_corners=False) * 255.0
        mean = torch.tensor(SAM_PIXEL_MEAN, device=img.device).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, device=img.device).view(1, 3, 1, 1)
        trunk, _, _ = self.sam_encoder((img - mean) / std)
        emb = self.sam.neck(trunk)

        def predict(points: Tensor) -> tuple[Tensor, Tensor]:
            pts = points.to(emb.device)[:, None]
            labels = torch.ones(pts.shape[0], 1, device=emb.device)
            sparse, dense = self.sam.prompt_encoder((pts, labels), None, None)
            return self.sam.mask_decoder(emb, self.sam.prompt_encoder.dense_pe(), sparse, dense, multimask=True)

        return predict

    @torch.no_grad()
    def region_masks(self, rgb: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """Fused soft masks (R, H, W) in [0, 3] of one frame (``debug``: see :class:`RegionMaskGenerator`)."""
        gen = RegionMaskGenerator(self.sam_predictor(rgb), **self.mask_kwargs)
        return gen(tuple(rgb.shape[-2:]), debug)

    # --- features ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_parts(self, rgb: Tensor, debug: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Factored TextRegion output of one frame (1, 3, H, W): ``tokens`` (R, D), ``masks`` (R, H, W) in [0, 1],
        ``fallback`` (D, n_h·g, n_w·g).

        ``debug`` (optional dict) receives the stages: ``views`` (1 + n, 3, c, c) CLIP-normalised, ``tile_grid``,
        ``values_multires`` (C, n_h·g, n_w·g), the mask generator's (:class:`RegionMaskGenerator`),
        ``masks_pre_gpr`` (R1, n_h·g, n_w·g), ``gpr_difference`` (n_h·g, n_w·g), ``gpr_keep`` (R1,) bool,
        ``pool_weights`` (R, n_h·g·n_w·g) (the patch-grid masks the values are pooled with), ``region_pooled`` (R, C).
        """
        rgb = rgb.to(self.device, torch.float32)
        views, grid = make_views(rgb, self.crop_size)
        views = clip_normalize(views)
        x, values = view_values(self.clip, views)
        v = multires_sum(values, grid)  # (C, n_h g, n_w g)
        fallback = multires_sum(sclip_features(self.clip, x), grid)  # (D, n_h g, n_w g)
        masks_full = self.region_masks(rgb, debug)  # (R, H, W) in [0, 3]
        gh, gw = v.shape[-2:]
        tokens = fallback.new_zeros(0, self.feature_dim)
        pooled = fallback.new_zeros(0, v.shape[0])
        kept = masks_full.new_zeros(0, *rgb.shape[-2:])
        if debug is not None:
            debug.update(views=views, tile_grid=grid, values_multires=v)
        if len(masks_full):
            m = F.interpolate(masks_full[:, None], size=(gh, gw), mode="bilinear", align_corners=False)[:, 0]
            m = m.clamp(0, 1).flatten(1)
            vals = v.flatten(1).T
            keep = m.sum(1) > 0
            m, masks_full = m[keep], masks_full[keep]
            if debug is not None:
                debug["masks_pre_gpr"] = m.reshape(-1, gh, gw)
            if self.remove_global_patch and len(m):
                diff = global_patch_difference(m, vals)
                m = m * (diff >= self.global_patch_threshold)[None].to(m.dtype)
                keep = m.sum(1) > 0
                m, masks_full = m[keep], masks_full[keep]
                if debug is not None:
                    debug.update(gpr_difference=diff.reshape(gh, gw), gpr_keep=keep)
            if len(m):
                pooled = pooled_values(self.clip, m, vals, self.value_pooling == "normalized")
                tokens = F.normalize(self.clip.visual.head(pooled), dim=-1)
                kept = masks_full.clamp(0, 1)
        if debug is not None:
            debug.update(region_pooled=pooled, pool_weights=m if len(masks_full) else pooled.new_zeros(0, gh * gw))
        return {"tokens": tokens, "masks": kept, "fallback": fallback}

    def densify(self, parts: dict[str, Tensor], hw: tuple[int, int]) -> Tensor:
        """Dense features (D, H/stride, W/stride) (spec §5.8) of :meth:`encode_parts` output for an (H, W) frame."""
        stride = self.output_stride
        oh, ow = max(1, hw[0] // stride), max(1, hw[1] // stride)
        fb = F.interpolate(parts["fallback"][None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        masks = parts["masks"]
        if len(masks) and tuple(masks.shape[-2:]) != (oh, ow):
            masks = F.interpolate(masks[:, None], size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
        return dense_features(masks, parts["tokens"], fb)

    # --- the interface -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, rgb: Tensor) -> Tensor:
        """Dense CLIP-text-space features (B, D, H/stride, W/stride) (spec §5.8)."""
        check_rgb(rgb)
        out = [self.densify(self.encode_parts(rgb[i:i + 1]), tuple(rgb.shape[-2:]))
               for i in range(rgb.shape[0])]
        return torch.stack(out)



    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Probabilities (B, K + 1, H, W): softmax(T·cos(F, t)) (``cosine``) or softmax(T·score) (``textregion``)."""
        check_rgb(rgb)
        if self.prob_space == "cosine":
            return super().predict(rgb, text_embeds)
        out = [self.predict_stages(rgb[i:i + 1], text_embeds) for i in range(rgb.shape[0])]
        return torch.cat([o["probs"] for o in out]), torch.cat([o["labels"] for o in out])

    @torch.no_grad()
    def predict_stages(self, rgb: Tensor, text_embeds: Tensor) -> dict[str, Any]:
        """TextRegion's own 2D path for one frame (1, 3, H, W) and class embeddings (K, D), every stage returned.

        The :meth:`encode_parts` stages plus ``tokens``, ``masks``, ``fallback``, ``region_logits`` (R, K)
        (ℓ_rc = f_r·t_c), ``fallback_logits`` (K, n_h·g, n_w·g), ``covered`` (H, W) bool (Σ_r m_r > 0), ``score``
        (K, H, W) (Σ_r ℓ_rc m_r where covered, else the bilinear fallback logits), ``probs`` (1, K + 1, H, W)
        (softmax(T·score), channel 0 = ignore) and ``labels`` (1, H, W) (1-based).
        """
        check_rgb(rgb)
        if rgb.shape[0] != 1:
            raise ValueError(f"predict_stages takes one frame (1, 3, H, W), got {tuple(rgb.shape)}")
        text = F.normalize(text_embeds.to(self.device).float(), dim=-1)
        st: dict[str, Any] = {}
        parts = self.encode_parts(rgb, st)
        st.update(parts)
        hw = tuple(rgb.shape[-2:])
        st["fallback_logits"] = torch.einsum("dhw,kd->khw", parts["fallback"], text)
        score = F.interpolate(st["fallback_logits"][None], size=hw, mode="bilinear", align_corners=False)[0]
        st["region_logits"] = parts["tokens"] @ text.T
        st["covered"] = parts["masks"].sum(0) > 0 if len(parts["masks"]) else torch.zeros(hw, dtype=torch.bool)
        if len(parts["masks"]):
            region = torch.einsum("rhw,rk->khw", parts["masks"], st["region_logits"])
            score = torch.where(st["covered"][None], region, score)
        p = torch.softmax(self.temperature * score, dim=0)[None]
        st.update(score=score, probs=torch.cat([torch.zeros_like(p[:, :1]), p], dim=1), labels=p.argmax(dim=1) + 1)
        return st


__all__ = ["RegionMaskGenerator", "TextRegionEncoder", "box_from_mask", "box_iou", "dense_features", "fuse_groups",
           "fuse_masks", "global_patch_difference", "make_views", "multires_sum", "nms", "pooled_values",
           "region_tokens", "remove_global_patches", "sclip_features", "stability_score", "tile_boxes", "view_values"]
