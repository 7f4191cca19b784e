"""Train and evaluate stages on tiny generated data, for both tasks, through their real CLIs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import read_curves

from pipeline.datasets import output_names
from pipeline.manifest import read_manifest
from pipeline.models import WeightsMissingError, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"


def test_checkpoint_loads_safely_and_carries_its_params(outputs: Path) -> None:
    checkpoint = torch.load(outputs / "models/model.pt", weights_only=True)
    _rows, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    assert checkpoint["classes"] == list(info.classes)
    assert checkpoint["task"] == info.task
    assert checkpoint["params"]["epochs"] == 1
    model = build_model(checkpoint["model"], len(output_names(info)), pretrained=False, dropout=0.0)
    model.load_state_dict(checkpoint["state_dict"])
    assert len(read_curves(outputs / "reports/train")["val/macro_f1"]) == 1  # one epoch logged


def test_evaluate_metrics_agree_with_the_predictions_file(outputs: Path) -> None:
    rows, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    predictions = list(csv.DictReader((outputs / "reports/test_predictions.csv").open()))
    assert [p["path"] for p in predictions] == [r["path"] for r in rows if r["split"] == "test"]
    test = json.loads((outputs / "reports/evaluate.json").read_text())["test"]
    good = info.good_class
    defective = [p for p in predictions if p["actual"] != good]
    missed = sum(p["predicted"] == good for p in defective)
    assert test["miss_rate"] == (round(missed / len(defective), 4) if defective else None)
    goods = [p for p in predictions if p["actual"] == good]
    overkill = sum(p["predicted"] != good for p in goods)
    assert test["overkill_rate"] == (round(overkill / len(goods), 4) if goods else None)
    assert set(test["per_class"]) == set(output_names(info))
    assert (outputs / "reports/confusion.png").read_bytes()[:4] == b"\x89PNG"


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
