"""Talk2DINO (``lorebianchi98/Talk2DINO`` 4918c2d): DINOv2 ViT-B/14-reg patch features matched against CLIP text
embeddings projected into DINOv2 space by a learned head; written from ``baselines.md`` §6.4 and
``shared/golden/talk2dino/README.md``.

Text (:meth:`Talk2DINOEncoder.encode_text`): each label in the 7 sub-ImageNet templates → CLIP ViT-B/16 text tower
(EOT row @ ``text_projection``) → **mean over templates, not normalised** (Q1) → :class:`ProjectionLayer` → L2
normalisation.

One frame (1, 3, H, W) in [0, 1], fed as given (the 2D protocol's 448-short-side rescale is not part of the encoder):

1. mmseg slide windows (crop 448, stride 224; the last window shifted back to the border); each crop stretched to
   448 × 448 (bilinear; aspect not kept, Q7), ImageNet-normalised, DINOv2 → ``x_norm_patchtokens`` (32 × 32 × C).
2. mask = sigmoid(⟨normalize(f_p), t_c⟩) (K, 32, 32).
3. Optional background cleaning (:func:`background_clean`, λ = 0.2) with the last block's CLS→patch attention logits
   (q scaled by the constant 0.125, Q2; registers dropped).
4. Bilinear upsampling (align_corners=True, Q6) to the window's own pixel size; optional PAMR (10 steps, dilations
   1, 2, 4, 8, 12, 24) guided by the 0–255 window crop; an optional constant ``bg_thresh`` channel in front (Q4).
5. Windows summed per pixel and divided by the count; softmax over the channels (Q5) and argmax.

Features for 3D (no reference, spec O-2): DINOv2 patch features (C = 768, not normalised); each window's 32 × 32 grid
is placed on a canvas of n_y × n_x cells (n = 32 along a side ≤ 448, else round(side/14)), resized bilinearly where
a window's cell box is not 32 wide, and averaged. A one-window frame gives exactly its 32 × 32 grid. The text is
projected into DINOv2 space, so ``align_to_language`` is the identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovmap.encoders.backbones.dinov2 import cls_attention_logits, load_dinov2
from ovmap.encoders.base import ENCODERS, Encoder, check_rgb
from ovmap.encoders.clip import CLIPTextEncoder, load_clip
from ovmap.encoders.dino import IMAGENET_MEAN, IMAGENET_STD
from ovmap.encoders.pamr import pamr
from ovmap.encoders.radseg import window_boxes
from ovmap.encoders.windows import paste_window

#: Talk2DINO's ``sub_imagenet_template`` (``datasets/templates.py``), in its order.
SUB_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

PROJECTION_RESOURCES = ("vitb_mlp_infonce.pth (+ configs/vitb_mlp_infonce.yaml) from "
                        "https://huggingface.co/lorebianchi98/Talk2DINO-ViTB")

_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


# ================================================================================================================
# Projection head
# ================================================================================================================
class ProjectionLayer(nn.Module):
    """Talk2DINO's text projection: ``linear_layer`` (D_clip → C) then, per hidden layer, act → ``hidden_layers.i``
    (C → C). Key names as in ``vitb_mlp_infonce.pth``."""

    def __init__(self, clip_dim: int, dino_dim: int, hidden_layers: int = 1, act: str | None = "tanh") -> None:
        super().__init__()
        if act is not None and act not in _ACTS:
            raise ValueError(f"projection act must be one of {sorted(_ACTS)} or null, got {act!r}")
        self.linear_layer = nn.Linear(clip_dim, dino_dim)
        self.hidden_layers = nn.ModuleList([nn.Linear(dino_dim, dino_dim) for _ in range(hidden_layers)])
        self.act: nn.Module | None = _ACTS[act]() if act is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear_layer(x.float())
        for layer in self.hidden_layers:
            if self.act is not None:
                x = self.act(x)
            x = layer(x)
        return x


def load_projection(path: str | Path, config: str | Path | None = None) -> ProjectionLayer:
    """Load a Talk2DINO projection ``.pth`` strictly; the activation comes from its yaml (``model.act``; ``config``,
    else the ``.yaml`` beside the file), else tanh (the released heads); widths and depth from the keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Talk2DINO projection not found: {path}. Official file: {PROJECTION_RESOURCES}")
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "linear_layer.weight" not in sd:
        raise ValueError(f"{path} is not a Talk2DINO projection state dict (no 'linear_layer.weight')")
    act: str | None = "tanh"
    cfg_path = Path(config).expanduser() if config is not None else path.with_suffix(".yaml")
    if config is not None and not cfg_path.is_file():
        raise FileNotFoundError(f"Talk2DINO projection config not found: {cfg_path}")
    if cfg_path.is_file():
        import yaml

        model_cfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("model", {})
        if not model_cfg.get("hidden_layer", True) and any(k.startswith("hidden_layers.") for k in sd):
            raise ValueError(f"{cfg_path} says hidden_layer: False but {path} has hidden layers")
        raw = model_cfg.get("act", "tanh")
        act = None if raw in (None, "None", "none") else str(raw).lower()
    dino_dim, clip_dim = sd["linear_layer.weight"].shape
    hidden = len({k.split(".")[1] for k in sd if k.startswith("hidden_layers.")})
    head = ProjectionLayer(clip_dim, dino_dim, hidden, act)
    missing, unexpected = head.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"Talk2DINO projection {path} does not match: missing {missing}, unexpected {unexpected}")
    return head.eval()


# ================================================================================================================
# Pure functions
# ================================================================================================================
def background_clean(mask: Tensor, feats: Tensor, attn: Tensor, text: Tensor, lam: float = 0.2) -> Tensor:
    """Talk2DINO background cleaning of one window's masks (Q3).

    Args:
        mask: (K, N) sigmoid-cosine masks. feats: (N, C) raw patch features. attn: (M, N) CLS→patch attention
            logits per head (no softmax). text: (K, C) unit text embeddings. lam: λ.

    Returns:
        (mask + λ·P') / (1 + λ), with E_m = normalize(mean_p A[m,p] f_p), s = softmax_m ⟨t_c, E_m⟩,
        P = softmax_p(Σ_m s[c,m] A[m,p] / Σ_m s[c,m]) and P' = P min/max-mapped (globally) onto the masks' range.
    """
    emb = F.normalize((attn[:, :, None] * feats[None]).mean(dim=1), dim=-1)  # (M, C)
    s = (text @ emb.T).softmax(dim=-1)  # (K, M)
    prior = ((s @ attn) / s.sum(dim=-1, keepdim=True)).softmax(dim=-1)  # (K, N)
    pmin, pmax = prior.min(), prior.max()
    prior = (prior - pmin) / torch.maximum(pmax, pmax - pmin) * (mask.max() - mask.min()) + mask.min()
    return (mask + lam * prior) / (1 + lam)


def feature_canvas_side(side: int, crop: int, tokens: int, patch: int) -> int:
    """Cells of the 3D feature canvas along a frame side: ``tokens`` for a side ≤ crop, else round(side/patch)."""
    return tokens if side <= crop else max(tokens, round(side / patch))


# ================================================================================================================
# The encoder
# ================================================================================================================
@ENCODERS.register("talk2dino")
class Talk2DINOEncoder(Encoder):
    """Talk2DINO: DINOv2-reg patch features, CLIP text projected into DINOv2 space, 448/224 stretched windows.

    Args:
        dinov2_checkpoint: ``dinov2_vitb14_reg4_pretrain.pth`` (DINOv2 hub state dict).
        clip_checkpoint: OpenAI ``ViT-B-16.pt`` (TorchScript archive; a plain state dict works too); only its text
            tower is kept.
        projection_checkpoint: ``vitb_mlp_infonce.pth``; projection_config: its yaml (null = the ``.yaml`` beside the
            file if present, else tanh).
        dino_heads (alias dinov2_heads), clip_text_heads (alias text_heads): head counts (0 = width // 64); only tiny
            test models need them.
        slide_crop, slide_stride: windows in pixels (448 / 224); each window is stretched to slide_crop².
        bg_thresh: constant background channel in front of the K masks (null = no background class; VOC 0.55).
        with_bg_clean: background cleaning with the last block's CLS attention; lambda_bg: its λ (0.2);
            attn_scale: its q scale (0.125, the reference's constant).
        pamr_steps: PAMR iterations per window (0 = off; the reference's setting when on: 10); pamr_dilations.
        prob_space: ``official`` (softmax over the window-averaged sigmoid masks, Q5) | ``cosine`` (softmax(temperature
            ·cos) of the features at the feature grid, upsampled: the RayFronts 3D wrapper); temperature for the latter.
    """

    #: Alternative argument names (the golden cases' names) -> the option they set.
    ARGUMENT_ALIASES = {"dinov2_heads": "dino_heads", "text_heads": "clip_text_heads"}

    name = "talk2dino"

    def __init__(self, dinov2_checkpoint: str | None = None, clip_checkpoint: str | None = None,
                 projection_checkpoint: str | None = None, projection_config: str | None = None,
                 dino_heads: int = 0, clip_text_heads: int = 0, slide_crop: int = 448, slide_stride: int = 224,
                 bg_thresh: float | None = None, with_bg_clean: bool = False, lambda_bg: float = 0.2,
                 attn_scale: float = 0.125, pamr_steps: int = 0,
                 pamr_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), prob_space: str = "official",
                 temperature: float = 100.0, device: str | torch.device = "cpu", dinov2_heads: int | None = None,
                 text_heads: int | None = None) -> None:
        super().__init__(device)
        for key, val in (("dinov2_checkpoint", dinov2_checkpoint), ("clip_checkpoint", clip_checkpoint),
                         ("projection_checkpoint", projection_checkpoint)):
            if val is None:
                raise ValueError(f"talk2dino needs {key}=<path> (see ovmap/configs/encoder/talk2dino.yaml for the files)")
        if prob_space not in ("official", "cosine"):
            raise ValueError(f"prob_space must be 'official' or 'cosine', got {prob_space!r}")
        if int(pamr_steps) < 0:
            raise ValueError(f"pamr_steps must be >= 0, got {pamr_steps}")
        if dinov2_heads is not None:
            dino_heads = dinov2_heads
        if text_heads is not None:
            clip_text_heads = text_heads
        self.paths = [Path(p) for p in (dinov2_checkpoint, clip_checkpoint, projection_checkpoint)]
        beside = Path(projection_checkpoint).expanduser().with_suffix(".yaml")
        if projection_config is not None or beside.is_file():  # the yaml picks the activation: part of the cache key
            self.paths.append(Path(projection_config) if projection_config is not None else beside)
        self.dino = load_dinov2(dinov2_checkpoint, num_heads=dino_heads).to(self.device)
        clip = load_clip(clip_checkpoint, text_heads=clip_text_heads)
        clip.visual = None  # only the text tower is used; free the image tower
        self.clip = clip.to(self.device)
        self.text = CLIPTextEncoder(self.clip)
        self.projection = load_projection(projection_checkpoint, projection_config).to(self.device)
        if self.projection.linear_layer.in_features != clip.cfg.embed_dim:
            raise ValueError(f"projection input {self.projection.linear_layer.in_features} != CLIP text dim "
                             f"{clip.cfg.embed_dim}: wrong projection or CLIP file")
        if self.projection.linear_layer.out_features != self.dino.embed_dim:
            raise ValueError(f"projection output {self.projection.linear_layer.out_features} != DINOv2 width "
                             f"{self.dino.embed_dim}: wrong projection or DINOv2 file")
        if slide_crop % self.dino.patch_size or slide_crop <= 0 or slide_stride <= 0:
            raise ValueError(f"slide_crop must be a positive multiple of the DINOv2 patch {self.dino.patch_size}")
        self.slide_crop, self.slide_stride = int(slide_crop), int(slide_stride)
        self.bg_thresh = None if bg_thresh is None else float(bg_thresh)
        self.with_bg_clean, self.lambda_bg, self.attn_scale = bool(with_bg_clean), float(lambda_bg), float(attn_scale)
        self.pamr_steps, self.pamr_dilations = int(pamr_steps), tuple(int(d) for d in pamr_dilations)
        self.prob_space, self.temperature = prob_space, float(temperature)
        self.feature_dim = self.language_dim = self.dino.embed_dim

    def weight_files(self) -> list[Path]:
        return list(self.paths)

    # --- text --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_stages(self, labels: list[str]) -> dict[str, Tensor]:
        """Every stage of the text path: per-template CLIP outputs (K, 7, D_clip), their mean, the raw projection
        (K, C) and the unit embeddings (K, C)."""
        prompts = [t.format(label) for label in labels for t in SUB_IMAGENET_TEMPLATES]
        per = self.text.prompts(prompts).reshape(len(labels), len(SUB_IMAGENET_TEMPLATES), -1)
        mean = per.mean(dim=1)
        raw = self.projection(mean)
        return {"clip_per_template": per, "clip_mean": mean, "proj_raw": raw, "text_embeds": F.normalize(raw, dim=-1)}

    def encode_text(self, labels: list[str]) -> Tensor:
        """(K, C) text embeddings in DINOv2 space, L2-normalised."""
        return self.text_stages(list(labels))["text_embeds"].to(self.device)

    def align_to_language(self, feats: Tensor) -> Tensor:
        """Identity: the text is projected into DINOv2 space instead."""
        return feats

    # --- windows -------------------------------------------------------------------------------------------------
    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """mmseg slide windows ``(y1, x1, y2, x2)`` over an H × W frame (row-major)."""
        return window_boxes(height, width, self.slide_crop, self.slide_stride)[0]

    def window_input(self, crop: Tensor) -> Tensor:
        """A window crop (1, 3, h, w) in [0, 1] stretched to slide_crop² and ImageNet-normalised."""
        size = (self.slide_crop, self.slide_crop)
        if tuple(crop.shape[-2:]) != size:
            crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=crop.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=crop.device).view(1, 3, 1, 1)
        return (crop - mean) / std

    @torch.no_grad()
    def window_forward(self, crop: Tensor, need_attn: bool = False) -> tuple[Tensor, Tensor | None, tuple[int, int]]:
        """Raw patch features (N, C), CLS→patch attention logits (heads, N) if asked, and the grid of one crop."""
        tokens, u, hw = self.dino.forward_tokens(self.window_input(crop))
        feats = tokens[0, self.dino.num_prefix:]
        attn = None
        if need_attn:
            attn = cls_attention_logits(self.dino.blocks[-1].attn, u, self.dino.num_prefix, self.attn_scale)[0]
        return feats, attn, hw

    @torch.no_grad()
    def slide_masks(self, rgb: Tensor, text_embeds: Tensor, debug: dict[str, Any] | None = None) -> Tensor:
        """Window-averaged masks (K', H, W) of one frame (1, 3, H, W) (K' = K, or K + 1 with the background first)."""
        rgb = rgb.to(self.device, torch.float32)
        height, width = rgb.shape[-2:]
        text = F.normalize(text_embeds.to(self.device, torch.float32), dim=-1)  # unit already (Q10): a no-op
        k = text.shape[0] + (self.bg_thresh is not None)
        acc = rgb.new_zeros(k, height, width)
        cnt = rgb.new_zeros(1, height, width)
        boxes = self.windows(height, width)
        stages: list[dict[str, Tensor]] = []
        for y1, x1, y2, x2 in boxes:
            crop = rgb[:, :, y1:y2, x1:x2]
            feats, attn, (h, w) = self.window_forward(crop, need_attn=self.with_bg_clean or debug is not None)
            mask = torch.sigmoid(F.normalize(feats, dim=-1) @ text.T).T  # (K, N)
            st: dict[str, Tensor] = {}
            if debug is not None:
                st.update(feats=feats.T.reshape(-1, h, w), cls_attn=attn.reshape(-1, h, w),
                          masks_noclean=mask.reshape(-1, h, w))
            if self.with_bg_clean:
                mask = background_clean(mask, feats, attn, text, self.lambda_bg)
            if debug is not None:
                st["masks_lowres"] = mask.reshape(-1, h, w)
            mask = F.interpolate(mask.reshape(1, -1, h, w), size=(y2 - y1, x2 - x1), mode="bilinear",
                                 align_corners=True)
            if self.pamr_steps:
                mask = pamr(crop * 255.0, mask, self.pamr_steps, self.pamr_dilations)
            mask = mask[0]
            if self.bg_thresh is not None:
                mask = torch.cat([mask.new_full((1, *mask.shape[1:]), self.bg_thresh), mask])
            acc[:, y1:y2, x1:x2] += mask
            cnt[:, y1:y2, x1:x2] += 1
            stages.append(st)
        if debug is not None:
            debug.update(window_boxes=boxes, windows=stages)
        return acc / cnt

    # --- the interface -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_single(self, rgb: Tensor) -> Tensor:
        """DINOv2 features (1, C, n_y, n_x) of one frame, window grids averaged on the canvas (module docstring)."""
        rgb = rgb.to(self.device, torch.float32)
        height, width = rgb.shape[-2:]
        tokens = self.slide_crop // self.dino.patch_size
        ny = feature_canvas_side(height, self.slide_crop, tokens, self.dino.patch_size)
        nx = feature_canvas_side(width, self.slide_crop, tokens, self.dino.patch_size)
        acc = rgb.new_zeros(self.feature_dim, ny, nx)
        cnt = rgb.new_zeros(1, ny, nx)
        for y1, x1, y2, x2 in self.windows(height, width):
            feats, _, (h, w) = self.window_forward(rgb[:, :, y1:y2, x1:x2])
            paste_window(acc, cnt, feats.T.reshape(-1, h, w), (y1, x1, y2, x2), (height, width))
        return (acc / cnt.clamp_min(1))[None]

    def encode_image(self, rgb: Tensor) -> Tensor:
        """DINOv2 patch features (B, C, n_y, n_x) (raw, not normalised)."""
        check_rgb(rgb)
        return torch.cat([self.encode_single(rgb[i:i + 1]) for i in range(rgb.shape[0])])

    @torch.no_grad()
    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel probabilities (B, K + 1, H, W) and labels (B, H, W).

        ``official``: softmax over the channels of the window-averaged masks. Without ``bg_thresh`` channel 0 is
        ovmap's ignore channel (zeros) and labels are 1..K; with it channel 0 is the background channel and label 0
        means background. ``cosine``: the generic softmax(temperature·cos) with an ignore channel.
        """
        check_rgb(rgb)
        if self.prob_space == "cosine":
            return self._cosine_predict(rgb, text_embeds)
        probs, labels = [], []
        for i in range(rgb.shape[0]):
            p = self.slide_masks(rgb[i:i + 1], text_embeds).softmax(dim=0)
            if self.bg_thresh is None:
                labels.append(p.argmax(dim=0) + 1)
                p = torch.cat([torch.zeros_like(p[:1]), p])
            else:
                labels.append(p.argmax(dim=0))
            probs.append(p)
        return torch.stack(probs), torch.stack(labels)

    def _cosine_predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.encode_image(rgb)
        text = F.normalize(text_embeds.to(feats), dim=-1)
        cos = torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), text)
        cos = F.interpolate(cos, size=tuple(rgb.shape[-2:]), mode="bilinear", align_corners=False)
        probs = torch.softmax(self.temperature * cos, dim=1)
        return torch.cat([torch.zeros_like(probs[:, :1]), probs], dim=1), probs.argmax(dim=1) + 1


__all__ = ["ProjectionLayer", "SUB_IMAGENET_TEMPLATES", "Talk2DINOEncoder", "background_clean",
           "feature_canvas_side", "load_projection"]
