from __future__ import annotations

import re

from ovmap.naming import MAX_SLUG_LENGTH, slug


def test_slug_keeps_safe_characters_and_collapses_the_rest():
    assert slug("a chair / sofa") == "a_chair_sofa"
    assert slug("Office0.v2-final") == "Office0.v2-final"
    assert slug("  ../../etc/passwd ") == "etc_passwd"  # no parent-folder escape, no hidden file
    assert slug("  ", default="query") == "query"
    assert slug("äöü") == "item"


def test_slug_is_bounded_and_only_uses_entity_path_safe_characters():
    text = "x" * 200 + " y"
    out = slug(text)
    assert len(out) == MAX_SLUG_LENGTH and set(out) == {"x"}
    for t in ["a=b", "what's 'this'?", "tab\there", "emoji 🙂 end"]:
        assert re.fullmatch(r"[0-9A-Za-z._-]+", slug(t))
