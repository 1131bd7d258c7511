"""Helpers shared by the command implementations."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ovmap")


def plain(cfg: Any) -> dict[str, Any]:
    """A resolved OmegaConf node as plain Python containers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def fmt_vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def build_dataset_from_cfg(cfg: dict[str, Any]):
    """``{"name": ..., **kwargs}`` -> dataset instance."""
    from ovmap.datasets import build_dataset

    cfg = dict(cfg)
    return build_dataset(cfg.pop("name"), **cfg)


def map_from_cfg(cfg: Any, on_frame: Any = None, partial_target: Path | None = None):
    """Dataset + encoder + mapping loop, as configured by ``map.yaml`` / ``demo.yaml``.

    ``on_frame`` is passed to ``build_map`` (e.g. a visualiser's ``on_frame``). With ``partial_target`` (the map
    file to be written), Ctrl-C / SIGTERM stop after the current frame, the map so far is saved as
    ``<target stem>.partial.npz`` and ``KeyboardInterrupt`` says how to resume; ``cfg.resume`` continues from it.
    """
    from ovmap.map_cache import load_partial, partial_paths, remove_partial, save_partial
    from ovmap.pipeline import build_map, interruptible, make_encoder, resolve_device

    device = resolve_device(cfg.device)
    dataset = build_dataset_from_cfg(plain(cfg.dataset))
    encoder_cfg = plain(cfg.encoder)
    encoder = make_encoder(encoder_cfg["name"], encoder_cfg, dataset, device)
    mapping = plain(cfg.mapping)
    run_key = json.dumps({"dataset": plain(cfg.dataset), "encoder": encoder_cfg, "mapping": mapping},
                         sort_keys=True, default=str)
    voxel_map, start = None, 0
    if partial_target is not None:
        if cfg.get("resume"):
            resumed = load_partial(partial_target, run_key, encoder, device)
            if resumed is None:
                raise FileNotFoundError(f"resume=true but there is no {partial_paths(partial_target)[0]} to resume")
            voxel_map, start = resumed
            log.info("resuming %s at frame %d of %d", partial_paths(partial_target)[0], start, len(dataset))
        elif partial_paths(partial_target)[0].is_file():
            log.warning("%s holds an interrupted run; add resume=true to continue it (starting over now)",
                        partial_paths(partial_target)[0])
    with interruptible() as stop:  # logged inside: from this line on, Ctrl-C / SIGTERM stop cleanly
        log.info(
            "mapping %d frames of '%s' with encoder '%s' (%s mode, %.3f m voxels) on %s",
            len(dataset), dataset.scene_name, encoder.name, mapping["mode"], mapping["voxel_size"], device,
        )
        voxel_map, stats = build_map(dataset, encoder, progress=bool(cfg.progress), on_frame=on_frame,
                                     voxel_map=voxel_map, start=start, stop=stop if partial_target else None,
                                     **mapping)
    if stats.interrupted and partial_target is not None:
        saved = save_partial(voxel_map, partial_target, stats.next_index, run_key)
        raise KeyboardInterrupt(
            f"stopped at frame {stats.next_index} of {len(dataset)}; the map so far is in {saved}: "
            "run the same command with resume=true to continue"
        )
    if partial_target is not None:
        remove_partial(partial_target)
    return dataset, encoder, voxel_map, stats


def check_queries(voxel_map: Any, texts: list[str]) -> None:
    """A probability-mode map knows only its class names: say so (and what to do) before querying free text."""
    if voxel_map.mode != "probability":
        return
    names = list(voxel_map.class_names or [])[1:]
    unknown = [t for t in texts if t not in names]
    if unknown:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(
            f"this is a probability-mode map: it knows only its {len(names)} class names ({shown}), not "
            f"{unknown[0]!r}; free-text queries need a feature-mode map (ovmap map mapping.mode=feature ...)"
        )


def answer_queries(voxel_map, texts: list[str], out_dir: Path, margin: float, temperature: float = 0.01) -> list[str]:
    """Query the map, write a heat-coloured PLY and a top-down PNG per query; one printable line per query."""
    from ovmap.naming import slug
    from ovmap.regions import top_region
    from ovmap.vis.colors import heat_colors
    from ovmap.vis.images import save_topdown_png

    check_queries(voxel_map, list(texts))
    result = voxel_map.query(list(texts), softmax_temperature=temperature)
    keys = voxel_map.keys.cpu().numpy()
    lines = []
    for i, text in enumerate(texts):
        sim = result.similarity[i].cpu().numpy()
        ply = Path(out_dir) / f"query_{slug(text, default='query')}.ply"
        voxel_map.export_ply(ply, colors=heat_colors(sim))
        png = ply.with_suffix(".png")
        save_topdown_png(png, voxel_map.centers, sim, voxel_map.voxel_size, title=text)
        region = top_region(keys, sim, voxel_map.voxel_size, margin=margin)
        if region is None:
            lines.append(f'  "{text}": the map is empty')
            continue
        lines.append(
            f'  "{text}": top region centroid {fmt_vec(region.centroid)} m, extent {fmt_vec(region.extent)} m, '
            f"{region.num_voxels} voxels, mean cos {region.mean_score:.3f} -> {ply}, {png}"
        )
    return lines
