"""``ovmap check-data``: validate a benchmark dataset folder (missing files, malformed files, invalid poses) or a
recording (rosbag: topics, types, rates, what is missing; tum / record3d: frames, rate, sizes, drops)."""

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
    if name in ("tum", "record3d"):  # recordings: build the reader, read the first and last frames, summarise
        from ovmap.datasets import build_dataset

        rec = build_dataset(name, path=path, **{k: v for k, v in ds.items() if k != "scene"})
        ts = rec.timestamps
        span = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
        first, last = rec[0], rec[len(rec) - 1]
        print(f"{name} {path}: {len(rec)} frames over {span:.2f} s ({(len(ts) - 1) / span if span else 0:.2f} Hz)")
        print(f"  rgb {tuple(first['rgb'].shape[1:])}, depth {tuple(first['depth'].shape[1:])}, "
              f"fx {float(first['intrinsics'][0, 0]):.2f}; frames {first['index']} and {last['index']} read")  # fmt: skip
        dropped = getattr(rec, "unassociated", 0)
        print(f"  dropped: {dropped} colour image(s) without depth or pose" if dropped else "  missing: nothing")
        return
    scene, scenes = ds.pop("scene", None), ds.pop("scenes", None)
    if cfg.get("all_found"):
        scenes = None
    report = check_dataset(name, path, scene=scene, scenes=scenes, **ds)
    print(report.format())
    if not report.ok:
        raise ValueError(f"check-data found problems: {report.summary()} (see the list above)")
