"""Every registered encoder runs `eval2d` end to end on the miniature benchmarks with tiny weights.

Default run: each encoder on one benchmark (cycled so that all five are covered) at the low budget. The full
benchmarks x budgets matrix is the slow test. Encoders without a row in ``_helpers_encoders.TINY_ENCODERS`` are
skipped with a reason that says so.
"""

from __future__ import annotations

import os

import csv
import json
import warnings
from pathlib import Path

import pytest

from eval2d._helpers_data import NUM_CLASSES, write_mini
from eval2d._helpers_encoders import TINY_ENCODERS
from ovmap.commands.eval2d import budget_for
from ovmap.encoders.base import ENCODERS, available_encoders, build_encoder
from ovmap.eval2d.datasets import SegDataset2D
from ovmap.eval2d.evaluate import encoder_kwargs_2d, evaluate_2d

CONFIGS = Path(__file__).resolve().parents[2] / "ovmap" / "configs"
DATASETS = list(NUM_CLASSES)
ENCODER_NAMES = available_encoders()


def _resolution(name: str) -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / "resolution" / f"{name}.yaml").read_text())


def _preset(encoder: str) -> dict:
    """The encoder's yaml merged with its encoder2d preset (what `ovmap eval2d encoder=<name>` composes)."""
    import yaml

    cfg = yaml.safe_load((CONFIGS / "encoder" / f"{encoder}.yaml").read_text())
    preset = CONFIGS / "encoder2d" / f"{encoder}.yaml"
    if preset.is_file():
        cfg.update(yaml.safe_load(preset.read_text()) or {})
    cfg.pop("name")
    return cfg


def _run(encoder: str, dataset: str, resolution: str, tmp: Path) -> tuple[float, Path]:
    if encoder not in TINY_ENCODERS:
        msg = (f"encoder '{encoder}' is registered but has no tiny build in tests/eval2d/_helpers_encoders.py "
               "TINY_ENCODERS: add a row (name -> tiny constructor kwargs) to run it through eval2d")
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    import yaml

    if not (tmp / dataset).is_dir():
        write_mini(dataset, tmp / dataset)
    ds_cfg = yaml.safe_load((CONFIGS / "dataset2d" / f"{dataset}.yaml").read_text())
    ds = SegDataset2D(dataset, str(tmp / dataset), class_names=ds_cfg["class_names"])
    budget = budget_for(_resolution(resolution), dataset)
    base = {k: v for k, v in _preset(encoder).items() if k != "device"}
    kwargs, plan, applied = encoder_kwargs_2d(ENCODERS.get(encoder), {**base, **TINY_ENCODERS[encoder](tmp)},
                                              budget, ds_cfg["encoder_settings"])
    if plan == "oracle":
        kwargs["class_names"] = ["ignore", *ds.class_names]
    enc = build_encoder(encoder, **kwargs, device="cpu")
    out = tmp / f"out_{encoder}_{dataset}_{resolution}"
    cm, files = evaluate_2d(ds, enc, plan, budget, out, progress=False, num_qualitative=1)
    doc = json.loads(files["metrics"].read_text())
    assert list(doc["per_class_iou"]) == ds.class_names and doc["num_images"] == len(ds) == 2
    assert doc["budget"]["crop"] == budget.crop and doc["window_plan"] == plan
    assert doc["stride_used"] == (budget.crop if plan == "internal_crop" else budget.stride)
    for key, value in applied.items():  # the budget's windows and the dataset settings reached the encoder
        assert enc.build_config[key] == value
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["name"] for r in rows] == ds.class_names
    gt_pixels = sum(int((ds[i]["labels"] != 255).sum()) for i in range(len(ds)))
    assert int(cm.counts.sum()) == gt_pixels  # every non-ignored pixel got exactly one prediction
    assert 0.0 <= cm.miou() <= 1.0
    return cm.miou(), out


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_encoder_runs_eval2d(encoder: str, tmp_path: Path) -> None:
    dataset = DATASETS[ENCODER_NAMES.index(encoder) % len(DATASETS)]
    miou, out = _run(encoder, dataset, "low", tmp_path)
    if encoder == "oracle":
        assert miou == 1.0
    assert (out / "qualitative").is_dir() and (out / "per_class_iou.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_encoder_full_matrix(encoder: str, tmp_path: Path) -> None:
    """Every benchmark at every budget. The oracle always runs (it must score exactly 1 everywhere); the other
    encoders take ~30 min together on 2 CPU cores, so they run with OVMAP_EVAL2D_MATRIX=1."""
    if encoder != "oracle" and os.environ.get("OVMAP_EVAL2D_MATRIX") != "1":
        pytest.skip(f"{encoder}: the full 2D matrix of the tiny encoders runs with OVMAP_EVAL2D_MATRIX=1 (~30 min)")
    for dataset in DATASETS:
        for resolution in ("low", "mid", "high"):
            miou, _ = _run(encoder, dataset, resolution, tmp_path)
            if encoder == "oracle":
                assert miou == 1.0


def test_encoder_without_a_tiny_row_is_skipped_loudly(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no tiny build"), pytest.raises(pytest.skip.Exception, match="add a row"):
        _run("encoder_added_after_merge", "voc20", "low", tmp_path)
