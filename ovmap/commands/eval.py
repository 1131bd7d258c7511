"""``ovmap eval`` (per-scene 3D evaluation) and ``ovmap report`` (merge several evaluations into one table)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ovmap.commands.common import plain

log = logging.getLogger("ovmap")


def _job_out_dir(cfg: Any) -> Path:
    """``out_dir``, or in a Hydra multirun this job's own folder under it (``<num>_<overrides>``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.out_dir)


def _scene_given_on_command_line() -> bool:
    """``dataset.scene=x`` on the command line (or swept by a multirun) evaluates that scene, not the list."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").startswith("dataset.scene=") for o in HydraConfig.get().overrides.task)


def run_eval(cfg: Any) -> None:
    from ovmap.datasets import build_dataset
    from ovmap.eval3d import EvalSettings, mean_over_scenes
    from ovmap.eval3d.report import plot_per_class_iou, write_metrics_json, write_per_class_csv, write_results_md
    from ovmap.map_cache import cached_map
    from ovmap.scene_eval import class_table_for, evaluate_map, ground_truth_for
    from ovmap.pipeline import make_encoder, resolve_device
    from ovmap.vis import build_visualizer

    device = resolve_device(cfg.device)
    dataset_cfg = plain(cfg.dataset)
    dataset_name = dataset_cfg.pop("name")
    scenes = dataset_cfg.pop("scenes", None)
    if scenes is None or _scene_given_on_command_line():
        scenes = [dataset_cfg.get("scene")]
    encoder_cfg = plain(cfg.encoder)
    mapping = plain(cfg.mapping)
    ev = plain(cfg.eval)
    settings = EvalSettings(
        reference_compatible=bool(ev["reference_compatible"]),
        k=int(ev["k"]),
        voxel_size=float(mapping["voxel_size"]),
        prompt_denoising_thresh=float(ev["prompt_denoising_thresh"]),
        prediction_thresh=float(ev["prediction_thresh"]),
        chunk_size=int(ev["chunk_size"]),
        knn_backend=ev["knn_backend"],
        device=str(device),
        max_match_dist=ev["max_match_dist"],
        lift_rule=ev["lift_rule"],
    ).resolved()
    out_dir = _job_out_dir(cfg)
    from omegaconf import OmegaConf

    protocol_name = OmegaConf.select(cfg, "protocol.name", default=None)
    expected_gt = OmegaConf.select(cfg, f"protocol.gt_source.{dataset_name}", default=None)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.use_cache else None

    scene_metrics, independent, per_scene_info, class_names = {}, {}, {}, None
    encoder = None
    vis = build_visualizer(cfg.vis)
    for scene in scenes:
        kwargs = dict(dataset_cfg)
        if scene is not None:
            kwargs["scene"] = scene
        dataset = build_dataset(dataset_name, **kwargs)
        name = dataset.scene_name
        if name in scene_metrics:
            raise ValueError(f"scene '{name}' is listed twice")
        table = class_table_for(dataset, ev["classes_to_ignore"])
        if class_names is None:
            class_names = list(table.names)
        elif list(table.names) != class_names:
            raise ValueError(f"[scene {name}] its class table differs from the first scene's; evaluate separately")
        if encoder is None or encoder.needs_labels:
            encoder = make_encoder(encoder_cfg["name"], encoder_cfg, dataset, device)
        voxel_map, map_source = cached_map(dataset, encoder, mapping, cache_dir, bool(cfg.progress),
                                           on_frame=vis.on_frame if vis else None)
        gt, gt_source = ground_truth_for(dataset, table, settings, device, bool(cfg.progress))
        if expected_gt is not None and gt_source != expected_gt:
            raise ValueError(f"[scene {name}] protocol={protocol_name} scores {dataset_name} against {expected_gt} "
                             f"ground truth, but this scene's is {gt_source}; check dataset.path / dataset.gt_path")
        metrics, indep, pred = evaluate_map(voxel_map, gt, table, settings, name, ev["independent_threshold"],
                                            return_predictions=True)
        if vis is not None:
            _log_eval(vis, voxel_map, gt, pred, metrics, table.names)
        scene_metrics[name] = metrics
        if indep is not None:
            independent[name] = indep
        per_scene_info[name] = {"gt_source": gt_source, "map_source": map_source, "frames": len(dataset)}
        write_per_class_csv(out_dir / f"per_class_{name}.csv", metrics, table.names)
        log.info("[scene %s] mIoU %.2f  f-mIoU %.2f  acc %.2f  (%d GT voxels, %d map voxels, GT %s)",
                 name, 100 * metrics.miou, 100 * metrics.fmiou, 100 * metrics.acc, metrics.num_gt_voxels,
                 metrics.num_map_voxels, gt_source)

    mean = mean_over_scenes(scene_metrics)
    extra = {
        "dataset": dataset_name,
        "protocol_preset": protocol_name,
        "encoder": json.loads(encoder.config_json()),
        "mapping": mapping,
        "scene_info": per_scene_info,
        "settings_note": "miou, fmiou and acc are fractions in [0, 1]; the mean is unweighted over scenes",
    }
    metrics_path = write_metrics_json(out_dir / "metrics.json", scene_metrics, settings, mean, table.names,
                                      independent or None, extra)
    method = f"{encoder.name} ({mapping['mode']})"
    results_path = write_results_md(out_dir / "results.md", {dataset_name: mean}, method=method, settings=settings)
    plot_path = plot_per_class_iou(out_dir / "per_class_iou.png", scene_metrics, table.names,
                                   title=f"{method} on {dataset_name}: per-class IoU")

    print()
    print(f"{'scene':<24} {'mIoU':>7} {'f-mIoU':>7} {'acc':>7} {'GT vox':>9} {'map vox':>9}")
    for name, m in scene_metrics.items():
        print(f"{name:<24} {100 * m.miou:7.2f} {100 * m.fmiou:7.2f} {100 * m.acc:7.2f} {m.num_gt_voxels:9d} "
              f"{m.num_map_voxels:9d}")
    print(f"{'mean':<24} {100 * mean.miou:7.2f} {100 * mean.fmiou:7.2f} {100 * mean.acc:7.2f}")
    if independent:
        mean_ap = sum(i.mean_ap for i in independent.values()) / len(independent)
        print(f"independent queries: mean AP {100 * mean_ap:.2f} (threshold {ev['independent_threshold']})")
    print(f"protocol: reference_compatible={settings.reference_compatible}, k={settings.k}, "
          f"knn={settings.knn_backend}, denoise={settings.denoise_scope}, voxel={settings.voxel_size} m")
    for path in (metrics_path, results_path, plot_path):
        print(f"wrote {path}")
    for name in scene_metrics:
        print(f"wrote {out_dir / f'per_class_{name}.csv'}")
    if vis is not None:
        print(vis.describe(), flush=True)
        try:
            vis.finish(cfg.vis.get("serve_seconds"))
        finally:
            vis.close()


def _log_eval(vis: Any, voxel_map: Any, gt: Any, pred: Any, metrics: Any, names: Any) -> None:
    """Ground truth and predictions at the GT voxels, and the metrics, into the rerun recording."""
    vis.log_map(voxel_map)
    vis.log_points("world/ground_truth", gt.centers, labels=gt.labels)
    vis.log_points("world/predictions/voxels", gt.centers, labels=pred)
    for key in ("miou", "fmiou", "acc"):
        vis.log_scalar(f"metrics/semseg/summary/{key}", getattr(metrics, key))
    for i, iou in enumerate(metrics.iou):
        if metrics.present[i]:
            vis.log_scalar(f"metrics/semseg/classwise/{i + 1}_{names[i + 1]}/iou", float(iou))


def run_report(cfg: Any) -> None:
    from ovmap.eval3d.report import write_results_md

    dirs = [Path(d) for d in cfg.dirs]
    if not dirs:
        raise ValueError("no folder given: ovmap report <eval out_dir> [<more dirs>]")
    files = sorted({f for d in dirs for f in ([d] if d.is_file() else d.rglob("metrics.json"))})
    if not files:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, dirs))}")
    files = _report_2d_runs(files, cfg, dirs)  # ovmap eval2d runs -> report2d.md; the rest are 3D runs
    if not files:
        return
    table: dict[str, dict[str, dict[str, float]]] = {}
    for path in files:
        doc = json.loads(path.read_text())
        encoder = doc.get("encoder", {}).get("name", "?")
        mode = doc.get("mapping", {}).get("mode", "?")
        method = f"{encoder} ({mode})"
        dataset = doc.get("dataset", path.parent.name)
        row = table.setdefault(method, {})
        if dataset in row:
            # several jobs on one dataset (e.g. one scene each): average their scenes, unweighted
            prev = row[dataset]
            n = prev["_scenes"] + doc["mean"]["num_scenes"]
            for key in ("miou", "fmiou"):
                prev[key] = (prev[key] * prev["_scenes"] + doc["mean"][key] * doc["mean"]["num_scenes"]) / n
            prev["_scenes"] = n
        else:
            row[dataset] = {"miou": doc["mean"]["miou"], "fmiou": doc["mean"]["fmiou"],
                            "_scenes": doc["mean"]["num_scenes"]}
        if not all(math.isfinite(row[dataset][k]) for k in ("miou", "fmiou")):
            raise ValueError(f"{path}: non-finite score")
    out = Path(cfg.out) if cfg.out else (dirs[0] if dirs[0].is_dir() else dirs[0].parent) / "report.md"
    write_results_md(out, table, title="3D zero-shot semantic segmentation (merged)")
    print(out.read_text())
    print(f"merged {len(files)} metrics.json file(s); wrote {out}")


def _report_2d_runs(files: list[Path], cfg: Any, dirs: list[Path]) -> list[Path]:
    """Merge the ``ovmap eval2d`` metrics.json among ``files`` (ovmap.eval2d.report); return the other files."""
    from ovmap.eval2d.report import is_eval2d, write_report2d

    docs = [(path, json.loads(path.read_text())) for path in files]
    docs2d = [(path, doc) for path, doc in docs if is_eval2d(doc)]
    if docs2d:
        base = Path(cfg.out).parent if cfg.out else (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
        out = write_report2d(base / "report2d.md", docs2d)
        print(out.read_text())
        print(f"merged {len(docs2d)} eval2d metrics.json file(s); wrote {out}")
    return [path for path, doc in docs if not is_eval2d(doc)]
