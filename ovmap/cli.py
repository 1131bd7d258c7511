"""The ``ovmap`` command line: ``ovmap <command> [hydra overrides]``.

Each command is a thin Hydra app over ``ovmap/configs/<command>.yaml`` whose implementation lives in
``ovmap/commands/``; the work is done by library functions that tests call directly. Set ``OVMAP_DEBUG=1``
to see full tracebacks instead of one-line errors.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from typing import Any, Callable

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
    lines = ["usage: ovmap <command> [key=value Hydra overrides] [--cfg job] [--help]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'ovmap <command> --help' for its configuration. OVMAP_DEBUG=1 shows full tracebacks."]
    return "\n".join(lines)


def _quote_override_value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_positional_texts(args: list[str], key: str = "texts") -> list[str]:
    """Turn positional free-text arguments into a ``key=[...]`` override; keep Hydra's own arguments."""
    texts, rest = [], []
    for arg in args:
        if arg.startswith("-") or re.match(r"^[+~]?[\w.\/@-]+=", arg):
            rest.append(arg)
        else:
            texts.append(arg)
    if texts:
        rest.append(f"{key}=[" + ",".join(_quote_override_value(t) for t in texts) + "]")
    return rest


def _load(target: str) -> Callable[[Any], None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _guarded(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Turn expected failures into one-line errors (exit code 1) unless OVMAP_DEBUG is set."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    def task(cfg: Any) -> None:
        try:
            fn(cfg)
        except MissingMandatoryValue as err:
            if os.environ.get("OVMAP_DEBUG"):
                raise
            print(f"ovmap: error: the setting '{err.full_key}' is required: add {err.full_key}=...", file=sys.stderr)
            sys.exit(1)
        except (
            ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError, OSError, OmegaConfBaseException
        ) as err:
            if os.environ.get("OVMAP_DEBUG"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err).splitlines()[0]
            print(f"ovmap: error: {message}", file=sys.stderr)
            sys.exit(1)

    return task


def entrypoint(argv: list[str] | None = None) -> None:
    """Console-script entry point: dispatch ``ovmap <command> ...`` to its Hydra app."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"ovmap: unknown command '{command}'.{hint}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    if command == "query":
        rest = split_positional_texts(rest)
    elif command == "report":
        rest = split_positional_texts(rest, key="dirs")
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
