"""A tiny random SigLIP2 (text + vision towers, 32-d text output) with a word-level tokenizer, saved like a hub
snapshot: the stand-in for the SigLIP2 text tower of RADSeg / NARADIO in tests (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch


def write_tiny_siglip2(folder: Path, words: Iterable[str]) -> "object":
    """Save the tokenizer (vocabulary: ``words`` plus [PAD], [UNK]) and a seeded random ``Siglip2Model`` in
    ``folder``; returns the model."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(words)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        folder)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = transformers.Siglip2Config(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, projection_size=32, **small),
        vision_config=dict(num_patches=16, patch_size=16, **small))
    torch.manual_seed(0)
    model = transformers.Siglip2Model(cfg).eval()
    model.save_pretrained(folder)
    return model
