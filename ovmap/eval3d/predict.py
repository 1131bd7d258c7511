"""The predicted-label rule (spec section 6): softmax(100 cos), prompt denoising, prediction threshold.

For each chunk J of ``chunk_size`` voxels (in the given voxel order, which must be lexicographic for paper
numbers)::

    P = softmax(temperature * cos(F[J], T), over the C classes)      # |J| x C
    P[:, max_over_rows(P) < denoise_thresh] = -inf                     # no renormalisation
    best, arg = max_over_classes(P)                                    # first index on ties
    label[J] = arg + 1;  label[J][best < pred_thresh] = 0              # 0 = no prediction

``denoise_scope="global"`` takes the column maximum over the whole map instead of per chunk (independent of
voxel order and chunk size; the cleaner default outside paper presets; changes numbers).

Feature space: features are first projected with the encoder's ``align_to_language`` (after averaging, as
the map stores them). Probability space: the map stores (C+1)-vectors (channel 0 = ignore) and the text
vectors are one-hot with 1e-10 elsewhere (:func:`onehot_text_embeddings`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ovmap.eval3d.common import fail, logger

DENOISE_SCOPES = ("chunk", "global")


def onehot_text_embeddings(num_classes: int, eps: float = 1e-10, dtype: torch.dtype = torch.float32) -> Tensor:
    """(C, C+1) text vectors of probability space / the oracle: 1 at index c (1..C), ``eps`` everywhere else
    (index 0 included), as RayFronts ``ImageSemSegEncoder.encode_labels``."""
    t = torch.full((num_classes, num_classes + 1), eps, dtype=dtype)
    idx = torch.arange(num_classes)
    t[idx, idx + 1] = 1.0
    return t


def _as_tensor(x: Any, device: torch.device | str | None, dtype: torch.dtype = torch.float32) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def cosine_similarity(feats: Tensor, text: Tensor) -> Tensor:
    """cos(F_v, T_c) = F_v . T_c / (|F_v| |T_c|), **without** an epsilon: a zero-norm row gives NaN, as in the
    reference. Shapes (N, D), (C, D) -> (N, C)."""
    fn = feats / torch.linalg.vector_norm(feats, dim=1, keepdim=True)
    tn = text / torch.linalg.vector_norm(text, dim=1, keepdim=True)
    return fn @ tn.T


def _check_text(text: Tensor, scene: str | None) -> None:
    if text.ndim != 2 or text.shape[0] == 0:
        raise fail(scene, f"text embeddings must have shape (C, D) with C >= 1, got {tuple(text.shape)}")
    if not torch.isfinite(text).all():
        raise fail(scene, "text embeddings hold non-finite values")
    if (torch.linalg.vector_norm(text, dim=1) == 0).any():
        raise fail(scene, "a text embedding has zero norm")


def _warn_few_classes(num_classes: int, scene: str | None) -> None:
    if num_classes <= 10:
        logger.warning(
            "%sonly C=%d <= 10 prompted classes: all-ignore / uninformative voxels get p = 1/C >= 0.1 and are "
            "labelled class 1 whenever class 1 survives denoising (spec 6.4 quirk, kept for compatibility)",
            f"[scene {scene}] " if scene else "",
            num_classes,
        )


class _ChunkScorer:
    """Computes softmax(temperature * cos) for chunks, applying the optional projection and all checks."""

    def __init__(self, feats, text, transform, temperature, reference_compatible, nan_policy, scene, device):
        self.feats = feats
        self.transform = transform
        self.temperature = float(temperature)
        self.rc = reference_compatible
        self.nan_policy = nan_policy
        self.scene = scene
        self.device = torch.device(device) if device is not None else None
        self.text = _as_tensor(text, self.device)
        _check_text(self.text, scene)
        self.text_unit = self.text / torch.linalg.vector_norm(self.text, dim=1, keepdim=True)
        self.n = int(feats.shape[0])

    def __call__(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        f = _as_tensor(self.feats[lo:hi], self.device)
        if self.transform is not None:
            self._check_finite(f, lo, hi, "map voxel feature")
            f = self.transform(f)
            if not isinstance(f, Tensor):
                f = torch.as_tensor(np.asarray(f))
            f = f.to(device=self.text.device, dtype=torch.float32)
        if f.ndim != 2 or f.shape[0] != hi - lo:
            raise fail(self.scene, f"projected features must have shape ({hi - lo}, D), got {tuple(f.shape)}")
        if f.shape[1] != self.text.shape[1]:
            raise fail(
                self.scene,
                f"feature dimension {f.shape[1]} does not match the text embedding dimension {self.text.shape[1]}"
                + (" (after align_to_language)" if self.transform is not None else ""),
            )
        norm = torch.linalg.vector_norm(f, dim=1, keepdim=True)
        if self.nan_policy == "raise" and not bool(torch.isfinite(norm).all()):
            self._check_finite(f, lo, hi, "map voxel feature" if self.transform is None else "projected feature")
        zero = norm[:, 0] == 0
        p = torch.softmax(self.temperature * ((f / norm) @ self.text_unit.T), dim=1)
        if not self.rc:
            # documented deviation: zero-norm voxels take no part in denoising and get label 0
            p[zero] = 0.0
        return p, zero

    def _check_finite(self, f: Tensor, lo: int, hi: int, what: str) -> None:
        if self.nan_policy != "raise" or bool(torch.isfinite(torch.linalg.vector_norm(f, dim=1)).all()):
            return  # a non-finite entry makes its row's norm non-finite; the exact check runs only then
        finite = torch.isfinite(f).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise fail(self.scene, f"{bad} {what} row(s) in rows [{lo}, {hi}) are non-finite (NaN/inf)")


def predict_labels(
    feats: Any,
    text: Any,
    *,
    align_to_language: Callable[[Tensor], Tensor] | None = None,
    temperature: float = 100.0,
    denoise_thresh: float = 0.5,
    pred_thresh: float = 0.1,
    chunk_size: int = 10000,
    denoise_scope: str | None = None,
    reference_compatible: bool = False,
    nan_policy: str = "raise",
    device: str | torch.device | None = None,
    scene: str | None = None,
    cache_bytes: int = 1 << 30,
) -> np.ndarray:
    """Predicted voxel labels in 0..C (0 = no prediction) by the rule of spec 6.2.

    Args:
        feats: (N, F) map features in **lexicographic voxel order** (numpy or torch).
        text: (C, D) text embeddings (need not be normalised).
        align_to_language: optional projection (..., F) -> (..., D) applied per chunk to the averaged
            features (feature space). ``None`` when ``feats`` are already in text space.
        denoise_scope: ``"chunk"`` (reference) or ``"global"``; ``None`` = chunk if ``reference_compatible``
            else global.
        reference_compatible: True reproduces the reference exactly, including a zero-norm feature row
            becoming NaN -> label 1. False: zero-norm rows get label 0 and do not take part in denoising.
        nan_policy: ``"raise"`` (default, either mode) raises on non-finite features; ``"reference"`` lets NaN
            flow like the reference (NaN row -> label 1, and it disables denoising in its chunk).
        device: torch device for the computation (default: the features' device / CPU).
        cache_bytes: global scope only: keep the (N, C) probabilities of the first pass if they fit.
    Returns:
        (N,) int64 numpy array.
    """
    if nan_policy not in ("raise", "reference"):
        raise ValueError(f"nan_policy must be 'raise' or 'reference', got {nan_policy!r}")
    if denoise_scope is None:
        denoise_scope = "chunk" if reference_compatible else "global"
    if denoise_scope not in DENOISE_SCOPES:
        raise ValueError(f"denoise_scope must be one of {DENOISE_SCOPES}, got {denoise_scope!r}")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not isinstance(feats, Tensor):
        feats = np.asarray(feats)
    if feats.ndim != 2:
        raise fail(scene, f"map features must have shape (N, F), got {tuple(feats.shape)}")
    n = int(feats.shape[0])
    if n == 0:
        raise fail(scene, "the map is empty (0 voxels)")
    scorer = _ChunkScorer(feats, text, align_to_language, temperature, reference_compatible, nan_policy, scene, device)
    num_classes = int(scorer.text.shape[0])
    _warn_few_classes(num_classes, scene)
    bounds = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]

    global_low = None
    cache: dict[int, tuple[Tensor, Tensor]] = {}
    if denoise_scope == "global":
        # keep the first pass's probabilities when they fit in ``cache_bytes`` (else recompute them)
        keep = n * num_classes * 4 <= cache_bytes
        colmax = None
        for lo, hi in bounds:
            p, zero = scorer(lo, hi)
            m = torch.max(p, dim=0).values
            colmax = m if colmax is None else torch.maximum(colmax, m)  # NaN propagates like the chunk rule
            if keep:
                cache[lo] = (p, zero)
        global_low = colmax < denoise_thresh

    out = np.empty(n, dtype=np.int64)
    for lo, hi in bounds:
        p, zero = cache.pop(lo) if lo in cache else scorer(lo, hi)
        low = torch.max(p, dim=0).values < denoise_thresh if global_low is None else global_low
        p[:, low] = -torch.inf
        best, arg = torch.max(p, dim=1)
        lab = arg + 1
        lab[best < pred_thresh] = 0
        if not reference_compatible:
            lab[zero] = 0
        out[lo:hi] = lab.cpu().numpy()
    return out


def predict_labels_feature_space(
    feats: Any,
    text_embeds: Any,
    align_to_language: Callable[[Tensor], Tensor] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Feature space: ``feats`` (N, F) averaged encoder features, projected per chunk with
    ``align_to_language`` (the encoder's adaptor head), scored against ``text_embeds`` (C, D).
    Keyword arguments as :func:`predict_labels`."""
    return predict_labels(feats, text_embeds, align_to_language=align_to_language, **kwargs)


def predict_labels_probability_space(
    probs: Any,
    num_classes: int | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Probability space / oracle: ``probs`` (N, C+1) per-voxel mean class probabilities (channel 0 = ignore),
    scored against one-hot text (1 at c, 1e-10 elsewhere). Keyword arguments as :func:`predict_labels`."""
    scene = kwargs.get("scene")
    shape = tuple(probs.shape)
    if len(shape) != 2 or shape[1] < 2:
        raise fail(scene, f"probability-space features must have shape (N, C+1) with C >= 1, got {shape}")
    c = shape[1] - 1
    if num_classes is not None and num_classes != c:
        raise fail(scene, f"map stores {shape[1]} probability channels but the class table has C={num_classes} "
                          f"(expected C+1={num_classes + 1} channels, channel 0 = ignore)")
    return predict_labels(probs, onehot_text_embeddings(c), **kwargs)


def class_scores(
    feats: Any,
    text: Any,
    *,
    align_to_language: Callable[[Tensor], Tensor] | None = None,
    chunk_size: int = 100000,
    device: str | torch.device | None = None,
    scene: str | None = None,
) -> np.ndarray:
    """Plain cosine similarities (N, C) of every voxel to every class, no softmax (independent queries).
    Non-finite features raise; zero-norm rows score -1 (ranked last)."""
    if not isinstance(feats, Tensor):
        feats = np.asarray(feats)
    n = int(feats.shape[0])
    if n == 0:
        raise fail(scene, "the map is empty (0 voxels)")
    t = _as_tensor(text, device)
    _check_text(t, scene)
    out = np.empty((n, t.shape[0]), dtype=np.float32)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        f = _as_tensor(feats[lo:hi], t.device)
        if not torch.isfinite(f).all():
            raise fail(scene, f"map voxel features in rows [{lo}, {hi}) are non-finite")
        if align_to_language is not None:
            f = torch.as_tensor(align_to_language(f)).to(t.device, torch.float32)
        if f.shape[1] != t.shape[1]:
            raise fail(scene, f"feature dimension {f.shape[1]} does not match text dimension {t.shape[1]}")
        s = cosine_similarity(f, t)
        s = torch.nan_to_num(s, nan=-1.0)
        out[lo:hi] = s.cpu().numpy()
    return out


__all__ = [
    "cosine_similarity",
    "onehot_text_embeddings",
    "predict_labels",
    "predict_labels_feature_space",
    "predict_labels_probability_space",
    "class_scores",
]
