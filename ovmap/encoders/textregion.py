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
from typing import Any, Callable, Sequence

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


def remove_global_patches(masks: Tensor, values: Tensor, thresh: float = 0.07) -> Tensor:
    """TextRegion's global-patch filter (spec §5.4 step 4) on patch-grid masks (R, N) in [0, 1] and values (N, C).

    s(p, r) = mean over q with m_r(q) > 0 of cos(v_p, v_q); belong(p) = mean of s(p, r) over regions containing p,
    outside(p) = mean over the others (each with +1e-9 in the count); patches with belong − outside < thresh are
    zeroed in every mask.
    """
    vn = F.normalize(values, dim=-1)
    sim = vn @ vn.T  # (N, N)
    inside = (masks > 0).float()  # (R, N)
    s = (sim @ inside.T) / inside.sum(1).clamp_min(1e-12)[None]  # (N, R): mean over q in region r
    belong = (s * inside.T).sum(1) / (inside.sum(0) + 1e-9)
    outside = (s * (1 - inside.T)).sum(1) / ((1 - inside).sum(0) + 1e-9)
    keep = (belong - outside) >= thresh
    return masks * keep[None].to(masks.dtype)


def region_tokens(clip: CLIP, masks: Tensor, values: Tensor) -> Tensor:
    """f_r = norm(ln_post(out_proj(Σ_p m_r(p) v_p)) @ proj): (R, D) from masks (R, N) and values (N, C)."""
    block = clip.visual.last_block
    return F.normalize(clip.visual.head(block.attn.out_proj(masks @ values)), dim=-1)


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
    """Greedy NMS: indices kept, by decreasing score."""
    order = scores.argsort(descending=True)
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


def fuse_masks(masks: Tensor, boxes: Tensor, box_thresh: float = 0.2, contain_thresh: float = 0.8) -> Tensor:
    """TextRegion's fusion (spec §5.3 step 7) of ordered soft masks (R, H, W) with boxes (R, 4): (R', H, W)."""
    nonzero = masks.flatten(1).amax(1) > 0
    masks, boxes = masks[nonzero], boxes[nonzero]
    r = len(masks)
    assigned = torch.zeros(r, dtype=torch.bool)
    sums = masks.flatten(1).sum(1)
    ious = box_iou(boxes, boxes)
    out = []
    for i in range(r):
        if assigned[i]:
            continue
        assigned[i] = True
        group = [i]
        for j in range(r):
            if assigned[j] or ious[i, j] <= box_thresh:
                continue
            small = torch.minimum(sums[i], sums[j])
            contain = float(torch.minimum(masks[i], masks[j]).sum() / small) if small >= 1e-8 else 0.0
            if contain > contain_thresh:
                assigned[j] = True
                group.append(j)
        out.append(masks[group].amax(0))
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

    def __call__(self, image_hw: tuple[int, int]) -> Tensor:
        """Fused soft masks (R, H, W) in [0, 3] at image resolution."""
        logits, iou = self.predict(self.point_grid())  # (P, 3, h, w), (P, 3)
        logits, iou = logits.float(), iou.float()
        kinds = torch.arange(3).expand(logits.shape[0], 3).flatten()  # 0 sub-part, 1 part, 2 whole
        logits, iou = logits.flatten(0, 1), iou.flatten()
        keep = iou > self.pred_iou_thresh
        keep &= stability_score(logits) >= self.stability_score_thresh
        logits, iou, kinds = logits[keep], iou[keep], kinds[keep]
        if len(logits) == 0:
            return logits.new_zeros(0, *image_hw)
        boxes = box_from_mask(logits > 0)
        idx = nms(boxes, iou, self.box_nms_thresh)
        logits, iou, kinds, boxes = logits[idx], iou[idx], kinds[idx], boxes[idx]
        big = (logits > 0).flatten(1).sum(1) > self.min_size
        logits, iou, kinds, boxes = logits[big], iou[big], kinds[big], boxes[big]
        order = sorted(range(len(iou)), key=lambda i: (-int(kinds[i]), -float(iou[i])))
        order_t = torch.tensor(order, dtype=torch.long)
        logits, boxes = logits[order_t], boxes[order_t]
        if len(logits) == 0:
            return logits.new_zeros(0, *image_hw)
        soft = F.interpolate(logits.clamp(0, 3)[:, None], size=tuple(image_hw), mode="bilinear",
                             align_corners=False)[:, 0]
        return fuse_masks(soft, boxes, 0.2, self.fuse_threshold) if self.fuse else soft


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
                 global_patch_threshold: float = 0.07, output_stride: int = 4, prob_space: str = "cosine",
                 temperature: float = 100.0, device: str | torch.device = "cpu", sam2_checkpoint: str | None = None,
                 sam2_points_per_batch: int = 64) -> None:
        super().__init__(device)
        if clip_checkpoint is None:
            raise ValueError("textregion needs clip_checkpoint=<path to ViT-B-16.pt>")
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
    def region_masks(self, rgb: Tensor) -> Tensor:
        """Fused soft masks (R, H, W) in [0, 3] of one frame."""
        gen = RegionMaskGenerator(self.sam_predictor(rgb), **self.mask_kwargs)
        return gen(tuple(rgb.shape[-2:]))

    # --- features ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_parts(self, rgb: Tensor) -> dict[str, Tensor]:
        """Factored TextRegion output of one frame: region tokens, soft masks (image resolution), fallback map."""
        rgb = rgb.to(self.device, torch.float32)
        views, grid = make_views(rgb, self.crop_size)
        x, values = view_values(self.clip, clip_normalize(views))
        v = multires_sum(values, grid)  # (C, n_h g, n_w g)
        fallback = multires_sum(sclip_features(self.clip, x), grid)  # (D, n_h g, n_w g)
        masks_full = self.region_masks(rgb)  # (R, H, W) in [0, 3]
        gh, gw = v.shape[-2:]
        tokens = fallback.new_zeros(0, self.feature_dim)
        kept = masks_full.new_zeros(0, *rgb.shape[-2:])
        if len(masks_full):
            m = F.interpolate(masks_full[:, None], size=(gh, gw), mode="bilinear", align_corners=False)[:, 0]
            m = m.clamp(0, 1).flatten(1)
            vals = v.flatten(1).T
            keep = m.sum(1) > 0
            m, masks_full = m[keep], masks_full[keep]
            if self.remove_global_patch and len(m):
                m = remove_global_patches(m, vals, self.global_patch_threshold)
                keep = m.sum(1) > 0
                m, masks_full = m[keep], masks_full[keep]
            if len(m):
                tokens = region_tokens(self.clip, m, vals)
                kept = masks_full.clamp(0, 1)
        return {"tokens": tokens, "masks": kept, "fallback": fallback}

    def _dense(self, parts: dict[str, Tensor], hw: tuple[int, int], stride: int) -> Tensor:
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
        out = [self._dense(self.encode_parts(rgb[i:i + 1]), tuple(rgb.shape[-2:]), self.output_stride)
               for i in range(rgb.shape[0])]
        return torch.stack(out)



    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Probabilities (B, K + 1, H, W): softmax(T·cos(F, t)) (``cosine``) or softmax(T·score) (``textregion``)."""
        check_rgb(rgb)
        if self.prob_space == "cosine":
            return super().predict(rgb, text_embeds)
        text = F.normalize(text_embeds.to(self.device).float(), dim=-1)
        probs = []
        for i in range(rgb.shape[0]):
            parts = self.encode_parts(rgb[i:i + 1])
            hw = tuple(rgb.shape[-2:])
            fb = F.interpolate(parts["fallback"][None], size=hw, mode="bilinear", align_corners=False)[0]
            score = torch.einsum("dhw,kd->khw", fb, text)
            if len(parts["masks"]):
                region = torch.einsum("rhw,rk->khw", parts["masks"], parts["tokens"] @ text.T)
                covered = parts["masks"].sum(0) > 0
                score = torch.where(covered[None], region, score)
            probs.append(torch.softmax(self.temperature * score, dim=0))
        p = torch.stack(probs)
        return torch.cat([torch.zeros_like(p[:, :1]), p], dim=1), p.argmax(dim=1) + 1


__all__ = ["RegionMaskGenerator", "TextRegionEncoder", "box_from_mask", "box_iou", "dense_features", "fuse_masks",
           "make_views", "multires_sum", "nms", "region_tokens", "remove_global_patches", "sclip_features",
           "stability_score", "tile_boxes", "view_values"]
