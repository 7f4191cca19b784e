"""The ensemble switch (train.ensemble): members' scores averaged by one module, saved in and
loaded from one checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from torch import nn

from pipeline.checkpoints import load_model, save_model
from pipeline.inference import to_scores
from pipeline.manifest import TaskInfo
from pipeline.models import Ensemble, build_model
from pipeline.params import TrainParams, load_section


def linear(seed: int, scale: float = 1.0) -> nn.Module:
    """A member: a seeded linear classifier of 5 features into 3 outputs."""
    torch.manual_seed(seed)
    layer = nn.Linear(5, 3)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("scale", [1.0, 500.0])  # 500: logits in the hundreds, saturated scores
def test_scores_of_an_ensemble_are_the_mean_of_its_members_scores(task: str, scale: float) -> None:
    members = [linear(seed, scale) for seed in (1, 2, 3)]
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = Ensemble(members, task)(x)
        expected = np.mean([to_scores(member(x), task) for member in members], axis=0)
    assert torch.isfinite(logits).all()
    np.testing.assert_allclose(to_scores(logits, task), expected, rtol=1e-5, atol=1e-6)


def test_one_checkpoint_holds_every_member_and_loads_as_their_ensemble(tmp_path: Path) -> None:
    info = TaskInfo("multiclass", ("good", "scratch", "dent"), "good")
    params = load_section(REPO / "params.yaml", "train", TrainParams).model_copy(
        update={"model": "resnet18", "image_size": 32, "ensemble": 2}
    )
    members = []
    for seed in (4, 5):
        torch.manual_seed(seed)
        members.append(build_model("resnet18", 3, pretrained=False, dropout=0.0).eval())
    save_model(tmp_path / "model.pt", [m.state_dict() for m in members], params, info)
    model, size, loaded_info = load_model(tmp_path / "model.pt", info)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert (size, loaded_info) == (32, info)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = np.mean([to_scores(m(x), "multiclass") for m in members], axis=0)
        np.testing.assert_allclose(to_scores(model(x), "multiclass"), expected, atol=1e-6)
    # one member: the plain model, not an ensemble of one
    save_model(tmp_path / "one.pt", [members[0].state_dict()], params, info)
    assert not isinstance(load_model(tmp_path / "one.pt")[0], Ensemble)
