"""The ``ovmap`` command line: ``ovmap <command> [hydra overrides]``.

Each command is a thin Hydra app over ``ovmap/configs/<command>.yaml``; the work is done by library
functions (``ovmap.pipeline``, ``ovmap.mapping``) that tests call directly. Set ``OVMAP_DEBUG=1`` to see full
tracebacks instead of one-line errors.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("ovmap")

CONFIG_PATH = "pkg://ovmap.configs"


# --- helpers ------------------------------------------------------------------------------------------------
def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_")
    return slug[:60] or "query"


def _fmt_vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def _build_dataset(cfg: dict[str, Any]):
    from ovmap.datasets import build_dataset

    cfg = dict(cfg)
    return build_dataset(cfg.pop("name"), **cfg)


def _map_from_cfg(cfg: Any):
    """Shared by ``map`` and ``demo``: dataset + encoder + mapping loop."""
    from ovmap.pipeline import build_map, make_encoder, resolve_device

    device = resolve_device(cfg.device)
    dataset = _build_dataset(_plain(cfg.dataset))
    encoder_cfg = _plain(cfg.encoder)
    encoder = make_encoder(encoder_cfg["name"], encoder_cfg, dataset, device)
    mapping = _plain(cfg.mapping)
    log.info(
        "mapping %d frames of '%s' with encoder '%s' (%s mode, %.3f m voxels) on %s",
        len(dataset), dataset.scene_name, encoder.name, mapping["mode"], mapping["voxel_size"], device,
    )
    voxel_map, stats = build_map(dataset, encoder, progress=bool(cfg.progress), **mapping)
    return dataset, encoder, voxel_map, stats


def _answer_queries(voxel_map, texts: list[str], out_dir: Path, margin: float, temperature: float = 0.01):
    """Query the map, write one heat-coloured PLY per query, return printable lines."""
    from ovmap.regions import heat_colors, top_region

    result = voxel_map.query(list(texts), softmax_temperature=temperature)
    keys = voxel_map.keys.cpu().numpy()
    lines = []
    for i, text in enumerate(texts):
        sim = result.similarity[i].cpu().numpy()
        ply = out_dir / f"query_{_slug(text)}.ply"
        voxel_map.export_ply(ply, colors=heat_colors(sim))
        region = top_region(keys, sim, voxel_map.voxel_size, margin=margin)
        if region is None:
            lines.append(f'  "{text}": the map is empty')
            continue
        lines.append(
            f'  "{text}": top region centroid {_fmt_vec(region.centroid)} m, extent {_fmt_vec(region.extent)} m, '
            f"{region.num_voxels} voxels, mean cos {region.mean_score:.3f} -> {ply}"
        )
    return lines


# --- commands -----------------------------------------------------------------------------------------------
def cmd_map(cfg: Any) -> None:
    _, _, voxel_map, stats = _map_from_cfg(cfg)
    out = Path(cfg.out_dir) / "map.npz"
    voxel_map.save(out)
    print(
        f"mapped {stats.frames} frames ({stats.frames_skipped} skipped) into {len(voxel_map)} voxels "
        f"in {stats.seconds_total:.1f} s ({stats.frames_per_second:.1f} frames/s)"
    )
    print(f"wrote {out}")


def cmd_demo(cfg: Any) -> None:
    t0 = time.perf_counter()
    dataset, encoder, voxel_map, stats = _map_from_cfg(cfg)
    out_dir = Path(cfg.out_dir)
    map_path = out_dir / "map.npz"
    voxel_map.save(map_path)
    cloud = out_dir / "map_rgb.ply"
    voxel_map.export_ply(cloud)
    lines = _answer_queries(voxel_map, list(cfg.queries), out_dir, cfg.region_margin)
    print()
    print("ovmap demo")
    print(f"  scene      : {dataset.scene_name} ({len(dataset)} frames, {len(dataset.class_names) - 1} classes)")
    print(f"  encoder    : {encoder.name} ({voxel_map.mode} space)")
    print(
        f"  map        : {len(voxel_map)} voxels of {voxel_map.voxel_size:.3f} m from {stats.frames} frames "
        f"({stats.frames_skipped} skipped), {stats.frames_per_second:.1f} frames/s"
    )
    print(f"  map file   : {map_path}")
    print(f"  RGB cloud  : {cloud}")
    print("  queries (PLY coloured by similarity, purple = low, yellow = high):")
    for line in lines:
        print(line)
    print(f"  total time : {time.perf_counter() - t0:.1f} s")
    print(f'next: ovmap query map={map_path} "a lamp" "somewhere to put books"')


def load_map(path: str | Path, device: Any = "auto"):
    """Load a saved map and rebuild the encoder recorded in it (for queries)."""
    from ovmap.encoders import build_encoder
    from ovmap.mapping import VoxelMap
    from ovmap.pipeline import resolve_device

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    dev = resolve_device(device)
    with np.load(path, allow_pickle=False) as data:
        encoder_json = str(data["encoder"]) if "encoder" in data.files else "{}"
    encoder_cfg = json.loads(encoder_json or "{}")
    encoder = None
    if encoder_cfg.get("name"):
        name = encoder_cfg.pop("name")
        encoder_cfg["device"] = str(dev)
        encoder = build_encoder(name, **encoder_cfg)
    return VoxelMap.load(path, encoder=encoder, device=dev)


def cmd_query(cfg: Any) -> None:
    texts = list(cfg.texts)
    if not texts:
        raise ValueError('no query given: ovmap query map=<file> "a chair" "a place to sleep"')
    voxel_map = load_map(cfg.map, cfg.device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.map).parent / "queries"
    lines = _answer_queries(voxel_map, texts, out_dir, cfg.region_margin, cfg.softmax_temperature)
    print(f"{len(voxel_map)} voxels in {cfg.map}")
    for line in lines:
        print(line)


def cmd_export(cfg: Any) -> None:
    from ovmap.mapping import VoxelMap

    voxel_map = VoxelMap.load(cfg.map)
    voxel_map.export_ply(cfg.out)
    print(f"wrote {cfg.out} ({len(voxel_map)} points)")


COMMANDS: dict[str, tuple[Callable[[Any], None], str]] = {
    "map": (cmd_map, "integrate a dataset into a voxel map: writes <out_dir>/map.npz"),
    "demo": (cmd_demo, "map the built-in synthetic room with the oracle encoder and run example queries"),
    "query": (cmd_query, 'free-text queries on a saved map: ovmap query map=<file> "a chair"'),
    "export": (cmd_export, "write a saved map as a coloured PLY point cloud: ovmap export map=<file> out=<ply>"),
}


def _usage() -> str:
    lines = ["usage: ovmap <command> [key=value Hydra overrides] [--cfg job] [--help]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'ovmap <command> --help' for its configuration. OVMAP_DEBUG=1 shows full tracebacks."]
    return "\n".join(lines)


def _quote_override_value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _split_query_args(args: list[str]) -> list[str]:
    """Turn positional query texts into a ``texts=[...]`` override; keep Hydra's own arguments."""
    texts, rest = [], []
    for arg in args:
        if arg.startswith("-") or re.match(r"^[+~]?[\w.\/@-]+=", arg):
            rest.append(arg)
        else:
            texts.append(arg)
    if texts:
        rest.append("texts=[" + ",".join(_quote_override_value(t) for t in texts) + "]")
    return rest


def _run_guarded(fn: Callable[[Any], None]) -> Callable[[Any], None]:
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
        rest = _split_query_args(rest)
    fn, _ = COMMANDS[command]
    task = _run_guarded(fn)
    task.__name__ = command  # Hydra names the job after the task function
    saved_argv = sys.argv
    sys.argv = [f"ovmap {command}", *rest]
    try:
        hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=command)(task)()
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    entrypoint()
