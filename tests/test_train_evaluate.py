"""Train and evaluate stages on tiny generated data, for both tasks, through their real CLIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED_WEIGHTS, read_curves

from pipeline.checkpoints import save_state
from pipeline.datasets import output_names
from pipeline.manifest import read_manifest
from pipeline.models import WeightsMissingError, build_model
from pipeline.operating import Thresholds


def test_checkpoint_loads_safely_and_carries_its_params(outputs: Path) -> None:
    checkpoint = torch.load(outputs / "models/model.pt", weights_only=True)
    _rows, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    assert checkpoint["classes"] == list(info.classes)
    assert checkpoint["task"] == info.task
    assert checkpoint["params"]["epochs"] == 1
    model = build_model(checkpoint["model"], len(output_names(info)), pretrained=False, dropout=0.0)
    model.load_state_dict(checkpoint["state_dict"])
    assert len(read_curves(outputs / "reports/train")["val/macro_f1"]) == 1  # one epoch logged


def _rates(rows: list[dict[str, Any]], column: str, good: str) -> tuple[float | None, ...]:
    """(miss, overkill) of the predictions manifest's `column` decisions, by hand."""
    defective = [r for r in rows if (r["label"] or "+".join(r["labels"]) or good) != good]
    goods = [r for r in rows if r not in defective]
    missed = sum(r[column] == good for r in defective)
    killed = sum(r[column] != good for r in goods)
    return (
        round(missed / len(defective), 4) if defective else None,
        round(killed / len(goods), 4) if goods else None,
    )


def test_evaluate_metrics_agree_with_the_predictions_manifest(outputs: Path) -> None:
    rows, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    predictions, meta = read_manifest(outputs / "data/processed/predictions.parquet", "predictions")
    assert meta == info
    assert [p["path"] for p in predictions] == [
        r["path"] for side in ("val", "test") for r in rows if r["split"] == side
    ]
    assert all(len(p["scores"]) == len(output_names(info)) for p in predictions)
    metrics = json.loads((outputs / "reports/evaluate/metrics.json").read_text())
    test_rows = [p for p in predictions if p["split"] == "test"]
    as_trained, operating = metrics["test"], metrics["operating"]["test"]
    assert (as_trained["miss_rate"], as_trained["overkill_rate"]) == _rates(
        test_rows, "predicted", info.good_class
    )
    assert (operating["miss_rate"], operating["overkill_rate"]) == _rates(
        test_rows, "decision", info.good_class
    )
    for rate in ("miss_rate", "overkill_rate"):
        if operating[rate] is not None:
            assert operating[f"{rate}_low"] <= operating[rate] <= operating[f"{rate}_high"]
    assert set(as_trained["per_class"]) == set(output_names(info))
    gap = metrics["train_val_gap"]["accuracy"]
    assert gap == round(metrics["train"]["accuracy"] - metrics["val"]["accuracy"], 4)


def test_predict_thresholds_reproduce_the_manifest_decisions(outputs: Path) -> None:
    predictions, info = read_manifest(outputs / "data/processed/predictions.parquet", "predictions")
    thresholds = Thresholds.load(outputs / "models/thresholds.json")
    scores = np.array([p["scores"] for p in predictions])
    assert thresholds.decide(scores) == [p["decision"] for p in predictions]
    val = [p for p in predictions if p["split"] == "val"]
    if thresholds.rule == "max_miss_rate":  # the val miss rate respects the limit
        params = yaml.safe_load((outputs / "params.yaml").read_text())["evaluate"]
        miss, _ = _rates(val, "decision", info.good_class)
        assert miss is not None and miss <= params["max_miss_rate"]
    if info.task == "multilabel":
        assert set(thresholds.per_class) == set(info.defect_classes)


def test_evaluate_writes_plot_data_and_figures(outputs: Path) -> None:
    _rows, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    metrics = json.loads((outputs / "reports/evaluate/metrics.json").read_text())
    confusion = json.loads((outputs / "reports/evaluate/plots/confusion.json").read_text())
    names = info.classes if info.task == "multiclass" else (info.good_class, "defective")
    assert len(confusion) == len(names) ** 2  # aggregated: one row per pair, not per image
    assert sum(int(row["count"]) for row in confusion) == metrics["test"]["images"]
    for name in ("confusion", "pr", "roc", "tradeoff"):
        png = outputs / f"reports/evaluate/figures/{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name
    assert (outputs / "reports/train/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_pretrained_weights_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsMissingError) as err:
        build_model("mobilenet_v2", 3, pretrained=True, dropout=0.2)
    assert "mobilenet_v2-7ebf99e0.pth" in str(err.value)  # the default (V2) weights
    assert "mobilenet_v2-b0353104.pth" in str(err.value)  # the alternative (V1)
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights not present")
def test_pretrained_weights_load_offline_from_torch_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(SHARED_WEIGHTS))
    model = build_model("mobilenet_v2", 4, pretrained=True, dropout=0.2)
    assert model.classifier[-1].out_features == 4  # type: ignore[index]
    # the backbone carries ImageNet weights, not a fresh initialisation
    reference = torch.load(
        SHARED_WEIGHTS / "hub/checkpoints/mobilenet_v2-b0353104.pth", weights_only=True
    )
    assert torch.equal(model.state_dict()["features.0.0.weight"], reference["features.0.0.weight"])


def test_checkpoint_bytes_do_not_depend_on_the_file_name(tmp_path: Path) -> None:
    # torch.save names the archive after its target file; the temp file of an atomic write
    # must not leak into the bytes, or identical runs give different DVC hashes.
    state = {"state_dict": build_model("resnet18", 3, pretrained=False, dropout=0.0).state_dict()}
    save_state(tmp_path / "a/last.pt", state)
    save_state(tmp_path / "b/other_name.pt", state)
    assert (tmp_path / "a/last.pt").read_bytes() == (tmp_path / "b/other_name.pt").read_bytes()
