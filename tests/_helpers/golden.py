"""Where the golden reference data lives, and a loud (never silent) answer when it is absent.

The golden files (outputs of the official implementations on tiny random-weight models) sit in
``<repo>/../shared/golden/<encoder>/`` or under ``$OVMAP_GOLDEN_DIR/<encoder>/``. When a folder is missing the
tests that need it are skipped with a warning that names the path; with ``OVMAP_REQUIRE_GOLDEN=1`` (set by
``.ci/run``) they fail instead, so CI can never pass without running them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def golden_root() -> Path:
    env = os.environ.get("OVMAP_GOLDEN_DIR")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared" / "golden").resolve()


def golden_available(encoder: str) -> bool:
    return (golden_root() / encoder).is_dir()


def require_golden(encoder: str) -> Path:
    """The golden folder of ``encoder``; skip loudly (or fail under ``OVMAP_REQUIRE_GOLDEN=1``) when absent."""
    folder = golden_root() / encoder
    if folder.is_dir():
        return folder
    msg = (f"golden data for {encoder!r} not found at {folder}: set OVMAP_GOLDEN_DIR=<dir holding {encoder}/> "
           "to run the parity tests against the official implementation")
    if os.environ.get("OVMAP_REQUIRE_GOLDEN") == "1":
        pytest.fail(msg + " (OVMAP_REQUIRE_GOLDEN=1)")
    warnings.warn(msg, stacklevel=2)
    pytest.skip(msg)


def load_rgb(path: str | Path) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] from an 8-bit RGB image of a golden set (the official code's uint8 input)."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
