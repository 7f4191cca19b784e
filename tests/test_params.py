"""params.yaml validation: typos, wrong types and out-of-range values name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError

from pipeline.params import (
    IngestParams,
    Params,
    ParamsError,
    TrainParams,
    load_params,
    load_section,
)


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_repo_params_validate_and_cover_every_field() -> None:
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.epochs >= 1


def test_typo_names_the_key_and_the_valid_keys(tmp_path: Path) -> None:
    data = repo_params()
    data["train"]["lrr"] = 0.1
    with pytest.raises(ParamsError) as err:
        load_section(write(tmp_path, data), "train", TrainParams)
    message = str(err.value)
    assert "unknown key 'train.lrr'" in message
    for key in ("lr", "epochs", "batch_size", "model"):
        assert key in message.split("Valid keys here:")[1]


def test_out_of_range_names_the_key_and_the_range(tmp_path: Path) -> None:
    data = repo_params()
    data["train"]["lr"] = -1
    with pytest.raises(ParamsError) as err:
        load_section(write(tmp_path, data), "train", TrainParams)
    assert "'train.lr'" in str(err.value)
    assert "0 < value <= 10" in str(err.value)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    data = repo_params()
    data["train"]["epochs"] = "many"
    with pytest.raises(ParamsError) as err:
        load_section(write(tmp_path, data), "train", TrainParams)
    assert "'train.epochs'" in str(err.value)
    assert "'many'" in str(err.value)
    assert "1 <= value <= 1000" in str(err.value)


def test_bad_literal_lists_allowed_values(tmp_path: Path) -> None:
    data = repo_params()
    data["train"]["model"] = "vgg99"
    with pytest.raises(ParamsError) as err:
        load_section(write(tmp_path, data), "train", TrainParams)
    assert "'train.model'" in str(err.value)
    assert "resnet18" in str(err.value)


def test_missing_key_and_unknown_section(tmp_path: Path) -> None:
    data = repo_params()
    del data["split"]["seed"]
    with pytest.raises(ParamsError, match=r"missing key 'split.seed'"):
        load_params(write(tmp_path, data))
    data = repo_params()
    data["trian"] = {"lr": 1}
    with pytest.raises(ParamsError, match=r"unknown section\(s\) \['trian'\]"):
        load_params(write(tmp_path, data))


def test_split_fractions_must_sum_to_one(tmp_path: Path) -> None:
    data = repo_params()
    data["split"]["train"] = 0.8
    with pytest.raises(ParamsError, match="must be 1"):
        load_params(write(tmp_path, data))


def test_good_class_must_be_a_class(tmp_path: Path) -> None:
    data = repo_params()
    data["ingest"]["good_class"] = "ok"
    with pytest.raises(ParamsError, match=r"good_class 'ok' is not in ingest\.classes"):
        load_section(write(tmp_path, data), "ingest", IngestParams)


def test_table_source_needs_a_table(tmp_path: Path) -> None:
    data = repo_params()
    data["ingest"]["table"] = None
    with pytest.raises(ParamsError, match=r"needs ingest\.table"):
        load_section(write(tmp_path, data), "ingest", IngestParams)


def test_models_are_frozen() -> None:
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValidationError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_malformed_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def with_members(tmp_path: Path, overrides: list[dict[str, Any]], ensemble: int = 2) -> Path:
    data = repo_params()
    data["train"].update(ensemble=ensemble, member_overrides=overrides)
    return write(tmp_path, data)


def test_each_member_trains_with_its_seed_and_its_overrides(tmp_path: Path) -> None:
    path = with_members(tmp_path, [{}, {"defect_paste": 0.3, "lr": "2e-3"}, {"seed": 40}], 3)
    params = load_section(path, "train", TrainParams)
    first, second, third = (params.member(k) for k in range(3))
    assert (first.seed, second.seed, third.seed) == (params.seed, params.seed + 1, 40)
    assert (first.defect_paste, second.defect_paste, third.defect_paste) == (0.0, 0.3, 0.0)
    assert second.lr == 0.002 and first.lr == third.lr == params.lr  # validated, coerced
    # a member is a plain model's settings: the one with no override is the single model's
    assert first == params.model_copy(update={"ensemble": 3, "member_overrides": []})
    alike = load_section(with_members(tmp_path, []), "train", TrainParams)
    assert [alike.member(k).seed for k in range(2)] == [alike.seed, alike.seed + 1]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([{}], r"has 1 entries for train\.ensemble 2 members"),
        (
            [{}, {"defect_past": 0.3}],
            r"unknown key 'train\.member_overrides\[1\]\.defect_past' "
            r"\(did you mean 'train\.member_overrides\[1\]\.defect_paste'\?\)",
        ),
        (
            [{}, {"defect_paste": 3}],
            r"'train\.member_overrides\[1\]\.defect_paste' \(got 3\).*"
            r"0 <= value <= 1",
        ),
        ([{"image_size": 96}, {}], r"train\.member_overrides\[0\] sets \['image_size'\]"),
        ([{}, {"cutmix_min_ratio": 0.9}], r"train\.member_overrides\[1\]: train\.cutmix_min_ratio"),
    ],
)
def test_bad_member_overrides_name_the_member_and_key(
    tmp_path: Path, overrides: list[dict[str, Any]], expected: str
) -> None:
    with pytest.raises(ParamsError, match=expected):
        load_section(with_members(tmp_path, overrides), "train", TrainParams)
