"""SigLIP2 text tower loading (``transformers``) with a tiny random local model: no weights are downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovmap.encoders.radseg import (
    SIGLIP2_TOKENIZER_KWARGS,
    SigLIP2TextTower,
    average_prompt_embeddings,
    canonicalize_prompt,
)
from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES
from _helpers.tiny_siglip2 import write_tiny_siglip2

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory) -> tuple[Path, object]:
    """A tiny random SigLIP2 (text + vision) with a word-level tokenizer, saved like a hub snapshot."""
    words = {w for t in OPENAI_IMAGENET_TEMPLATES for w in canonicalize_prompt(t.format("sky")).split()} | {"grass"}
    path = tmp_path_factory.mktemp("tiny_siglip2")
    model = write_tiny_siglip2(path, words)
    return path, model


def test_tower_loads_text_model_only_and_matches_full_model(tiny_siglip2, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model = tiny_siglip2
    tower = SigLIP2TextTower(str(path))
    prompts = [canonicalize_prompt(t.format("grass")) for t in OPENAI_IMAGENET_TEMPLATES[:5]]
    out = tower(prompts)
    assert type(tower._model).__name__ == "Siglip2TextModel"
    tokens = tower._tokenizer(text=prompts, return_tensors="pt", **SIGLIP2_TOKENIZER_KWARGS)
    assert tokens["input_ids"].shape == (5, 64)
    with torch.no_grad():
        ref = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
    ref = getattr(ref, "pooler_output", ref)
    assert out.shape == (5, 32) and torch.allclose(out, ref, atol=1e-5)


def test_missing_tower_names_the_option(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="text_model=<dir>"):
        SigLIP2TextTower(str(tmp_path / "no_such_model"))(["a photo of a sky"])


def test_template_average_through_tower(tiny_siglip2, monkeypatch) -> None:
    """All 80 templates through the tower equal the full SigLIP2 model's text features (its own tokenizer loaded
    independently), and the official average (normalise, then mean) equals an explicit loop."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model = tiny_siglip2
    tower = SigLIP2TextTower(str(path))
    prompts = [canonicalize_prompt(t.format("sky")) for t in OPENAI_IMAGENET_TEMPLATES]
    raw = tower(prompts)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))(text=prompts, return_tensors="pt",
                                                               **SIGLIP2_TOKENIZER_KWARGS)
    with torch.no_grad():
        ref = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
    ref = getattr(ref, "pooler_output", ref)
    assert raw.shape == (80, 32)
    torch.testing.assert_close(raw, ref, atol=1e-5, rtol=0)
    loop = torch.zeros(32, dtype=torch.float64)
    for row in ref.double():
        loop += row / row.norm() / len(prompts)
    torch.testing.assert_close(average_prompt_embeddings(raw[None])[0].double(), loop, atol=1e-6, rtol=0)
