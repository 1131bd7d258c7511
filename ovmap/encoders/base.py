"""The encoder interface every dense 2D encoder implements, and the encoder registry.

An encoder turns RGB images into dense features in its own space (``encode_image``), projects such features
into a language space shared with its text tower (``align_to_language``), embeds class names or free text
(``encode_text``), and predicts per-pixel class probabilities against a set of text embeddings
(``predict``). The voxel map stores ``encode_image`` features (feature space) or ``predict`` probabilities
(probability space) and calls ``align_to_language`` / ``encode_text`` at query time.

Conventions:
    rgb:        (B, 3, H, W) float in [0, 1], RGB channel order.
    features:   (B, C, h, w) at the encoder's own (patch) resolution, C = ``feature_dim``.
    language:   (..., D), D = ``language_dim``; text embeddings (K, D) are L2-normalised.
    probs:      (B, K + 1, H, W), channel 0 = ignore; labels (B, H, W) int64 in 0..K (0 = no prediction).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.registry import Registry

ENCODERS: Registry["Encoder"] = Registry("encoder")


def check_rgb(rgb: Tensor, name: str = "rgb") -> None:
    """Raise a clear error unless ``rgb`` is a (B, 3, H, W) floating tensor with values in [0, 1]."""
    if not isinstance(rgb, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(rgb).__name__}")
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
    if not rgb.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {rgb.dtype}")
    if rgb.numel() and (float(rgb.min()) < -1e-3 or float(rgb.max()) > 1.0 + 1e-3):
        raise ValueError(
            f"{name} values must lie in [0, 1] (got min {float(rgb.min()):.3g}, max {float(rgb.max()):.3g}); "
            "divide 8-bit images by 255"
        )


class Encoder(ABC):
    """Abstract dense, language-aligned 2D encoder.

    Subclasses set ``name`` (the registry / Hydra config name), ``feature_dim`` (C) and ``language_dim`` (D),
    and implement ``encode_image``, ``align_to_language`` and ``encode_text``. ``predict`` has a generic
    default (cosine similarity of language-aligned features to the text embeddings, softmax(100 cos),
    bilinear upsampling, an all-zero ignore channel) that encoders with an official predict path override.

    Encoders that need more than the RGB image (the oracle reads ground-truth labels) set
    ``needs_labels = True`` and override ``encode_frame`` / ``predict_frame``, which receive the whole
    dataset frame dict.
    """

    name: str = ""
    feature_dim: int
    language_dim: int
    needs_labels: bool = False
    #: Set by ``build_encoder``: the registry name and keyword arguments, stored in saved maps so that a
    #: loaded map can rebuild its encoder.
    build_config: dict[str, Any] | None = None

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    # --- the interface -----------------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, rgb: Tensor) -> Tensor:
        """Dense features (B, C, h, w) of images ``rgb`` (B, 3, H, W) in [0, 1]."""

    @abstractmethod
    def align_to_language(self, feats: Tensor) -> Tensor:
        """Project features into the text space.

        Accepts (..., C) (channels last, e.g. per-voxel features) or (B, C, h, w) feature maps and returns
        (..., D) or (B, D, h, w) respectively. Identity for encoders whose features are already aligned.
        """

    @abstractmethod
    def encode_text(self, labels: list[str]) -> Tensor:
        """L2-normalised text embeddings (K, D) of ``labels`` (template-averaged where defined)."""

    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel class probabilities against ``text_embeds`` (K, D).

        Returns:
            probs: (B, K + 1, H, W), channel 0 = ignore (all zero in this default).
            labels: (B, H, W) int64 in 1..K (argmax over the K classes).
        """
        check_rgb(rgb)
        _, _, height, width = rgb.shape
        lang = self.align_to_language(self.encode_image(rgb))  # (B, D, h, w)
        text = F.normalize(text_embeds.to(lang), dim=-1)
        cos = torch.einsum("bdhw,kd->bkhw", F.normalize(lang, dim=1), text)
        cos = F.interpolate(cos, size=(height, width), mode="bilinear", align_corners=False)
        probs = torch.softmax(100.0 * cos, dim=1)
        probs = torch.cat([torch.zeros_like(probs[:, :1]), probs], dim=1)
        return probs, probs[:, 1:].argmax(dim=1) + 1

    # --- frame-level entry points used by the mapping pipeline ---------------------------------------------
    def encode_frame(self, frame: dict[str, Any]) -> Tensor:
        """Features (C, h, w) of one dataset frame (see ``ovmap.datasets``)."""
        rgb = frame["rgb"].to(self.device, torch.float32)[None]
        return self.encode_image(rgb)[0]

    def predict_frame(self, frame: dict[str, Any], text_embeds: Tensor) -> Tensor:
        """Probabilities (K + 1, H, W) of one dataset frame against ``text_embeds`` (K, D)."""
        rgb = frame["rgb"].to(self.device, torch.float32)[None]
        return self.predict(rgb, text_embeds)[0][0]

    # --- bookkeeping -----------------------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        """Files holding the encoder's weights (checkpoints, text towers); part of the map cache key."""
        return []

    def weights_hash(self) -> str:
        """SHA-256 over the contents of ``weight_files()`` (empty string when there are none)."""
        digest = hashlib.sha256()
        for path in self.weight_files():
            stat = os.stat(path)
            digest.update(_file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns).encode())
        return digest.hexdigest() if self.weight_files() else ""

    def config_json(self) -> str:
        """JSON string with the encoder name and its build configuration (stored in saved maps)."""
        config = self.build_config if self.build_config is not None else {"name": self.name}
        return json.dumps(config, sort_keys=True, default=str)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim}, "
            f"language_dim={self.language_dim}, device={self.device})"
        )


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file; cached per (path, size, mtime) so repeated cache look-ups do not re-read it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_encoder(name: str, **cfg: Any) -> Encoder:
    """Build the encoder registered as ``name`` (the Hydra config name) with keyword arguments ``cfg``."""
    import ovmap.encoders  # noqa: F401  (registers the built-in encoders)

    cls = ENCODERS.get(name)
    try:
        encoder = cls(**cfg)
    except TypeError as err:
        raise TypeError(f"encoder '{name}': {err}") from err
    encoder.build_config = {"name": name, **cfg}
    return encoder


def available_encoders() -> list[str]:
    """Names of the registered encoders."""
    import ovmap.encoders  # noqa: F401

    return ENCODERS.names()
