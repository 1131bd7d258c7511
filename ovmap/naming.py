"""Names derived from free text: one rule for file names, cache entries and rerun entity-path parts."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]+")
MAX_SLUG_LENGTH = 80


def slug(text: str, default: str = "item") -> str:
    """``text`` as one safe path component: runs of characters outside ``[0-9A-Za-z._-]`` become one ``_``.

    Case is kept, leading/trailing ``_`` and ``.`` are stripped (no hidden files, no ``..``), the result is cut to
    80 characters (far below file-system limits) and ``default`` is returned when nothing is left. The same
    characters are plain (unescaped) in rerun entity paths, so the one rule serves file names, map-cache entries
    and ``world/queries/<slug>`` entities alike. Different texts can share a slug (``"a/b"`` and ``"a b"``).
    """
    cleaned = _UNSAFE.sub("_", str(text).strip()).strip("_.")
    return cleaned[:MAX_SLUG_LENGTH].rstrip("_.") or default
