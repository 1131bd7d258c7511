"""Checking a command's configuration before any work: group choices, keys, value ranges, output folders.

``ovmap/cli.py`` calls :func:`validate_command` with the command line's overrides before Hydra runs the command;
every problem is one :class:`ConfigError` line naming the key and the closest valid names (``difflib``). The same
checks are available to tests and library callers through :func:`check_values`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

CONFIG_MODULE = "ovmap.configs"


class ConfigError(ValueError):
    """A bad command line: unknown group choice or key, a value out of range, an unwritable output folder."""


# --- groups and keys --------------------------------------------------------------------------------------------
def config_groups() -> list[str]:
    """The config groups (sub-folders of ``ovmap/configs``: dataset, encoder, mapping, protocol, vis, ...)."""
    root = resources.files(CONFIG_MODULE)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def group_options(group: str) -> list[str]:
    """The choices of a config group: its ``<name>.yaml`` files."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _closest(word: str, candidates: Iterable[str], what: str) -> str:
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(word, candidates, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}({what}: {', '.join(candidates)})"


def _split_overrides(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"cannot parse the command line: {str(err).splitlines()[0]}") from None


def _has_key(cfg: Any, key: str) -> tuple[bool, Any, str]:
    """(exists, deepest existing node, the missing part) for a dotted key."""
    from omegaconf import DictConfig, ListConfig

    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False, node, part
    return True, node, ""


def _compose(command: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(first.replace(", e.g, ", ": ")) from None


def _variants(parsed: list[Any]) -> list[list[str]]:
    """Override lists to check: the first value of every sweep, then each other value of one sweep at a time."""
    def text(o: Any, value: str) -> str:
        return f"{o.get_key_element()}={value}"

    base, extra = [], []
    values = []
    for o in parsed:
        vals = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        values.append(vals)
        base.append(text(o, vals[0]))
    for i, (o, vals) in enumerate(zip(parsed, values)):
        for v in vals[1:]:
            variant = list(base)
            variant[i] = text(o, v)
            extra.append(variant)
    return [base, *extra]


def _hydra_group_options(group: str) -> list[str]:
    """Choices of a Hydra group such as ``hydra/launcher`` (installed plugins included)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        parent, _, name = group.rpartition("/")
        siblings = loader.list_groups(parent)
        if name not in siblings:
            raise ConfigError(f"unknown Hydra group '{group}': "
                              f"{_closest(group, [f'{parent}/{g}' for g in siblings], 'Hydra groups')}")
        return sorted(loader.get_group_options(group))


def check_overrides(command: str, overrides: list[str], multirun: bool = False) -> list[Any]:
    """Check group choices and keys of the overrides; return the composed config of every variant to check.

    ``hydra/<group>=<choice>`` choices are checked against Hydra's own groups (installed launchers included);
    other Hydra settings (``hydra.*``) and ``+key`` additions are left to Hydra.
    """
    parsed = _split_overrides(overrides)
    groups = config_groups()
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise ConfigError(f"'{o.input_line}' is a sweep: add -m to run one job per value "
                              f"(or quote it, {o.get_key_element()}='...', to pass a string)")
        if o.key_or_group.startswith("hydra/") and not o.is_delete():
            options = _hydra_group_options(o.key_or_group)
            vals = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in vals:
                if v not in options:
                    raise ConfigError(f"unknown {o.key_or_group} '{v}': "
                                      f"{_closest(v, options, f'{o.key_or_group} choices')} (launchers: pip install "
                                      "-e '.[cluster]')")
    own = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    for o in own:
        if o.is_delete() or o.is_add():
            continue
        key = o.key_or_group
        if "." not in key and key in groups:
            options = group_options(key)
            vals = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in vals:
                if v not in options and v != "null":
                    raise ConfigError(f"unknown {key} '{v}': {_closest(v, options, f'{key} choices')}")
    group_only = [o.input_line for o in own if "." not in o.key_or_group and o.key_or_group in groups
                  and not o.is_sweep_override()]
    base = _compose(command, group_only)
    for o in own:
        if o.is_add() or o.is_delete() or ("." not in o.key_or_group and o.key_or_group in groups):
            continue
        key = o.key_or_group
        ok, node, missing = _has_key(base, key)
        if not ok:
            parent = key[: -len(missing)].rstrip(".") if key.endswith(missing) else ""
            siblings = [f"{parent}.{k}" if parent else str(k) for k in getattr(node, "keys", lambda: [])()]
            if not parent:
                siblings += [g for g in groups if g in base]
            where = f"{parent} keys" if parent else f"keys of 'ovmap {command}'"
            raise ConfigError(f"unknown key '{key}': {_closest(key, siblings, where)}")
    return [_compose(command, [o for o in variant if not o.split("=", 1)[0].lstrip("+~").startswith("hydra")])
            for variant in _variants(own)] if own else [base]


# --- values -------------------------------------------------------------------------------------------------
def _number(key: str, value: Any, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    return float(value)


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, integer: bool = False,
           finite: bool = True, nullable: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        x = _number(key, value, integer)
        if math.isnan(x) or (finite and not math.isfinite(x)):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        bad_lo = lo is not None and (x <= lo if lo_open else x < lo)
        bad_hi = hi is not None and x > hi
        if bad_lo or bad_hi:
            lo_txt = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            hi_txt = "" if hi is None else f"<= {hi:g}"
            raise ConfigError(f"{key} must be {' and '.join(t for t in (lo_txt, hi_txt) if t)}, got {value!r}")
    return check


def _choice(*options: Any, nullable: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        if value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}; "
                              f"got {value!r}{_hint(value, options)}")
    return check


def _hint(value: Any, options: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _rules() -> dict[str, Callable[[str, Any], None]]:
    from ovmap.mapping.fusion import SAMPLING_MODES

    return {
        "mapping.voxel_size": _range(0, lo_open=True),
        "mapping.mode": _choice("feature", "probability"),
        "mapping.feature_dtype": _choice("float32", "float16", "bfloat16"),
        "mapping.feature_sampling": _choice(*SAMPLING_MODES),
        "mapping.min_depth": _range(0),
        "mapping.max_depth": _range(0, lo_open=True, finite=False),
        "dataset.frame_skip": _range(0, integer=True),
        "eval.k": _range(0, integer=True),
        "eval.prompt_denoising_thresh": _range(0, 1),
        "eval.prediction_thresh": _range(0, 1),
        "eval.chunk_size": _range(1, integer=True),
        "eval.independent_threshold": _range(-1, 1, nullable=True),
        "eval.max_match_dist": _range(0, lo_open=True, nullable=True),
        "eval.lift_rule": _choice("softmax_thresh", "argmax_with_ignore"),
        "region_margin": _range(0),
        "softmax_temperature": _range(0, lo_open=True),
        "temperature": _range(0, lo_open=True),
        "alpha": _range(0, 1),
        "index": _range(0, integer=True),
        "vis.map_period": _range(1, integer=True),
        "vis.image_period": _range(1, integer=True),
        "vis.max_points": _range(0, integer=True),
    }


def check_values(cfg: Any) -> None:
    """Required keys given, and range and choice checks of every known key present in ``cfg`` (a composed
    command config)."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"the setting '{missing[0]}' is required: add {missing[0]}=...")

    rules = _rules()
    for key, rule in rules.items():
        if OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False) == "__absent__":
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        rule(key, value)
    lo = OmegaConf.select(cfg, "mapping.min_depth", default=None)
    hi = OmegaConf.select(cfg, "mapping.max_depth", default=None)
    if lo is not None and hi is not None and not hi > lo:
        raise ConfigError(f"mapping.max_depth ({hi}) must be greater than mapping.min_depth ({lo})")
    device = OmegaConf.select(cfg, "device", default=None)
    if device is not None:
        from ovmap.pipeline import resolve_device

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:<n>; got {device!r}")
        try:
            resolve_device(str(device))
        except RuntimeError as err:
            raise ConfigError(str(err)) from None


# --- outputs ------------------------------------------------------------------------------------------------
def check_writable(folder: str | os.PathLike, key: str) -> None:
    """``folder`` accepts a new file, or can be created; else a ConfigError naming ``key``. Creates nothing."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write to {folder}: {probe} is not a folder; choose another with {key}=...")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {folder} ({probe} is read-only): choose another folder with {key}=...")
    if probe == folder:
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".ovmap-write-check-"):
                pass
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise ConfigError(f"cannot write to {folder} ({reason}): choose another folder with {key}=...") from None


def output_folders(command: str, cfg: Any) -> list[tuple[str, str]]:
    """(folder, key) pairs a command writes to, for :func:`check_writable`."""
    from omegaconf import OmegaConf

    get = lambda k: OmegaConf.select(cfg, k, default=None, throw_on_missing=False)  # noqa: E731
    out: list[tuple[str, str]] = []
    if command in ("map", "demo", "eval", "segment") and get("out_dir"):
        out.append((str(get("out_dir")), "out_dir"))
    if command == "eval" and get("use_cache") and get("cache_dir"):
        out.append((str(get("cache_dir")), "cache_dir (or use_cache=false)"))
    if command == "query":
        if get("out_dir"):
            out.append((str(get("out_dir")), "out_dir"))
        elif get("map") and Path(str(get("map"))).is_file():
            out.append((str(Path(str(get("map"))).parent / "queries"), "out_dir"))
    if command == "export" and get("out"):
        out.append((str(Path(str(get("out"))).parent), "out"))
    if command == "report" and get("out"):
        out.append((str(Path(str(get("out"))).parent), "out"))
    return out


def validate_command(command: str, overrides: list[str], multirun: bool = False) -> None:
    """Every check above for ``ovmap <command> <overrides>``; raises :class:`ConfigError` (one line)."""
    configs = check_overrides(command, overrides, multirun)
    for cfg in configs:
        check_values(cfg)
    for folder, key in output_folders(command, configs[0]):
        check_writable(folder, key)
