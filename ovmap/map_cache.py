"""The map cache: build a scene's voxel map once, reuse it while nothing it depends on changed.

A cache entry is ``<cache_dir>/<scene slug>-<key[:20]>.npz``. The key (:func:`map_cache_key`) is a SHA-256 over
the encoder's config and weights hash, the dataset's config, a fingerprint of the dataset's input files
(:func:`input_fingerprint`: relative path, size and modification time of every file), the mapping settings, the
map file format and the ovmap version. Changed data therefore never comes from the cache. An entry that cannot be
read (truncated, corrupt, another format) is deleted and rebuilt with a warning.

An interrupted build (Ctrl-C / SIGTERM) leaves ``<entry>.partial.npz`` plus ``<entry>.partial.json``; the next
run with the same key continues from it (the key guarantees the same data, encoder and settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ovmap import __version__
from ovmap.naming import slug

log = logging.getLogger(__name__)


def _path_options(cfg: dict[str, Any]) -> list[Path]:
    """The existing files / folders named by a dataset config (``path``, ``gt_path``, ``depth_dir``, ...)."""
    out = []
    for key, value in sorted(cfg.items()):
        if isinstance(value, str) and value and (key == "path" or key.endswith(("_path", "_dir", "_file"))):
            p = Path(value).expanduser()
            if p.exists():
                out.append(p.resolve())
    return out


def input_paths(dataset: Any) -> list[Path]:
    """The files and folders a dataset reads, for the fingerprint.

    A dataset may say it itself with an ``input_paths()`` method. Otherwise: every existing path in its
    ``config()`` (``path``, ``*_path``, ``*_dir``, ``*_file``); a dataset root that holds a folder named after the
    configured ``scene`` is narrowed to that folder plus the root's own files (so a ScanNet root with 1,500 scans
    is not walked for one scan) and ``<root>/depth/<scene>`` when present (ScanNet++ rendered depth).
    Procedural datasets (no path, e.g. ``synthetic``) have none: their config is their whole input.
    """
    own = getattr(dataset, "input_paths", None)
    if callable(own):
        return [Path(p) for p in own()]
    cfg = dataset.config()
    paths = _path_options(cfg)
    scene = cfg.get("scene")
    if scene and cfg.get("path"):
        root = Path(cfg["path"]).expanduser().resolve()
        if (root / str(scene)).is_dir():
            paths = [p for p in paths if p != root] + [root / str(scene)]
            paths += [f for f in root.iterdir() if f.is_file()]
            if (root / "depth" / str(scene)).is_dir():
                paths.append(root / "depth" / str(scene))
    return sorted(set(paths))


def _walk_files(paths: Iterable[Path]) -> Iterable[Path]:
    for p in paths:
        if p.is_file():
            yield p
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    if not name.startswith("."):  # hidden files: temp files of atomic writes, OS metadata
                        yield Path(dirpath) / name


def input_fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over (path, size, mtime in ns) of every non-hidden file under ``paths`` (folders walked, sorted).

    Any edit that changes a file's size or modification time (rewriting, zeroing, replacing, adding or removing a
    file) changes the fingerprint; content is not read, so a 10^5-file scene costs one ``stat`` per file.
    """
    h = hashlib.sha256()
    for f in _walk_files(paths):
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def map_cache_key(encoder: Any, dataset: Any, mapping: dict[str, Any]) -> str:
    """SHA-256 over the encoder config and weights, the dataset config and input files, and the mapping settings."""
    from ovmap.mapping.io import FORMAT_VERSION

    encoder_cfg = json.loads(encoder.config_json())
    encoder_cfg.pop("device", None)
    dataset_cfg = dict(dataset.config())
    if dataset_cfg.get("path"):
        dataset_cfg["path"] = str(Path(dataset_cfg["path"]).expanduser().resolve())
    doc = {
        "encoder": encoder_cfg,
        "weights": encoder.weights_hash(),
        "dataset": dataset_cfg,
        "dataset_class": type(dataset).__name__,
        "inputs": input_fingerprint(input_paths(dataset)),
        "mapping": mapping,
        "map_format": FORMAT_VERSION,
        "ovmap": __version__,  # a new release may change datasets or fusion: rebuild
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def partial_paths(target: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.partial.npz, <stem>.partial.json)`` beside ``target`` (``map.npz`` -> ``map.partial.npz``)."""
    target = Path(target)
    stem = target.name[: -len(".npz")] if target.name.endswith(".npz") else target.name
    return target.with_name(f"{stem}.partial.npz"), target.with_name(f"{stem}.partial.json")


def save_partial(voxel_map: Any, target: str | os.PathLike, next_index: int, run_key: str) -> Path:
    """Save an interrupted map beside ``target`` with the frame to continue from and the run's key."""
    from ovmap.fileio import atomic_write_bytes

    npz, meta = partial_paths(target)
    voxel_map.save(npz)
    atomic_write_bytes(meta, json.dumps({"next_index": int(next_index), "run_key": run_key}).encode())
    return npz


def load_partial(target: str | os.PathLike, run_key: str, encoder: Any, device: Any) -> tuple[Any, int] | None:
    """The partial map beside ``target`` and the frame to continue from, or None when there is none.

    Raises:
        ValueError: the partial map was made by a run with other settings (``run_key`` differs) or is unreadable.
    """
    from ovmap.mapping.io import load_map

    npz, meta = partial_paths(target)
    if not npz.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
        next_index = int(info["next_index"])
        key = str(info["run_key"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta}: unreadable resume information ({err}); delete {npz} to start over") from None
    if key != run_key:
        raise ValueError(
            f"{npz} was made with other data, encoder or mapping settings than this run; "
            f"run with the same settings to resume, or delete it to start over"
        )
    return load_map(npz, encoder=encoder, device=device), next_index


def remove_partial(target: str | os.PathLike) -> None:
    for p in partial_paths(target):
        p.unlink(missing_ok=True)


def cached_map(
    dataset: Any,
    encoder: Any,
    mapping: dict[str, Any],
    cache_dir: str | os.PathLike | None,
    progress: bool = True,
    on_frame: Callable[..., None] | None = None,
    build: Callable[..., tuple[Any, Any]] | None = None,
) -> tuple[Any, str]:
    """Build the scene's map, or load it from ``cache_dir`` when an identical one was built before.

    Args:
        dataset, encoder: as for :func:`ovmap.pipeline.build_map`.
        mapping: the ``mapping`` config (``build_map`` keyword arguments).
        cache_dir: the cache folder; None = always build, never store.
        progress, on_frame: passed to ``build_map``.
        build: the map builder (default :func:`ovmap.pipeline.build_map`).

    Returns:
        (map, "cache" | "built" | "resumed").

    Raises:
        KeyboardInterrupt: the build was interrupted; the map so far is saved as ``<entry>.partial.npz`` and the
            next run with the same key continues from it.
    """
    from ovmap.mapping.io import load_map
    from ovmap.pipeline import build_map, interruptible

    build = build or build_map
    scene = dataset.scene_name
    path = key = None
    start, resumed, voxel_map = 0, None, None
    if cache_dir is not None:
        key = map_cache_key(encoder, dataset, mapping)
        path = Path(cache_dir).expanduser() / f"{slug(scene, default='scene')}-{key[:20]}.npz"
        if path.is_file():
            try:
                voxel_map = load_map(path, encoder=encoder, device=encoder.device)
            except Exception as err:  # noqa: BLE001 - any unreadable entry is rebuilt, never trusted
                log.warning("[scene %s] discarding unreadable cached map %s (%s); rebuilding it",
                            scene, path, str(err).splitlines()[0] if str(err) else type(err).__name__)
                path.unlink(missing_ok=True)
            else:
                log.info("[scene %s] reusing cached map %s", scene, path)
                return voxel_map, "cache"
        try:
            resumed = load_partial(path, key, encoder, encoder.device)
        except ValueError as err:
            log.warning("[scene %s] ignoring the partial map of an interrupted run (%s)", scene, err)
            remove_partial(path)
        if resumed is not None:
            voxel_map, start = resumed
            log.info("[scene %s] resuming an interrupted build at frame %d of %d", scene, start, len(dataset))
    with interruptible() as stop:
        voxel_map, stats = build(dataset, encoder, progress=progress, on_frame=on_frame, voxel_map=voxel_map,
                                 start=start, stop=stop, **mapping)
    if stats.interrupted:
        if path is not None:
            saved = save_partial(voxel_map, path, stats.next_index, key)
            raise KeyboardInterrupt(f"interrupted at frame {stats.next_index} of {len(dataset)}; "
                                    f"the map so far is in {saved}: run the same command again to resume")
        raise KeyboardInterrupt(f"interrupted at frame {stats.next_index} of {len(dataset)} (use_cache=false: "
                                "nothing saved)")
    log.info(
        "[scene %s] mapped %d frames (%d skipped) into %d voxels, %.1f frames/s",
        scene, stats.frames, stats.frames_skipped, len(voxel_map), stats.frames_per_second,
    )
    if path is not None:
        voxel_map.save(path)
        remove_partial(path)
    return voxel_map, "resumed" if resumed is not None else "built"
