"""``check_dataset``: validate a benchmark dataset folder before a long run (``ovmap check-data``).

For each scene it walks the expected layout (docs/datasets.md) and lists **every** missing file together with the
download or preparation step that produces it; then, when the scene's files are all there, it builds the loader
and reads the first and last kept frames, so malformed files (unparsable poses, wrong sizes, wrong depth scale) are
reported too, and counts the frames whose pose is non-finite (they are skipped by the loaders).

Typical usage example:

    >>> from ovmap.datasets.check import check_dataset
    >>> report = check_dataset("replica", "/data/Replica", scene="office0")  # doctest: +SKIP
    >>> print(report.format()); report.ok  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovmap.datasets import replica as rep
from ovmap.datasets import scannet as sn
from ovmap.datasets import scannetpp as spp
from ovmap.datasets.base import build_dataset
from ovmap.datasets.labels_io import list_scenes, split_trailing_number

CHECKED = ("replica", "replica_semnerf", "scannet", "scannetpp")
MAX_LISTED = 20  # per scene and kind in format(); the report keeps every problem


@dataclass
class Problem:
    """One missing or malformed file (or folder) and the step that produces or fixes it."""

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f"\n      fix: {self.fix}" if self.fix else "")


@dataclass
class SceneReport:
    """What was found for one scene."""

    scene: str
    frames: int = 0
    invalid_poses: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`; ``ok`` when no problem was found."""

    dataset: str
    root: str
    problems: list[Problem] = field(default_factory=list)  # root-level problems
    scenes: list[SceneReport] = field(default_factory=list)

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + [p for s in self.scenes for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.all_problems

    @property
    def invalid_poses(self) -> int:
        return sum(s.invalid_poses for s in self.scenes)

    def summary(self) -> str:
        n = len(self.all_problems)
        bad = sum(1 for s in self.scenes if s.problems)
        if not n:
            return f"{self.dataset} at {self.root}: {len(self.scenes)} scene(s) complete"
        return (
            f"{self.dataset} at {self.root}: {n} problem(s) in {bad} of {len(self.scenes)} scene(s)"
            + (" and the root" if self.problems else "")
        )

    def format(self) -> str:
        lines = [f"check-data: {self.dataset} at {self.root}"]
        for p in self.problems:
            lines.append(f"  MISSING/BAD {p}")
        for s in self.scenes:
            status = "ok" if not s.problems else f"{len(s.problems)} problem(s)"
            lines.append(f"  scene {s.scene}: {s.frames} frames, {s.invalid_poses} with invalid poses (skipped): {status}")
            by_fix: dict[str, list[Problem]] = {}
            for p in s.problems:
                by_fix.setdefault(p.fix + "\0" + p.message.split(" (")[0], []).append(p)
            for group in by_fix.values():
                for p in group[:MAX_LISTED]:
                    lines.append(f"    MISSING/BAD {p.path}: {p.message}")
                if len(group) > MAX_LISTED:
                    lines.append(f"    ... and {len(group) - MAX_LISTED} more like these")
                if group[0].fix:
                    lines.append(f"      fix: {group[0].fix}")
            for note in s.notes:
                lines.append(f"    note: {note}")
        lines.append(self.summary())
        return "\n".join(lines)


def _missing(out: list[Problem], path: Path, fix: str, what: str = "missing", folder: bool = False) -> bool:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        out.append(Problem(str(path), what + (" folder" if folder else " file"), fix))
    return ok


# ------------------------------------------------------------------------------------------------ per format
def _walk_replica(root: Path, scene: str, rpt: SceneReport, gt_path: Any) -> None:
    sdir, P = root / scene, rpt.problems
    if not _missing(P, sdir / "traj.txt", rep.STEP_NICE):
        return
    try:
        n = len(rep.read_poses(sdir / "traj.txt"))
    except ValueError as e:
        P.append(Problem(str(sdir / "traj.txt"), f"malformed ({e})", rep.STEP_NICE))
        return
    res = sdir / "results"
    if not _missing(P, res, rep.STEP_NICE, folder=True):
        return
    names = {p.name for p in res.iterdir()}
    for i in range(n):
        if not any(f"frame{i:06d}{e}" in names for e in (".jpg", ".png", ".jpeg")):
            P.append(Problem(str(res / f"frame{i:06d}.jpg"), "missing file", rep.STEP_NICE))
        if f"depth{i:06d}.png" not in names:
            P.append(Problem(str(res / f"depth{i:06d}.png"), "missing file", rep.STEP_NICE))
    _missing(P, rep.resolve_gt_file(root, scene, gt_path), rep.STEP_GT)
    info = root / "semantic_info" / split_trailing_number(scene) / "info_semantic.json"
    if not info.is_file():
        rpt.notes.append(f"{info} not found: the shipped Replica 101-class list is used ({rep.STEP_SEMINFO})")


def _walk_semnerf(root: Path, scene: str, rpt: SceneReport) -> None:
    seq = scene.partition("/")[2]
    sdir, P = _scene_dir("replica_semnerf", root, scene), rpt.problems
    seqs = [sdir / seq] if seq else sorted(p for p in sdir.iterdir() if p.is_dir())
    seqs = [s for s in seqs if _missing(P, s / "traj_w_c.txt", rep.STEP_SEMNERF)]
    for sq in seqs:
        try:
            n = len(rep.read_poses(sq / "traj_w_c.txt"))
        except ValueError as e:
            P.append(Problem(str(sq / "traj_w_c.txt"), f"malformed ({e})", rep.STEP_SEMNERF))
            continue
        for sub, stem in (("rgb", "rgb"), ("depth", "depth"), ("semantic_class", "semantic_class")):
            if not _missing(P, sq / sub, rep.STEP_SEMNERF, folder=True):
                continue
            names = {p.name for p in (sq / sub).iterdir()}
            for i in range(n):
                if f"{stem}_{i}.png" not in names:
                    P.append(Problem(str(sq / sub / f"{stem}_{i}.png"), "missing file", rep.STEP_SEMNERF))


def _walk_scannet(root: Path, scene: str, rpt: SceneReport, label_map_file: Any) -> None:
    sdir, P = root / scene, rpt.problems
    ok = all([_missing(P, sdir / sub, sn.STEP_SENS, folder=True) for sub in ("color", "depth", "pose")])
    _missing(P, sdir / "intrinsic" / "intrinsic_depth.txt", sn.STEP_SENS)
    labels = sn.label_dir_of(sdir)
    if labels is None:
        P.append(Problem(str(sdir / f"{scene}_2d-label-filt" / "label-filt"), "missing folder", sn.STEP_LABELS))
    if not ok:
        return
    colors = sn.numeric_stems(sdir / "color", ".jpg")
    if not colors:
        P.append(Problem(str(sdir / "color"), "holds no <i>.jpg images", sn.STEP_SENS))
    depths = sn.numeric_stems(sdir / "depth", ".png")
    poses = sn.numeric_stems(sdir / "pose", ".txt")
    labs = sn.numeric_stems(labels, ".png") if labels is not None else None
    for fid in sorted(colors):
        if fid not in depths:
            P.append(Problem(str(sdir / "depth" / f"{fid}.png"), "missing file", sn.STEP_SENS))
        if fid not in poses:
            P.append(Problem(str(sdir / "pose" / f"{fid}.txt"), "missing file", sn.STEP_SENS))
        if labs is not None and fid not in labs:
            P.append(Problem(str(labels / f"{fid}.png"), "missing file", sn.STEP_LABELS))


def _walk_scannetpp(root: Path, scene: str, rpt: SceneReport, opts: dict[str, Any]) -> None:
    dslr, P = root / scene / "dslr", rpt.problems
    has_imgs = _missing(P, dslr / "undistorted_images", spp.STEP_UNDISTORT, folder=True)
    _missing(P, dslr / "nerfstudio" / "transforms_undistorted.json", spp.STEP_UNDISTORT)
    has_colmap = _missing(P, dslr / "colmap" / "images.txt", spp.STEP_DATA)
    source = opts.get("depth_source", "auto")
    if opts.get("depth_dir"):
        ddir, kind = Path(opts["depth_dir"]), source
        _missing(P, ddir, spp.STEP_RENDER, folder=True)
    else:
        ddir, kind = spp.find_depth_dir(root, scene, source)
        if ddir is None:
            name = "render_depth_undistorted" if source == "undistorted" else "render_depth"
            P.append(Problem(str(root / "depth" / scene / "dslr" / name), "missing folder", spp.STEP_RENDER))
    if kind == "fisheye" and not (dslr / "colmap" / "cameras.txt").is_file() and not (
        dslr / "nerfstudio" / "transforms.json"
    ).is_file():
        P.append(Problem(str(dslr / "colmap" / "cameras.txt"), "missing file (fisheye camera of the depth)", spp.STEP_DATA))
    if ddir is not None and kind == "fisheye":
        rpt.notes.append(f"depth from {ddir} is fisheye-rendered; it is undistorted onto the pinhole grid (nearest)")
    _missing(P, spp.resolve_gt_file(root, scene, opts.get("gt_path")), spp.STEP_GT)
    if not (has_imgs and has_colmap):
        return
    try:
        entries = spp.read_colmap_images(dslr / "colmap" / "images.txt")
    except ValueError as e:
        P.append(Problem(str(dslr / "colmap" / "images.txt"), f"malformed ({e})", spp.STEP_DATA))
        return
    images = {p.name for p in (dslr / "undistorted_images").iterdir()}
    depths = {p.stem for p in ddir.iterdir()} if ddir is not None and ddir.is_dir() else None
    absent = [e["name"] for e in entries if e["name"] not in images]
    if absent:
        rpt.notes.append(f"{len(absent)} image(s) of images.txt are not in undistorted_images and are skipped, "
                         f"e.g. {absent[0]}")
    if depths is not None:
        for e in entries:
            stem = Path(e["name"]).stem
            if e["name"] in images and stem not in depths:
                P.append(Problem(str(ddir / f"{stem}.png"), "missing file", spp.STEP_RENDER))


def _scene_lister(name: str):
    return {
        "replica": lambda p: (p / "traj.txt").is_file(),
        "replica_semnerf": rep._is_semnerf_scene,
        "scannet": sn._is_scannet_scene,
        "scannetpp": spp._is_scannetpp_scene,
    }[name]


def _scene_dir(name: str, root: Path, scene: str) -> Path:
    if name == "replica_semnerf":
        base = scene.partition("/")[0]
        return root / base if (root / base).is_dir() else root / split_trailing_number(base)
    return root / scene


def check_dataset(
    name: str,
    path: str | os.PathLike,
    scene: str | None = None,
    scenes: Sequence[str] | None = None,
    **options: Any,
) -> CheckReport:
    """Validates a dataset folder; lists every missing or malformed file with the step that produces it.

    Args:
        name: ``replica``, ``replica_semnerf``, ``scannet`` or ``scannetpp``.
        path: the dataset root (as ``dataset.path``).
        scene: check only this scene.
        scenes: check these scenes (e.g. the protocol's list); with neither, every scene found under the root.
        **options: loader options that change where files are looked for (``gt_path``, ``label_map_file``,
            ``depth_source``, ``depth_dir``, ``depth_scale``, ...); unknown ones are ignored.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when nothing is missing or malformed.
    """
    if name not in CHECKED:
        raise KeyError(f"check-data supports {', '.join(CHECKED)}; got '{name}'")
    root = Path(path).expanduser()
    report = CheckReport(dataset=name, root=str(root))
    if not root.is_dir():
        report.problems.append(Problem(str(root), "dataset root does not exist", _download_step(name)))
        return report
    found = list_scenes(root, _scene_lister(name))
    if scene is not None:
        wanted = [str(scene)]
    elif scenes is not None:
        wanted = [str(s) for s in scenes]
    else:
        wanted = found
        if not wanted:
            report.problems.append(Problem(str(root), "holds no scene folders of this dataset", _download_step(name)))
    if name == "replica":
        _missing(report.problems, root / "cam_params.json", rep.STEP_NICE)
    if name == "scannet":
        tsv = Path(options["label_map_file"]) if options.get("label_map_file") else root / sn.TSV_NAME
        _missing(report.problems, tsv, sn.STEP_TSV)
    loader_opts = _loader_options(name, options)
    for sc in wanted:
        rpt = SceneReport(scene=sc)
        report.scenes.append(rpt)
        sdir = _scene_dir(name, root, sc)
        if not sdir.is_dir():
            there = ", ".join(found) if found else "none"
            rpt.problems.append(Problem(str(sdir), f"scene folder missing (scenes there: {there})", _download_step(name)))
            continue
        if name == "replica":
            _walk_replica(root, sc, rpt, options.get("gt_path"))
        elif name == "replica_semnerf":
            _walk_semnerf(root, sc, rpt)
        elif name == "scannet":
            _walk_scannet(root, sc, rpt, options.get("label_map_file"))
        else:
            _walk_scannetpp(root, sc, rpt, options)
        walk_problems = bool(rpt.problems or report.problems)
        try:  # content checks: parse everything the loader parses, read the first and last kept frames
            ds = build_dataset(name, path=str(root), scene=sc, **loader_opts)
            rpt.frames = len(ds)
            rpt.invalid_poses = ds.num_invalid_poses()
            if len(ds):
                ds[0]
                ds[len(ds) - 1]
        except (ValueError, FileNotFoundError, OSError, KeyError) as e:
            if not walk_problems:  # otherwise the loader only repeats a missing file listed above
                msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e).splitlines()[0]
                rpt.problems.append(Problem(str(sdir), f"malformed: {msg}", _download_step(name)))
    return report


def _loader_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    keep = {
        "replica": ("gt_path",),
        "replica_semnerf": ("depth_scale",),
        "scannet": ("label_map_file", "depth_scale", "ignore_other_classes", "labels"),
        "scannetpp": ("depth_source", "depth_dir", "gt_path", "depth_scale"),
    }[name]
    return {k: options[k] for k in keep if k in options and options[k] is not None}


def _download_step(name: str) -> str:
    return {
        "replica": rep.STEP_NICE,
        "replica_semnerf": rep.STEP_SEMNERF,
        "scannet": sn.STEP_SENS,
        "scannetpp": spp.STEP_DATA,
    }[name]
