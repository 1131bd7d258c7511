"""The 2D protocol: resize to the budget's shorter side, sliding windows, merge, back to ground-truth resolution.

Per image (RADSeg Table A.1 budgets, MMSegmentation "slide" inference):

1. ``rescale_size``: keep the aspect ratio, shorter side = ``budget.short_side`` unless the longer side would
   exceed ``budget.max_long_side`` (MMSegmentation ``Resize(scale=(2048, short), keep_ratio=True)``); bilinear,
   ``align_corners=False``, no antialias (OpenCV ``INTER_LINEAR``).
2. Windows of ``crop`` with ``stride`` (``slide_windows``; the last window shifted back to end at the border). Who
   slides depends on the encoder (``window_plan``):
   - ``internal``: the encoder slides itself (constructor arguments ``slide_crop`` / ``slide_stride``: RADSeg,
     RADSeg+, Trident, ...) and is built with the budget's crop and stride; one ``predict`` on the resized image.
   - ``internal_crop``: the encoder tiles with non-overlapping crops (``crop_size``: TextRegion), so its stride
     equals its crop (Table A.1's TextRegion rule); one ``predict``.
   - ``external``: any other encoder; ``predict`` runs per window and the per-pixel class probabilities of the
     windows are averaged with a count map.
   - ``oracle``: encoders that read ground truth (``needs_labels``) predict at ground-truth resolution directly.
3. The (Q, h', w') probabilities over the Q prompts (all synonyms of all classes) are resized bilinearly to the
   ground-truth resolution, each class takes the maximum over its synonyms (the OVSS repositories' rule), and the
   prediction is the argmax over the K classes (no background, no ignore prediction).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW_MODES = ("internal", "internal_crop", "external", "oracle")


@dataclass(frozen=True)
class Budget:
    """One resolution budget: shorter side, sliding-window crop and stride, all in pixels."""

    short_side: int
    crop: int
    stride: int
    max_long_side: int = 2048

    def __post_init__(self) -> None:
        for key in ("short_side", "crop", "stride", "max_long_side"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"resolution budget: {key} must be a positive number of pixels, got "
                                 f"{getattr(self, key)}")
        if self.stride > self.crop:
            raise ValueError(f"resolution budget: stride {self.stride} > crop {self.crop} would leave pixels "
                             "uncovered")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def label(self) -> str:
        """``short-crop-stride`` as in the paper's Table A.1."""
        return f"{self.short_side}-{self.crop}-{self.stride}"


def rescale_size(height: int, width: int, short_side: int, max_long_side: int = 2048) -> tuple[int, int]:
    """Output (H', W') of MMSegmentation's keep-ratio resize to scale ``(max_long_side, short_side)``.

    scale = min(max_long_side / max(H, W), short_side / min(H, W)); H' = int(H * scale + 0.5), likewise W'.
    """
    scale = min(max_long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Window boxes (y1, y2, x1, x2) in row-major order (MMSegmentation ``slide_inference`` geometry).

    n_h = max(H - crop + stride - 1, 0) // stride + 1 (likewise n_w); window (i, j) starts at i * stride, ends at
    min(start + crop, H) and is shifted back so that it is ``crop`` long (or the whole side when H < crop).
    """
    n_h = max(height - crop + stride - 1, 0) // stride + 1
    n_w = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(n_h):
        for j in range(n_w):
            y2 = min(i * stride + crop, height)
            x2 = min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def constructor_parameters(encoder_cls: type) -> set[str]:
    """Names of the keyword arguments ``encoder_cls(...)`` accepts, following ``**kwargs`` up the base classes."""
    names: set[str] = set()
    for klass in encoder_cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def window_plan(encoder_cls: type) -> str:
    """How the windows of a budget reach encoder class ``encoder_cls`` (see the module docstring)."""
    if getattr(encoder_cls, "needs_labels", False):
        return "oracle"
    params = constructor_parameters(encoder_cls)
    if "slide_crop" in params and "slide_stride" in params:
        return "internal"
    if "crop_size" in params:
        return "internal_crop"
    return "external"


def window_kwargs(plan: str, budget: Budget) -> dict[str, int]:
    """Constructor arguments that make an encoder slide with the budget's crop and stride."""
    if plan == "internal":
        return {"slide_crop": budget.crop, "slide_stride": budget.stride}
    if plan == "internal_crop":
        return {"crop_size": budget.crop}
    return {}


def effective_stride(plan: str, budget: Budget) -> int:
    """The stride actually used: the crop for ``internal_crop`` encoders (non-overlapping tiles)."""
    return budget.crop if plan == "internal_crop" else budget.stride


def resize_image(rgb: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, 3, H, W) in [0, 1] (align_corners False, no antialias), clamped to [0, 1]."""
    if tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    return F.interpolate(rgb, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def merge_synonyms(probs: Tensor, prompt_class: Tensor, num_classes: int) -> Tensor:
    """Per class, the maximum over its prompts: (Q, H, W) -> (K, H, W); ``prompt_class`` (Q,) int64 in 0..K-1."""
    if probs.shape[0] == num_classes and torch.equal(prompt_class, torch.arange(num_classes)):
        return probs
    index = prompt_class.to(probs.device).view(-1, *([1] * (probs.ndim - 1))).expand_as(probs)
    out = probs.new_full((num_classes, *probs.shape[1:]), -math.inf)
    return out.scatter_reduce_(0, index, probs, "amax", include_self=True)


@torch.no_grad()
def predict_prompts(encoder: Any, rgb: Tensor, text: Tensor, plan: str, budget: Budget) -> Tensor:
    """Per-prompt probabilities (Q, H', W') of one image (1, 3, H', W') already resized to the budget."""
    if plan in ("internal", "internal_crop"):
        return encoder.predict(rgb, text)[0][0, 1:]
    if plan != "external":
        raise ValueError(f"window plan '{plan}' does not predict from pixels")
    _, _, height, width = rgb.shape
    acc = None
    count = torch.zeros(1, height, width, device=rgb.device)
    for y1, y2, x1, x2 in slide_windows(height, width, budget.crop, budget.stride):
        probs = encoder.predict(rgb[:, :, y1:y2, x1:x2], text)[0][0, 1:]
        if acc is None:
            acc = torch.zeros(probs.shape[0], height, width, device=probs.device, dtype=probs.dtype)
        acc[:, y1:y2, x1:x2] += probs
        count[:, y1:y2, x1:x2] += 1
    return acc / count.to(acc)


@torch.no_grad()
def predict_image(encoder: Any, sample: dict[str, Any], text: Tensor, prompt_class: Tensor, num_classes: int,
                  plan: str, budget: Budget) -> Tensor:
    """Class ids (H, W) int64 in 0..K-1 of one dataset sample at its ground-truth resolution.

    Args:
        encoder: an ``ovmap.encoders.Encoder`` (built with ``window_kwargs(plan, budget)``).
        sample: a ``SegDataset2D`` item (``rgb`` (3, H, W) in [0, 1], ``labels`` (H, W) with 255 = ignore).
        text: (Q, D) text embeddings of the prompts.
        prompt_class: (Q,) class index of each prompt.
        num_classes: K.
        plan: ``window_plan`` of the encoder.
        budget: the resolution budget.
    """
    height, width = sample["labels"].shape[-2:]
    if plan == "oracle":
        labels = sample["labels"].to(torch.int64)
        frame = {"rgb": sample["rgb"], "index": sample.get("index", 0),
                 "labels": torch.where(labels == 255, 0, labels + 1)}  # oracle ids: 0 = ignore, 1..K classes
        probs = encoder.predict_frame(frame, text)[1:]
    else:
        device = getattr(encoder, "device", torch.device("cpu"))
        rgb = sample["rgb"].to(device, torch.float32)[None]
        size = rescale_size(height, width, budget.short_side, budget.max_long_side)
        probs = predict_prompts(encoder, resize_image(rgb, size), text, plan, budget)
        if tuple(probs.shape[-2:]) != (height, width):
            probs = F.interpolate(probs[None].float(), size=(height, width), mode="bilinear",
                                  align_corners=False)[0]
    return merge_synonyms(probs.float(), prompt_class, num_classes).argmax(dim=0).cpu()
