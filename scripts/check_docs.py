#!/usr/bin/env python
"""Check every example command in README.md, docs/**/*.md and the per-folder README.md files against the code.

Each fenced ``bash``/``sh``/``console`` block is split into commands (``\\`` continuations joined, trailing
``# comments`` dropped); ``ovmap ...`` and ``python scripts/...`` commands are checked, anything else (``apt-get``,
``pip install``, ``rerun <file>``) is listed as not checkable. ``python`` blocks are executed.

Two levels:

* **config** (every ``ovmap`` command): the command line is turned into the Hydra overrides the CLI would build
  and composed against ``ovmap/configs``; a misspelt command, group choice or key fails. ``python scripts/x.py``
  commands are checked with ``--help``.
* **run** (``--run``): commands that need nothing outside the repository are executed as written, in document
  order, in one scratch folder per document (so ``ovmap map ... out_dir=outputs/small`` followed by
  ``ovmap query map=outputs/small/map.npz`` works as it does for a reader). A command is config-only when it names
  placeholders (``<root>``, ``...``), absolute paths (``/data/...``), long-running viewers (``vis.mode=serve`` /
  ``spawn`` / ``connect``) or cluster launchers, or when the block is preceded by
  ``<!-- docs-check: config-only -->``; ``<!-- docs-check: skip <reason> -->`` skips a block entirely.

Usage::

    python scripts/check_docs.py            # config level, a few seconds
    python scripts/check_docs.py --run      # also execute the runnable examples (minutes)

Exit code 1 and one line per bad command (``file:line: command: reason``) when something fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*docs-check:\s*(skip|config-only)\b\s*(.*?)\s*-->")
SHELL_LANGS = {"bash", "sh", "shell", "console"}

# Reasons a command cannot run here as written; it is then checked at the config level only.
CONFIG_ONLY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"<[^>]*>"), "placeholder"),
    (re.compile(r"(^|\s)\.\.\.(\s|$)|=\.\.\.(\s|$)"), "placeholder"),
    (re.compile(r"=/(?!tmp\b)"), "absolute data path"),
    (re.compile(r"vis\.mode=(serve|spawn|connect)"), "interactive viewer"),
    (re.compile(r"submitit_slurm|hydra/launcher=submitit_slurm"), "cluster launcher"),
]


@dataclass
class Example:
    doc: Path
    line: int
    text: str
    kind: str  # "shell" | "python"
    mode: str = "auto"  # "auto" | "config-only" | "skip"
    reason: str = ""


@dataclass
class Outcome:
    example: Example
    level: str  # "config" | "run" | "not-checked" | "skipped"
    ok: bool
    detail: str = ""
    seconds: float = 0.0


def documents(root: Path = REPO) -> list[Path]:
    """README.md, docs/**/*.md and every README.md inside the package, scripts/ and tests/."""
    docs = [root / "README.md"]
    docs += sorted((root / "docs").rglob("*.md"))
    for sub in ("ovmap", "scripts", "tests"):
        docs += sorted(p for p in (root / sub).rglob("README.md") if ".venv" not in p.parts)
    return [d for d in docs if d.is_file()]


def _split_shell_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join ``\\`` continuations and drop comments; returns (first line number, command)."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for lineno, raw in block:
        line = raw.rstrip()
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        for cmd in _strip_comment(pending).split("&&"):
            cmd = cmd.strip()
            if cmd.startswith("$ "):
                cmd = cmd[2:]
            if cmd:
                out.append((start, cmd))
        pending = ""
    return out


def _strip_comment(line: str) -> str:
    """Drop a trailing ``# comment`` outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def extract(doc: Path) -> list[Example]:
    """Every example of one Markdown file, with the marker that precedes its block."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    i, pending_marker = 0, None
    while i < len(lines):
        m = MARKER.search(lines[i])
        if m:
            pending_marker = (m.group(1), m.group(2))
        f = FENCE.match(lines[i].strip()) if lines[i].lstrip().startswith("```") else None
        if f is None:
            if lines[i].strip() and not m:  # text between a marker and a block: the marker was for nothing
                pending_marker = None
            i += 1
            continue
        lang = f.group(1).lower()
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        mode, reason = ("auto", "") if pending_marker is None else pending_marker
        pending_marker = None
        if lang in SHELL_LANGS:
            for lineno, cmd in _split_shell_lines(body):
                examples.append(Example(doc, lineno, cmd, "shell", mode, reason))
        elif lang in ("python", "py") and body:
            examples.append(Example(doc, body[0][0], "\n".join(t for _, t in body), "python", mode, reason))
    return examples


OUTSIDE_REFERENCE = re.compile(r"shared/(specs|golden)|\.\./shared|\bissue \d")
REPO_PATH = re.compile(r"`((?:ovmap|docs|scripts|tests)/[\w./-]+\.(?:md|py|yaml|txt|sh))`")


def bad_references(doc: Path) -> list[str]:
    """'file:line: reason' for each citation of a file outside the repository or of a repository file that does
    not exist (backticked ``ovmap/...``, ``docs/...``, ``scripts/...``, ``tests/...`` paths)."""
    out = []
    rel = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    for lineno, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        m = OUTSIDE_REFERENCE.search(line)
        if m:
            out.append(f"{rel}:{lineno}: cites {m.group(0)!r}, which is not in the repository")
        for path in REPO_PATH.findall(line):
            if not (REPO / path).exists() and not (doc.parent / path).exists():
                out.append(f"{rel}:{lineno}: names {path}, which does not exist")
    return out


def _ovmap_argv(cmd: str) -> list[str] | None:
    try:
        argv = shlex.split(re.sub(r"<[^>]*>", "PLACEHOLDER", cmd))
    except ValueError:
        return None
    if argv and argv[0] == "ovmap":
        return argv[1:]
    if argv[:3] == ["python", "-m", "ovmap"]:
        return argv[3:]
    return None


def config_only_reason(cmd: str) -> str:
    for pattern, reason in CONFIG_ONLY_RULES:
        if pattern.search(cmd):
            return reason
    return ""


def _placeholder_free(argv: list[str]) -> list[str]:
    """Overrides with placeholders made parseable: ``<root>`` -> a dummy value, bare ``...`` dropped, and a
    multirun sweep ``k=a,b`` reduced to its first value (the check composes one job)."""
    out = []
    for a in argv:
        if a in ("...", "-m", "--multirun"):
            continue
        a = re.sub(r"<[^>]*>", "PLACEHOLDER", a)
        if "=" in a and not a.startswith("-"):
            key, _, value = a.partition("=")
            if "," in value and not value.startswith(("[", "'", '"')):
                value = value.split(",")[0]
            a = f"{key}={value}"
        out.append(a)
    return out


def check_config(argv: list[str]) -> str:
    """'' if ``ovmap <argv>`` composes against the package configs, else the reason."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ovmap import cli

    if not argv or argv[0] in ("-h", "--help", "--version", "help"):
        return ""
    command, rest = argv[0], argv[1:]
    if command not in cli.COMMANDS:
        return f"unknown command {command!r}"
    if command == "query":
        rest = cli.split_positional_texts(rest)
    elif command == "report":
        rest = cli.split_positional_texts(rest, key="dirs")
    rest = [a for a in _placeholder_free(rest) if a not in ("--help", "-h") and not a.startswith("--cfg")]
    rest = [a for a in rest if a not in ("job", "hydra", "all")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="ovmap.configs", version_base="1.3"):
            compose(config_name=command, overrides=rest, return_hydra_config="hydra/" in " ".join(rest))
    except Exception as err:  # noqa: BLE001 - any composition failure is a doc failure
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    finally:
        GlobalHydra.instance().clear()
    return ""


def _run(args: list[str] | str, cwd: Path, timeout: float, shell: bool = False) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return f"exit code {proc.returncode}: {tail[-1] if tail else ''}"
    return ""


def check(examples: list[Example], run: bool, timeout: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    scratch: dict[Path, Path] = {}
    with tempfile.TemporaryDirectory(prefix="ovmap-docs-") as tmp:
        for ex in examples:
            t0 = time.perf_counter()
            if ex.mode == "skip":
                outcomes.append(Outcome(ex, "skipped", True, ex.reason or "marked skip"))
                continue
            cwd = scratch.setdefault(ex.doc, Path(tmp) / f"doc{len(scratch)}")
            cwd.mkdir(exist_ok=True)
            if ex.kind == "python":
                if not run or ex.mode == "config-only":
                    outcomes.append(Outcome(ex, "not-checked", True, "python snippet (runs with --run)"))
                    continue
                script = cwd / "snippet.py"
                script.write_text(ex.text, encoding="utf-8")
                err = _run([sys.executable, str(script)], cwd, timeout)
                outcomes.append(Outcome(ex, "run", not err, err, time.perf_counter() - t0))
                continue
            argv = _ovmap_argv(ex.text)
            script_cmd = re.match(r"^python3?\s+(scripts/\S+\.py)(.*)$", ex.text)
            if argv is None and not script_cmd:
                outcomes.append(Outcome(ex, "not-checked", True, "not an ovmap command"))
                continue
            reason = "marked config-only" if ex.mode == "config-only" else config_only_reason(ex.text)
            if argv is not None:
                err = check_config(argv)
                if err or not run or reason:
                    outcomes.append(Outcome(ex, "config", not err, err or reason, time.perf_counter() - t0))
                    continue
                err = _run([sys.executable, "-m", "ovmap", *argv], cwd, timeout)
                outcomes.append(Outcome(ex, "run", not err, err, time.perf_counter() - t0))
                continue
            path = REPO / script_cmd.group(1)
            if not path.is_file():
                outcomes.append(Outcome(ex, "config", False, f"{script_cmd.group(1)} does not exist"))
                continue
            # Benchmarks take minutes: their command line is checked with --help (argparse rejects bad flags).
            extra = shlex.split(script_cmd.group(2))
            err = _run([sys.executable, str(path), *[a for a in extra if a.startswith("-")], "--help"], cwd, timeout)
            outcomes.append(Outcome(ex, "config", not err, err, time.perf_counter() - t0))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="also execute the runnable examples")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per executed command")
    parser.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: all)")
    args = parser.parse_args(argv)
    docs = [p.resolve() for p in args.docs] or documents()
    examples = [ex for d in docs for ex in extract(d)]
    outcomes = check(examples, run=args.run, timeout=args.timeout)
    bad = [o for o in outcomes if not o.ok]
    references = [r for d in docs for r in bad_references(d)]
    for o in outcomes:
        rel = o.example.doc.relative_to(REPO) if o.example.doc.is_relative_to(REPO) else o.example.doc
        status = "ok  " if o.ok else "FAIL"
        first = o.example.text.splitlines()[0]
        print(f"{status} {o.level:<11} {rel}:{o.example.line}: {first[:90]}"
              + (f"  [{o.detail}]" if o.detail else "") + (f" {o.seconds:.1f}s" if o.seconds > 1 else ""))
    counts = {lvl: sum(o.level == lvl for o in outcomes) for lvl in ("run", "config", "not-checked", "skipped")}
    print(f"\n{len(outcomes)} examples: {counts['run']} executed, {counts['config']} config-checked, "
          f"{counts['not-checked']} not checkable, {counts['skipped']} skipped; {len(bad)} failed")
    for o in bad:
        rel = o.example.doc.relative_to(REPO) if o.example.doc.is_relative_to(REPO) else o.example.doc
        print(f"docs-check: {rel}:{o.example.line}: {o.example.text.splitlines()[0]}: {o.detail}", file=sys.stderr)
    for r in references:
        print(f"docs-check: {r}", file=sys.stderr)
    return 1 if bad or references else 0


if __name__ == "__main__":
    sys.exit(main())
