"""``ovmap segment``: 2D open-vocabulary segmentation of one image (or one frame of a folder-format scene)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovmap.commands.common import plain


def segment_frame(encoder: Any, frame: dict[str, Any], labels: list[str], temperature: float = 0.01):
    """Per-pixel probabilities over ``labels`` for one frame.

    Encoders that read ground truth (``needs_labels``, e.g. the oracle) are segmented from their frame
    features: ``softmax(cos(align_to_language(encode_frame(frame)), encode_text(labels)) / temperature)``,
    with pixels that have no feature (unlabelled) assigned to ignore. Every other encoder uses its own
    ``predict`` on the RGB image.

    Args:
        encoder: an :class:`~ovmap.encoders.Encoder`.
        frame: dict with ``rgb`` (3, H, W) in [0, 1] (and ``labels`` for encoders that need them).
        labels: K class names or free-text descriptions.
        temperature: softmax temperature of the feature path.

    Returns:
        probs (K + 1, H, W) float32 (channel 0 = ignore) and label ids (H, W) int64 in 0..K (i = labels[i-1]).
    """
    if not labels:
        raise ValueError("segmentation needs at least one label: labels=[...]")
    with torch.no_grad():
        text = encoder.encode_text(list(labels))
        if getattr(encoder, "needs_labels", False):
            lang = encoder.align_to_language(encoder.encode_frame(frame)[None])[0].float()  # (D, h, w)
            has_feature = lang.norm(dim=0) > 1e-6
            cos = torch.einsum("dhw,kd->khw", F.normalize(lang, dim=0), F.normalize(text.to(lang), dim=-1))
            probs = torch.softmax(cos / temperature, dim=0) * has_feature
            probs = torch.cat([(~has_feature).float()[None], probs], dim=0)
            height, width = frame["rgb"].shape[-2:]
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(
                    probs[None], size=(height, width), mode="bilinear", align_corners=False
                )[0]
            ids = torch.where(probs[0] >= 0.5, 0, probs[1:].argmax(dim=0) + 1)
        else:
            rgb = frame["rgb"].to(encoder.device, torch.float32)[None]
            probs, ids = encoder.predict(rgb, text)
            probs, ids = probs[0], ids[0]
    return probs.float().cpu(), ids.long().cpu()


def _load_input(cfg: Any) -> tuple[dict[str, Any], list[str] | None, str, Any]:
    """The frame to segment, the scene's class table (or None), an output name stem and the dataset."""
    if (cfg.image is None) == (cfg.frame is None):
        raise ValueError("give exactly one input: image=<file> or frame=<folder-format scene> index=<i>")
    if cfg.image is not None:
        from ovmap.datasets.folder import read_rgb

        path = Path(cfg.image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        return {"rgb": torch.from_numpy(read_rgb(path)), "index": 0}, None, path.stem, None
    from ovmap.datasets import build_dataset

    dataset = build_dataset("folder", path=str(cfg.frame))
    index = int(cfg.index)
    if not 0 <= index < len(dataset):
        raise ValueError(f"index={index} is out of range: scene {cfg.frame} has {len(dataset)} frames")
    names = list(dataset.class_names) if dataset.has_labels else None
    return dataset[index], names, f"{dataset.scene_name}_{index:06d}", dataset


def run_segment(cfg: Any) -> None:
    import cv2

    from ovmap.encoders.base import ENCODERS
    from ovmap.pipeline import make_encoder, resolve_device
    from ovmap.vis.images import save_segmentation_overlay

    encoder_cfg = plain(cfg.encoder)
    name = encoder_cfg["name"]
    needs_labels = getattr(ENCODERS.get(name), "needs_labels", False)
    if needs_labels and cfg.frame is None:
        raise ValueError(
            f"encoder={name} reads ground-truth labels, not pixels: "
            "give frame=<folder-format scene> index=<i>"
        )
    frame, scene_classes, stem, dataset = _load_input(cfg)
    labels = [str(t) for t in cfg.labels] or (scene_classes[1:] if scene_classes else [])
    if not labels:
        raise ValueError("no labels: add labels=[...] (class names or free text)")
    device = resolve_device(cfg.device)
    encoder = make_encoder(name, encoder_cfg, dataset, device)  # the dataset is read only by label encoders
    probs, ids = segment_frame(encoder, frame, labels, float(cfg.temperature))

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = ["ignore", *labels]
    label_png = out_dir / f"{stem}_labels.png"
    if not cv2.imwrite(str(label_png), ids.numpy().astype(np.uint16)):
        raise OSError(f"could not write {label_png}")
    rgb = (frame["rgb"].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    overlay = save_segmentation_overlay(
        out_dir / f"{stem}_overlay.png",
        rgb,
        ids.numpy(),
        class_names,
        alpha=float(cfg.alpha),
        title=f"{stem} ({encoder.name})",
    )
    probs_npz = out_dir / f"{stem}_probs.npz"
    np.savez_compressed(probs_npz, probs=probs.numpy().astype(np.float32), class_names=np.array(class_names))
    counts = np.bincount(ids.numpy().ravel(), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    print(
        f"segmented {stem} ({rgb.shape[1]}x{rgb.shape[0]}) with encoder '{encoder.name}' "
        f"into {len(labels)} labels:"
    )
    for i, cls in enumerate(class_names):
        if counts[i]:
            print(f"  {i:>3} {cls:<24} {100.0 * counts[i] / total:5.1f} % of pixels")
    print(f"wrote {label_png} (16-bit ids, 0 = ignore)")
    print(f"wrote {overlay}")
    print(f"wrote {probs_npz} (probs (K+1, H, W), class_names)")
