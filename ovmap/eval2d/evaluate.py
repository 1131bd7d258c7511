"""Run one encoder over one 2D benchmark at one resolution budget and write the result files.

Library entry points (``ovmap eval2d`` is a thin wrapper around them, tests call them directly):

- :func:`encoder_kwargs_2d`: the encoder's constructor arguments for a budget (window arguments, the dataset's
  reference settings for encoders that take them, the user's explicit settings last).
- :func:`evaluate_2d`: the per-image loop (progress bar with images/s), the confusion matrix, the outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ovmap.eval2d.datasets import SegDataset2D
from ovmap.eval2d.metrics import ConfusionMatrix
from ovmap.eval2d.protocol import (Budget, constructor_parameters, effective_stride, predict_image, window_kwargs,
                                   window_plan)
from ovmap.eval2d.report import (plot_per_class_iou, save_qualitative, write_metrics_json, write_per_class_csv,
                                 write_results_md)

log = logging.getLogger("ovmap")


def encoder_kwargs_2d(encoder_cls: type, kwargs: Mapping[str, Any], budget: Budget,
                      dataset_settings: Mapping[str, Any] | None = None,
                      explicit: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Constructor arguments of ``encoder_cls`` for a 2D run.

    Args:
        encoder_cls: the registered encoder class.
        kwargs: the encoder config (its yaml merged with the ``encoder2d`` preset and the command line).
        budget: the resolution budget; its crop/stride replace the encoder's window arguments.
        dataset_settings: the dataset's reference settings (e.g. Trident's/RADSeg+'s ``coarse_thresh``); applied
            only to encoders whose constructor takes that argument.
        explicit: argument names the user set on the command line; neither the budget nor the dataset settings
            override them.

    Returns:
        (kwargs, window plan, the settings that were applied on top of ``kwargs``).
    """
    plan = window_plan(encoder_cls)
    params = constructor_parameters(encoder_cls)
    out = dict(kwargs)
    applied: dict[str, Any] = {}
    for key, value in {**(dataset_settings or {}), **window_kwargs(plan, budget)}.items():
        if key in params and key not in explicit:
            out[key] = value
            applied[key] = value
    clash = sorted(k for k in window_kwargs(plan, budget) if k in explicit)
    if clash:
        log.warning("eval2d: %s set on the command line replace the '%s' budget's crop/stride", clash, budget.label())
    return out, plan, applied


def _prompts(dataset: SegDataset2D, plan: str) -> tuple[list[str], torch.Tensor]:
    """The Q texts to encode and the class index of each (Q,). The oracle is prompted with the official names."""
    if plan == "oracle":
        return list(dataset.class_names), torch.arange(len(dataset.class_names))
    texts, owner = [], []
    for k, names in enumerate(dataset.prompts):
        texts += names
        owner += [k] * len(names)
    return texts, torch.tensor(owner, dtype=torch.int64)


def evaluate_2d(dataset: SegDataset2D, encoder: Any, plan: str, budget: Budget, out_dir: str | Path,
                progress: bool = True, num_qualitative: int = 3, extra: Mapping[str, Any] | None = None
                ) -> tuple[ConfusionMatrix, dict[str, Path]]:
    """Evaluate ``encoder`` on every image of ``dataset`` and write the result files to ``out_dir``.

    Returns the confusion matrix and the written files (``metrics``, ``csv``, ``results``, ``plot``,
    ``qualitative_<id>``).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, prompt_class = _prompts(dataset, plan)
    k = len(dataset.class_names)
    t0 = time.perf_counter()
    with torch.no_grad():
        text = encoder.encode_text(texts)
    seconds_text = time.perf_counter() - t0
    cm = ConfusionMatrix(k)
    files: dict[str, Path] = {}
    seconds_images = 0.0
    bar = tqdm(range(len(dataset)), desc=f"eval2d {dataset.name} {budget.label()}", unit="img", disable=not progress)
    for i in bar:
        sample = dataset[i]
        t1 = time.perf_counter()
        pred = predict_image(encoder, sample, text, prompt_class, k, plan, budget)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds_images += time.perf_counter() - t1
        cm.update(pred, sample["labels"])
        bar.set_postfix(mIoU=f"{100 * cm.miou():.1f}", refresh=False)
        if i < num_qualitative:
            rgb = (sample["rgb"].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            files[f"qualitative_{sample['id']}"] = save_qualitative(
                out_dir / "qualitative" / f"{sample['id']}.png", rgb, pred.numpy(), sample["labels"].numpy(), k)
    bar.close()
    n = len(dataset)
    method = str(getattr(encoder, "name", type(encoder).__name__))
    settings = {"dataset": dataset.name, "resolution_budget": budget.label(), "window_plan": plan,
                "stride_used": effective_stride(plan, budget), "images": n}
    doc = {
        "dataset": dataset.name,
        "method": method,
        "encoder": _encoder_config(encoder),
        "budget": budget.as_dict(),
        "window_plan": plan,
        "stride_used": effective_stride(plan, budget),
        "num_images": n,
        "num_classes": k,
        "prompts_per_class": [len(p) for p in dataset.prompts] if plan != "oracle" else [1] * k,
        "images_per_second": n / seconds_images if seconds_images > 0 else None,
        "seconds_text": seconds_text,
        "miou_note": "fractions in [0, 1]; IoU accumulated over the split, classes with TP+FP+FN = 0 left out",
        **(extra or {}),
    }
    files["metrics"] = write_metrics_json(out_dir / "metrics.json", cm, dataset.class_names, doc)
    files["csv"] = write_per_class_csv(out_dir / "per_class_iou.csv", cm, dataset.class_names)
    title = f"{method} on {dataset.name} ({budget.label()})"
    files["results"] = write_results_md(out_dir / "results.md", cm, dataset.class_names, title, settings)
    files["plot"] = plot_per_class_iou(out_dir / "per_class_iou.png", cm, dataset.class_names, title)
    return cm, files


def _encoder_config(encoder: Any) -> dict[str, Any]:
    import json

    try:
        config = json.loads(encoder.config_json())
    except (AttributeError, TypeError, ValueError):
        return {"name": str(getattr(encoder, "name", type(encoder).__name__))}
    config.pop("class_names", None)  # the oracle's class table: already in per_class_iou
    return config
