"""The ``ovmap`` command line: ``ovmap <command> [hydra overrides]``.

Each command is a thin Hydra app over ``ovmap/configs/<command>.yaml`` whose implementation lives in
``ovmap/commands/``; the work is done by library functions that tests call directly. Set ``OVMAP_DEBUG=1``
to see full tracebacks instead of one-line errors.

Before Hydra runs a command, its configuration is checked (``ovmap/commands/validate.py``): unknown group choices
and keys, values out of range and unwritable output folders are one ``ovmap: error: ...`` line (exit code 2).
Errors while working are one line too (exit code 1); Ctrl-C / SIGTERM end with one line (exit code 130).
To add a command, append one entry to ``COMMANDS`` and write ``ovmap/configs/<command>.yaml``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from typing import Any, Callable

from ovmap.commands import LAUNCHED  # noqa: F401 - the launch time, taken before any heavy import

# command -> ("module:function", one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "map": ("ovmap.commands.mapping:run_map", "integrate a dataset into a voxel map: writes <out_dir>/map.npz"),
    "demo": (
        "ovmap.commands.mapping:run_demo",
        "map the built-in synthetic room with the oracle encoder and run example queries",
    ),
    "query": ("ovmap.commands.mapping:run_query", 'free-text queries on a saved map: ovmap query map=<file> "a chair"'),
    "eval": (
        "ovmap.commands.eval:run_eval",
        "3D semantic segmentation benchmark of a dataset: metrics.json, per-class CSV, results.md, bar chart",
    ),
    "eval2d": (
        "ovmap.commands.eval2d:run_eval2d",
        "2D open-vocabulary segmentation benchmark (VOC, Context, COCO-Stuff, ADE20K, Cityscapes): mIoU, CSV, PNGs",
    ),
    "report": ("ovmap.commands.eval:run_report", "merge the metrics.json of several eval runs into one table"),
    "export": (
        "ovmap.commands.mapping:run_export",
        "write a saved map as a coloured PLY point cloud: ovmap export map=<file> out=<ply>",
    ),
    "check-data": (
        "ovmap.commands.check_data:run_check_data",
        "validate a dataset folder, list missing files and how to get them: ovmap check-data dataset=<name> dataset.path=<root>",
    ),
    "view": (
        "ovmap.commands.view:run_view",
        "open a saved map in the rerun viewer and query it: ovmap view map=<file> [vis.mode=serve]",
    ),
    "segment": (
        "ovmap.commands.segment:run_segment",
        "2D open-vocabulary segmentation of one image: label PNG, overlay PNG, probabilities (npz)",
    ),
}

CONFIG_PATH = "pkg://ovmap.configs"


def _usage() -> str:
    lines = ["usage: ovmap <command> [key=value Hydra overrides] [--cfg job] [--help] | ovmap --version", "",
             "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'ovmap <command> --help' for its configuration. OVMAP_DEBUG=1 shows full tracebacks."]
    return "\n".join(lines)


def _quote_override_value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def split_positional_texts(args: list[str], key: str = "texts", keys: set[str] | None = None) -> list[str]:
    """Turn positional free-text arguments into a ``key=[...]`` override; keep Hydra's own arguments.

    An argument is a Hydra override when it looks like ``name=value`` and ``name`` (before any ``.``, without
    ``+``/``~``) is one of ``keys`` (the command's keys and groups, plus ``hydra``); any other argument, ``=``
    included (``"x=1 plane"``), is a text. Everything after ``--`` is a text.
    """
    texts, rest = [], []
    after_separator = flag_value = False
    for arg in args:
        if after_separator:
            texts.append(arg)
        elif flag_value:
            rest.append(arg)
            flag_value = False
        elif arg == "--":
            after_separator = True
        elif arg.startswith("-"):
            rest.append(arg)
            flag_value = arg in _VALUE_FLAGS
        else:
            m = re.match(r"^[+~]?([\w\/@-]+)[\w.\/@-]*=", arg)
            name = m.group(1).split("@")[0].split("/")[0] if m else None
            if m and (keys is None or name in keys or name == "hydra"):
                rest.append(arg)
            else:
                texts.append(arg)
    if texts:
        rest.append(f"{key}=[" + ",".join(_quote_override_value(t) for t in texts) + "]")
    return rest


def _command_keys(command: str) -> set[str]:
    """Top-level keys and groups of a command's config (read from its YAML, no composition)."""
    from importlib import resources

    text = (resources.files("ovmap.configs") / f"{command}.yaml").read_text()
    names = set(re.findall(r"^([A-Za-z_][\w-]*):", text, flags=re.M))
    names |= set(re.findall(r"^\s*-\s*(?:optional\s+)?([\w/]+)\s*:", text, flags=re.M))
    return names - {"defaults"}



def _overrides_of(args: list[str]) -> list[str]:
    """The ``key=value`` overrides among Hydra's arguments (flags and their values dropped)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUE_FLAGS and "=" not in arg
        else:
            out.append(arg)
    return out


def _load(target: str) -> Callable[[Any], None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _fail(message: str, code: int) -> None:
    print(f"ovmap: error: {message}", file=sys.stderr)
    sys.exit(code)


def _guarded(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Turn expected failures into one-line errors (exit code 1) unless OVMAP_DEBUG is set."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    def task(cfg: Any) -> None:
        try:
            fn(cfg)
        except KeyboardInterrupt as err:
            if os.environ.get("OVMAP_DEBUG"):
                raise
            detail = str(err).splitlines()[0] if str(err) else "stopped"
            print(f"ovmap: interrupted: {detail}", file=sys.stderr)
            sys.exit(130)
        except MissingMandatoryValue as err:
            if os.environ.get("OVMAP_DEBUG"):
                raise
            _fail(f"the setting '{err.full_key}' is required: add {err.full_key}=...", 1)
        except (
            ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError, OSError, OmegaConfBaseException
        ) as err:
            if os.environ.get("OVMAP_DEBUG"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err).splitlines()[0]
            _fail(str(message), 1)

    return task


def _validate(command: str, rest: list[str]) -> None:
    """Check the configuration before any work (one line and exit code 2 on a problem)."""
    from ovmap.commands.validate import ConfigError, validate_command

    try:
        validate_command(command, _overrides_of(rest), multirun=bool({"-m", "--multirun"} & set(rest)))
    except ConfigError as err:
        if os.environ.get("OVMAP_DEBUG"):
            raise
        _fail(str(err).splitlines()[0], 2)


def entrypoint(argv: list[str] | None = None) -> None:
    """Console-script entry point: dispatch ``ovmap <command> ...`` to its Hydra app."""
    try:
        _entrypoint(argv)
    except BrokenPipeError:  # e.g. ``ovmap map --help | head``: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def _entrypoint(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] in ("--version", "-V"):
        from ovmap import __version__

        print(f"ovmap {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"ovmap: error: unknown command '{command}'.{hint}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    if {"-h", "--help"} & set(rest):
        from ovmap.commands.help import command_help

        print(command_help(command, COMMANDS[command][1]))
        return
    if command == "query":
        rest = split_positional_texts(rest, keys=_command_keys(command))
    elif command == "report":
        rest = split_positional_texts(rest, key="dirs", keys=_command_keys(command))
    try:
        if "--hydra-help" not in rest:
            _validate(command, rest)
        _run(command, rest)
    except KeyboardInterrupt:
        if os.environ.get("OVMAP_DEBUG"):
            raise
        print("ovmap: interrupted", file=sys.stderr)
        sys.exit(130)


def _run(command: str, rest: list[str]) -> None:
    import hydra

    target, _ = COMMANDS[command]
    task = _guarded(_load(target))
    task.__name__ = command.replace("-", "_")  # Hydra names the job after the task function
    saved_argv = sys.argv
    sys.argv = [f"ovmap {command}", *rest]
    try:
        hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=command)(task)()
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    entrypoint()
