"""``ovmap check-data``: validate a benchmark dataset folder (missing files, malformed files, invalid poses)."""

from __future__ import annotations

from typing import Any


def run_check_data(cfg: Any) -> None:
    """Prints the report of :func:`ovmap.datasets.check.check_dataset`; raises ValueError (exit 1) on problems."""
    from omegaconf import OmegaConf

    from ovmap.datasets.check import check_dataset

    if cfg.get("dataset2d") is not None:
        return _check_2d(cfg)
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    if "name" not in ds:
        raise ValueError("give the dataset to check: dataset=<name> dataset.path=<root> (3D) or "
                         "dataset2d=<name> dataset2d.path=<root> (2D benchmarks)")
    name, path = ds.pop("name"), ds.pop("path")
    scene, scenes = ds.pop("scene", None), ds.pop("scenes", None)
    if cfg.get("all_found"):
        scenes = None
    report = check_dataset(name, path, scene=scene, scenes=scenes, **ds)
    print(report.format())
    if not report.ok:
        raise ValueError(f"check-data found problems: {report.summary()} (see the list above)")


def _check_2d(cfg: Any) -> None:
    """``dataset2d=<name>``: the 2D benchmark checks of :func:`ovmap.eval2d.datasets.check_dataset2d`."""
    from ovmap.eval2d.datasets import check_dataset2d

    name, path = cfg.dataset2d.name, cfg.dataset2d.path
    problems, complete = check_dataset2d(name, path)
    print(f"{name} at {path}: {complete} complete validation image/label pair(s)")
    for line in problems[:50]:
        print(f"  - {line}")
    if len(problems) > 50:
        print(f"  ... and {len(problems) - 50} more")
    if problems:
        raise ValueError(f"check-data found {len(problems)} problem(s) in {name} (see the list above)")
    print("ok")
