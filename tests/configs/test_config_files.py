"""Every ``ovmap/configs/{encoder,dataset,mapping}/*.yaml`` against the signature of what it configures.

Each key is accepted by the class (or ``build_map``), carries a comment saying what it means, and its default
equals the constructor's default (a YAML default written twice must not drift); every constructor option a user
may need is reachable from the file. New YAML files are picked up automatically.
"""

from __future__ import annotations

import inspect
import math
from importlib import resources

import pytest
from omegaconf import OmegaConf

from ovmap.commands.help import yaml_keys

# constructor arguments the pipeline fills in itself (never from the YAML)
INJECTED = {"encoder": {"device", "class_names"}, "dataset": set(), "mapping": set()}
# build_map arguments that are not mapping settings (objects, callbacks, resume state)
NOT_SETTINGS = {"dataset", "encoder", "class_names", "voxel_map", "progress", "on_frame", "start", "stop", "prefetch"}
# keys read by the commands rather than the dataset constructor
COMMAND_KEYS = {"dataset": {"scenes"}}


def _files() -> list[tuple[str, str]]:
    root = resources.files("ovmap.configs")
    return [(group, p.name[:-5]) for group in ("encoder", "dataset", "mapping")
            for p in sorted((root / group).iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")]


def _encoder_aliases(name: str) -> dict[str, str]:
    from ovmap.encoders import ENCODERS

    return getattr(ENCODERS.get(name), "ARGUMENT_ALIASES", {})


def _target(group: str, name: str):
    if group == "encoder":
        from ovmap.encoders import ENCODERS

        return ENCODERS.get(name).__init__
    if group == "dataset":
        from ovmap.datasets import DATASETS

        return DATASETS.get(name).__init__
    from ovmap.pipeline import build_map

    return build_map


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isinf(a) and math.isinf(b):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


@pytest.mark.parametrize(("group", "name"), _files(), ids=lambda x: x)
def test_yaml_matches_signature(group, name):
    path = resources.files("ovmap.configs") / group / f"{name}.yaml"
    text = path.read_text()
    cfg = OmegaConf.create(text)
    values = OmegaConf.to_container(cfg, resolve=True)  # ${oc.select:protocol...,default} -> the default
    if group != "mapping":
        assert values.get("name") == name, f"{group}/{name}.yaml must say name: {name}"
    params = inspect.signature(_target(group, name)).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = {n: p for n, p in params.items() if n != "self" and p.kind not in
               (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    keys = [k for k in values if k != "name"]
    comments = {k: c for k, _, c in yaml_keys(text.splitlines())}
    for key in keys:
        assert comments.get(key), f"{group}/{name}.yaml: key '{key}' has no comment saying what it means"
        if key in COMMAND_KEYS.get(group, set()):
            continue
        assert key in options or accepts_any, f"{group}/{name}.yaml: '{key}' is not an argument of {name}"
        if key not in options:
            continue
        default = options[key].default
        if OmegaConf.is_missing(cfg, key):
            assert default is inspect.Parameter.empty or default is None, (
                f"{group}/{name}.yaml: '{key}' is required (???) but the constructor defaults it to {default!r}")
            continue
        if default is inspect.Parameter.empty:
            continue  # required by the class, given by the YAML
        assert _same(values[key], default), (
            f"{group}/{name}.yaml: {key} = {values[key]!r} but the constructor's default is {default!r}")
    # documented alternative names of an option the YAML already sets (e.g. Talk2DINO's dinov2_heads = dino_heads)
    aliases = set(_encoder_aliases(name)) if group == "encoder" else set()
    skip = INJECTED[group] | (NOT_SETTINGS if group == "mapping" else set()) | aliases
    unreachable = sorted(set(options) - set(keys) - skip)
    assert not unreachable, f"{group}/{name}.yaml: constructor option(s) {unreachable} cannot be set from the config"
