"""Helpers shared by the command implementations."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ovmap")


def plain(cfg: Any) -> dict[str, Any]:
    """A resolved OmegaConf node as plain Python containers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def slug(text: str) -> str:
    """A file-name-safe version of a query text."""
    cleaned = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_")
    return cleaned[:60] or "query"


def fmt_vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def build_dataset_from_cfg(cfg: dict[str, Any]):
    """``{"name": ..., **kwargs}`` -> dataset instance."""
    from ovmap.datasets import build_dataset

    cfg = dict(cfg)
    return build_dataset(cfg.pop("name"), **cfg)


def map_from_cfg(cfg: Any, on_frame: Any = None):
    """Dataset + encoder + mapping loop, as configured by ``map.yaml`` / ``demo.yaml``.

    ``on_frame`` is passed to ``build_map`` (e.g. a visualiser's ``on_frame``).
    """
    from ovmap.pipeline import build_map, make_encoder, resolve_device

    device = resolve_device(cfg.device)
    dataset = build_dataset_from_cfg(plain(cfg.dataset))
    encoder_cfg = plain(cfg.encoder)
    encoder = make_encoder(encoder_cfg["name"], encoder_cfg, dataset, device)
    mapping = plain(cfg.mapping)
    log.info(
        "mapping %d frames of '%s' with encoder '%s' (%s mode, %.3f m voxels) on %s",
        len(dataset), dataset.scene_name, encoder.name, mapping["mode"], mapping["voxel_size"], device,
    )
    voxel_map, stats = build_map(dataset, encoder, progress=bool(cfg.progress), on_frame=on_frame, **mapping)
    return dataset, encoder, voxel_map, stats


def answer_queries(voxel_map, texts: list[str], out_dir: Path, margin: float, temperature: float = 0.01) -> list[str]:
    """Query the map, write a heat-coloured PLY and a top-down PNG per query; one printable line per query."""
    from ovmap.regions import heat_colors, top_region
    from ovmap.vis.images import save_topdown_png

    result = voxel_map.query(list(texts), softmax_temperature=temperature)
    keys = voxel_map.keys.cpu().numpy()
    lines = []
    for i, text in enumerate(texts):
        sim = result.similarity[i].cpu().numpy()
        ply = Path(out_dir) / f"query_{slug(text)}.ply"
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
