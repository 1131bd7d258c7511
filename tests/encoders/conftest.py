"""Fixtures of the encoder tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers.golden import require_golden


@pytest.fixture(scope="session")
def radseg_golden() -> Path:
    """``<golden>/radseg``; skips loudly when absent (fails under OVMAP_REQUIRE_GOLDEN=1). Session-scoped so that it
    runs before the module fixtures that load the golden checkpoints."""
    return require_golden("radseg")
