"""``ovmap eval2d``: one encoder on one 2D benchmark at one resolution budget (RADSeg Table 1 / A.2 protocol)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovmap.commands.common import plain

log = logging.getLogger("ovmap")


def _job_out_dir(cfg: Any) -> Path:
    """``out_dir``, or in a Hydra multirun this job's own folder under it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.out_dir)


def _explicit_encoder_keys() -> set[str]:
    """Encoder arguments given on the command line (``encoder.<key>=...``); budgets/presets never override them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("encoder."):
            keys.add(key.split(".", 1)[1])
    return keys


def budget_for(resolution: dict[str, Any], dataset: str):
    """The :class:`~ovmap.eval2d.protocol.Budget` of ``dataset`` in a ``resolution`` config."""
    from ovmap.eval2d.protocol import Budget

    if dataset not in resolution:
        raise KeyError(f"resolution '{resolution.get('name')}' has no budget for dataset2d '{dataset}': add "
                       f"resolution.{dataset}={{short_side: ..., crop: ..., stride: ...}}")
    entry = dict(resolution[dataset])
    return Budget(int(entry["short_side"]), int(entry["crop"]), int(entry["stride"]),
                  int(resolution.get("max_long_side", 2048)))


def run_eval2d(cfg: Any) -> None:
    from ovmap.encoders.base import ENCODERS, build_encoder
    from ovmap.eval2d.datasets import build_dataset2d
    from ovmap.eval2d.evaluate import encoder_kwargs_2d, evaluate_2d
    from ovmap.pipeline import resolve_device

    device = resolve_device(cfg.device)
    _ = cfg.dataset2d.path  # a missing path raises MissingMandatoryValue -> 'dataset2d.path is required'
    ds_cfg = plain(cfg.dataset2d)
    ds_name = ds_cfg.pop("name")
    dataset_settings = ds_cfg.pop("encoder_settings", None) or {}
    dataset = build_dataset2d(ds_name, **ds_cfg)
    resolution = plain(cfg.resolution)
    budget = budget_for(resolution, ds_name)

    enc_cfg = plain(cfg.encoder)
    name = enc_cfg.pop("name")
    encoder_cls = ENCODERS.get(name)
    kwargs, plan, applied = encoder_kwargs_2d(encoder_cls, enc_cfg, budget, dataset_settings,
                                              _explicit_encoder_keys())
    kwargs["device"] = str(device)
    if plan == "oracle":
        kwargs["class_names"] = ["ignore", *dataset.class_names]
    encoder = build_encoder(name, **kwargs)
    log.info("eval2d: %s on %s (%d images), resolution %s = %s, windows %s%s", name, ds_name, len(dataset),
             resolution["name"], budget.label(), plan, f", applied {applied}" if applied else "")

    out_dir = _job_out_dir(cfg)
    extra = {"resolution": resolution["name"], "class_names_source": ds_cfg.get("class_names", "reference"),
             "applied_2d_settings": applied, "device": str(device)}
    cm, files = evaluate_2d(dataset, encoder, plan, budget, out_dir, progress=bool(cfg.progress),
                            num_qualitative=int(cfg.num_qualitative), extra=extra)
    print(f"{name} on {ds_name} at {resolution['name']} ({budget.label()}, windows {plan}): "
          f"mIoU {100 * cm.miou():.2f}  acc {100 * cm.accuracy():.2f}  ({len(dataset)} images)")
    for key in ("metrics", "csv", "results", "plot"):
        print(f"wrote {files[key]}")
    qual = [p for k, p in files.items() if k.startswith("qualitative_")]
    if qual:
        print(f"wrote {len(qual)} qualitative PNG(s) to {qual[0].parent}")
