"""``ovmap check-data``: validate a benchmark dataset folder (missing files, malformed files, invalid poses), a
folder-format scene (every frame read and validated) or a recording (rosbag: topics, types, rates, what is missing;
tum / record3d: frames, rate, sizes, drops)."""

from __future__ import annotations

from typing import Any


def check_folder_scene(path: str, **options: Any) -> tuple[list[str], int]:
    """Read every frame of a folder-format scene (docs/folder_format.md) with the loader's own validation.

    Returns:
        (problems, frames read): one line per problem (the loader's message names the file or frame).
    """
    import math

    from ovmap.datasets import build_dataset

    try:
        dataset = build_dataset("folder", path=path, **options)
    except (ValueError, TypeError, KeyError, OSError) as err:
        return [str(err).splitlines()[0]], 0
    problems, frames = [], 0
    for i in range(len(dataset)):
        try:
            frame = dataset[i]
        except (ValueError, TypeError, KeyError, OSError) as err:
            problems.append(str(err).splitlines()[0])
            continue
        frames += 1
        if not all(math.isfinite(float(v)) for v in frame["pose"].flatten()):
            problems.append(f"frame {frame.get('index', i)}: non-finite pose (the map would skip it)")
    return problems, frames


def run_check_data(cfg: Any) -> None:
    """Prints the report of :func:`ovmap.datasets.check.check_dataset` (or of every frame of a folder-format scene);
    raises ValueError (exit 1) on problems."""
    from omegaconf import OmegaConf

    if cfg.get("dataset2d") is not None:
        return _check_2d(cfg)
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    if "name" not in ds:
        raise ValueError("give the dataset to check: dataset=<name> dataset.path=<root> (3D) or "
                         "dataset2d=<name> dataset2d.path=<root> (2D benchmarks)")
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
    if name == "folder":
        ds.pop("scene", None), ds.pop("scenes", None)  # a folder-format path is one scene
        problems, frames = check_folder_scene(str(path), **ds)
        print(f"folder scene {path}: {frames} frame(s) read")
        for line in problems:
            print(f"  {line}")
        if problems:
            raise ValueError(f"check-data found {len(problems)} problem(s) in {path} (see the list above)")
        print("ok: every frame reads and validates")
        return

    from ovmap.datasets.check import check_dataset

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
