"""PAMR against a naive per-pixel loop written from the definition (golden READMEs: SC-CLIP K7, Talk2DINO Q9)."""

from __future__ import annotations

import math

import pytest
import torch

from ovmap.encoders.pamr import pamr


def naive_pamr(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations: list[int]) -> torch.Tensor:
    """Loops over pixels: replicate-clamped 3×3 rings per dilation, σ unbiased over the 9·n window samples."""
    _, c_img, h, w = image.shape
    img = image[0].double()

    def at(t, y, x):
        return t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    weights = {}
    for y in range(h):
        for x in range(w):
            samples = [[float(at(img, y + d * dy, x + d * dx)[ch]) for d in dilations for dy in (-1, 0, 1)
                        for dx in (-1, 0, 1)] for ch in range(c_img)]
            sig = []
            for s in samples:
                mu = sum(s) / len(s)
                sig.append(math.sqrt(sum((v - mu) ** 2 for v in s) / (len(s) - 1)))
            nbrs = [(y + d * dy, x + d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                    if (dy, dx) != (0, 0)]
            logits = []
            for ny, nx in nbrs:
                vals = [-abs(float(img[ch, y, x]) - float(at(img, ny, nx)[ch])) / (1e-8 + 0.1 * sig[ch])
                        for ch in range(c_img)]
                logits.append(sum(vals) / c_img)
            mx = max(logits)
            e = [math.exp(v - mx) for v in logits]
            weights[(y, x)] = [(n, v / sum(e)) for n, v in zip(nbrs, e)]
    m = mask[0].double()
    for _ in range(steps):
        new = torch.zeros_like(m)
        for (y, x), nw in weights.items():
            for (ny, nx), wt in nw:
                new[:, y, x] += wt * at(m, ny, nx)
        m = new
    return m[None]


@pytest.mark.parametrize("dilations", [[1, 2], [8, 16]])
def test_pamr_matches_naive(dilations) -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 7, 9)
    mask = torch.randn(1, 4, 7, 9)
    out = pamr(image, mask, steps=3, dilations=dilations)
    ref = naive_pamr(image, mask, 3, dilations)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert not torch.allclose(out, mask, atol=1e-3)


def test_pamr_off_and_errors() -> None:
    mask = torch.randn(1, 2, 5, 5)
    assert pamr(torch.rand(1, 3, 5, 5), mask, steps=0) is mask
    with pytest.raises(ValueError, match="steps"):
        pamr(torch.rand(1, 3, 5, 5), mask, steps=-1)
    with pytest.raises(ValueError, match="dilations"):
        pamr(torch.rand(1, 3, 5, 5), mask, steps=1, dilations=[0])
