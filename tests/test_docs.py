"""Every example command in README.md, docs/ and the per-folder READMEs works as written (scripts/check_docs.py).

The config-level check (every ``ovmap`` command composes against the package configs) is fast and always runs;
executing the runnable examples takes minutes and is marked slow (CI runs it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_docs", REPO / "scripts" / "check_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_docs"] = module
    spec.loader.exec_module(module)
    return module


def _failures(outcomes) -> list[str]:
    return [f"{o.example.doc.name}:{o.example.line}: {o.example.text.splitlines()[0]}: {o.detail}"
            for o in outcomes if not o.ok]


def test_checker_finds_a_bad_example(tmp_path: Path) -> None:
    """The checker itself can fail: a misspelt group choice, an unknown key and an unknown command are caught."""
    doc = tmp_path / "bad.md"
    doc.write_text("```bash\novmap map encoder=oracel\novmap map mapping.voxel_sise=0.1\novmap mapp\n"
                   "ovmap map dataset=synthetic encoder=oracle\n```\n", encoding="utf-8")
    check_docs = _checker()
    outcomes = check_docs.check(check_docs.extract(doc), run=False, timeout=60)
    assert [o.ok for o in outcomes] == [False, False, False, True]


def test_every_documented_command_resolves() -> None:
    check_docs = _checker()
    examples = [ex for d in check_docs.documents() for ex in check_docs.extract(d)]
    assert len(examples) > 20
    assert _failures(check_docs.check(examples, run=False, timeout=60)) == []


def test_docs_cite_only_repository_files(tmp_path: Path) -> None:
    check_docs = _checker()
    bad = tmp_path / "bad.md"
    bad.write_text("See `docs/no_such_page.md` and shared/specs/x.md.\n", encoding="utf-8")
    assert len(check_docs.bad_references(bad)) == 2
    assert [r for d in check_docs.documents() for r in check_docs.bad_references(d)] == []


@pytest.mark.slow
def test_runnable_examples_run() -> None:
    check_docs = _checker()
    examples = [ex for d in check_docs.documents() for ex in check_docs.extract(d)]
    outcomes = check_docs.check(examples, run=True, timeout=600)
    assert sum(o.level == "run" for o in outcomes) >= 5
    assert _failures(outcomes) == []
