"""``ovmap <command> --help``: what the command does and every key it reads, from the YAML files' own comments."""

from __future__ import annotations

import re
from importlib import resources

from ovmap.commands.validate import CONFIG_MODULE, config_groups, group_options

_KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):\s*(.*?)\s*(?:#\s?(.*))?$")
_DEFAULT = re.compile(r"^\s*-\s*(?:optional\s+)?([\w/]+)\s*:\s*([\w?]+)\s*(?:#\s?(.*))?$")


def _read(path: str) -> list[str]:
    return (resources.files(CONFIG_MODULE) / path).read_text().splitlines()


def _header(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        if "@package" not in line:
            out.append(line[1:].strip())
    return out


def yaml_keys(lines: list[str], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default text, comment) of every leaf key in a simple YAML file, in file order."""
    out: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []
    in_defaults = False
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _KEY.match(line)
        if not m:
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3), m.group(4) or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0:
            in_defaults = key in ("defaults", "hydra")
        if in_defaults:
            continue
        if value == "":
            stack.append((indent, key))
            continue
        dotted = ".".join([prefix.rstrip(".")] * bool(prefix) + [k for _, k in stack] + [key])
        out.append((dotted, value, comment))
    return out


def command_help(command: str, summary: str) -> str:
    """The help text of ``ovmap <command>``."""
    lines = _read(f"{command}.yaml")
    text = [f"ovmap {command}: {summary}", ""]
    header = _header(lines)
    if header and header[0].startswith(f"ovmap {command}:") and header[0].endswith("."):
        header = header[1:]  # the same sentence as the summary above
    if header:
        text += [*header, ""]
    groups = config_groups()
    defaults = []
    for line in lines:
        m = _DEFAULT.match(line)
        if m and m.group(1) in groups:
            defaults.append((m.group(1), m.group(2), m.group(3) or ""))
    if defaults:
        text.append("config groups (choose with <group>=<choice>):")
        for group, choice, comment in defaults:
            shown = "required" if choice == "???" else f"default {choice}"
            text.append(f"  {group:<10} {shown}; choices: {', '.join(group_options(group))}"
                        + (f"  # {comment}" if comment else ""))
        text.append("")
    own = yaml_keys(lines)
    if own:
        text.append("keys (key=value):")
        text += [f"  {k:<30} {v:<14} {c}".rstrip() for k, v, c in own]
        text.append("")
    for group, choice, _ in defaults:
        if choice in ("???", "null") or group == "protocol":
            continue
        keys = [(k, v, c) for k, v, c in yaml_keys(_read(f"{group}/{choice}.yaml"), prefix=group) if k != f"{group}.name"]
        if keys:
            text.append(f"{group} keys ({group}={choice}; other choices have their own, see ovmap/configs/{group}/):")
            text += [f"  {k:<30} {v:<14} {c}".rstrip() for k, v, c in keys]
            text.append("")
    text.append("Hydra: -m (multirun sweep), --cfg job (print the config), --hydra-help. "
                "OVMAP_DEBUG=1 shows tracebacks.")
    return "\n".join(text)
