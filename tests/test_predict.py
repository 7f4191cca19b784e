"""`apexloop predict` on the images the pipeline fixture evaluated, through the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.manifest import read_manifest
from pipeline.operating import Thresholds


def test_predict_reproduces_evaluate_on_the_test_images(outputs: Path, tmp_path: Path) -> None:
    predictions, _info = read_manifest(
        outputs / "data/processed/predictions.parquet", "predictions"
    )
    test = [p for p in predictions if p["split"] == "test"]
    images = tmp_path / "line"
    for index, row in enumerate(test):  # a folder of new images, nested, as a camera drops them
        target = images / f"cam{index % 2}" / f"{index:03d}{Path(row['path']).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(outputs / "raw" / row["path"], target)
    out = tmp_path / "scores.csv"
    assert (
        main(
            ["predict", "--model", str(outputs / "models/model.pt"), "--out", str(out), str(images)]
        )
        == 0
    )

    table = pd.read_csv(out, keep_default_na=False)
    order = sorted(range(len(test)), key=lambda i: f"cam{i % 2}/{i:03d}")
    assert [Path(p).name for p in table["path"]] == [
        f"{i:03d}{Path(test[i]['path']).suffix}" for i in order
    ]
    thresholds = Thresholds.load(outputs / "models/thresholds.json")
    assert thresholds.tta == "flips"  # the fixture's evaluate setting, recorded for predict
    names = thresholds.outputs
    scores = table[[f"score_{name}" for name in names]].to_numpy(dtype=float)
    expected = np.array([test[i]["scores"] for i in order])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # the operating point evaluate chose and wrote, applied to the same scores
    assert list(table["decision"]) == [test[i]["decision"] for i in order]
    assert set(table["error"]) == {""}


def test_an_unreadable_file_keeps_its_row_with_the_reason(outputs: Path, tmp_path: Path) -> None:
    good = next((outputs / "raw").rglob("*.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "scores.parquet"
    model = str(outputs / "models/model.pt")
    assert main(["predict", "--model", model, "--out", str(out), str(good), str(broken)]) == 0
    table = pd.read_parquet(out)
    assert list(table["path"]) == [str(good), str(broken)]
    assert table["error"][0] == "" and table["decision"][0]
    assert "not a recognised image format" in table["error"][1]
    assert pd.isna(table["decision"][1])
    assert table.filter(like="score_").iloc[1].isna().all()


def test_missing_inputs_and_thresholds_are_clear_errors(
    outputs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "models/model.pt"
    model.parent.mkdir()
    shutil.copy(outputs / "models/model.pt", model)  # no thresholds.json beside it
    image = next((outputs / "raw").rglob("*.png"))
    out = str(tmp_path / "s.csv")
    assert main(["predict", "--model", str(model), "--out", out, str(image)]) == 2
    assert "thresholds.json: no thresholds file; run the evaluate stage" in caplog.text
    thresholds = str(outputs / "models/thresholds.json")
    args = ["predict", "--model", str(model), "--thresholds", thresholds, "--out", out]
    assert main([*args, str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder to predict on" in caplog.text
    assert not (tmp_path / "s.csv").exists()
