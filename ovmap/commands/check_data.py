"""``ovmap check-data``: validate a benchmark dataset folder (missing files, malformed files, invalid poses)."""

from __future__ import annotations

from typing import Any


def run_check_data(cfg: Any) -> None:
    """Prints the report of :func:`ovmap.datasets.check.check_dataset`; raises ValueError (exit 1) on problems."""
    from omegaconf import OmegaConf

    from ovmap.datasets.check import check_dataset

    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    name, path = ds.pop("name"), ds.pop("path")
    if name == "rosbag":  # a recording, not a benchmark folder: list topics, types, rates and what is missing
        from ovmap.datasets.rosbag import check_rosbag

        ok, text = check_rosbag(path, **{k: v for k, v in ds.items() if k != "scene"})
        print(text)
        if not ok:
            raise ValueError("check-data found problems in the bag (see the list above)")
        return
    scene, scenes = ds.pop("scene", None), ds.pop("scenes", None)
    if cfg.get("all_found"):
        scenes = None
    report = check_dataset(name, path, scene=scene, scenes=scenes, **ds)
    print(report.format())
    if not report.ok:
        raise ValueError(f"check-data found problems: {report.summary()} (see the list above)")
