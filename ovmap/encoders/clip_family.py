"""The base of the CLIP-family encoders (Trident, TextRegion, SC-CLIP): dense features that already live in CLIP
text space, so language alignment is the identity and text goes through CLIP's own text tower with the 80
ImageNet templates."""

from __future__ import annotations

import torch
from torch import Tensor

from ovmap.encoders.base import Encoder
from ovmap.encoders.clip import CLIPTextEncoder


class ClipTextSpaceEncoder(Encoder):
    """An :class:`Encoder` whose ``encode_image`` output is already in CLIP text space.

    Subclasses build their CLIP model and set ``self.text`` to a :class:`CLIPTextEncoder` on it.
    """

    text: CLIPTextEncoder

    def align_to_language(self, feats: Tensor) -> Tensor:
        """Identity: (B, D, h, w) features already live in CLIP text space."""
        return feats

    @torch.no_grad()
    def encode_text(self, labels: list[str]) -> Tensor:
        """(K, D) 80-template CLIP text embeddings, L2-normalised."""
        return self.text.labels(list(labels)).to(self.device)


__all__ = ["ClipTextSpaceEncoder"]
